"""The `qtools` command starts fast: registering every subcommand imports neither torch nor transformers (each
command imports what it needs when it runs). Conversion workers and benchmarks pay any extra import per run."""

from __future__ import annotations

import subprocess
import sys


def test_cli_import_pulls_in_no_heavy_library() -> None:
    probe = "import sys, qtools.cli; print(sorted({'torch', 'transformers', 'tokenizers'} & set(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "[]"
