"""The code half of the built-in calibration data: the training side of the standard-library split.

`qtools check` scores perplexity on the top-level standard-library modules whose SHA-256 of the file name falls
in bucket 0 of 10 (the split `qtools.toy` holds out of training). Calibrating on those files would let the
quantisation fit what the check then measures, so only the other nine buckets are used here. The rule is
restated rather than imported because calibration sits below the pipelines (`qtools.toy`, `qtools.check`);
tests/test_calibration.py checks that it agrees with theirs and that no held-out file is used.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

from qtools.errors import QtoolsError

HELDOUT_BUCKETS = 10  # the check's split: a file is held out when sha256(name)[0] % 10 == 0
MAX_FILE_CHARS = 24_000  # about 3 rows of 2048 tokens: no single module fills a large share of the rows


def stdlib_dir() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_check_heldout(name: str) -> bool:
    """Whether the top-level module file `name` is one `qtools check` evaluates on (never calibrated on)."""
    return hashlib.sha256(name.encode()).digest()[0] % HELDOUT_BUCKETS == 0


def calibration_code() -> list[tuple[str, str]]:
    """(file name, text) of every top-level standard-library module outside the check's held-out split, in name
    order, each cut at a line end near MAX_FILE_CHARS. QtoolsError when the sources are missing."""
    root = stdlib_dir()
    paths = [path for path in sorted(root.glob("*.py")) if not is_check_heldout(path.name)]
    files = []
    for path in paths:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > MAX_FILE_CHARS:
            text = text[: text.rfind("\n", 0, MAX_FILE_CHARS) + 1]
        files.append((path.name, text))
    if len(files) < 50:
        raise QtoolsError(
            f"found only {len(files)} usable Python files in {root}: the built-in calibration data uses the standard "
            "library sources; install the full Python distribution or pass --calibration DATA"
        )
    return files
