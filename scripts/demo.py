"""The README's demo on the toy Qwen3-Coder model: convert it to FP8, verify and inspect the result, then check
the FP8 model against the BF16 one and write the report.

The toy model is the build committed in `models/toy-qwen3-coder` when it is current for this code and software
stack, else it is built first (about 8 minutes on 2 cores) into the cache (`$QTOOLS_CACHE`, `~/.cache/qtools`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from qtools.testing.files import TOY_MODEL_DIR
from qtools.toy.cache import cached_toy_model


def qtools(*args: str, check: bool = True) -> int:
    print(f"$ qtools {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "qtools.cli", *args], check=check).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    source = cached_toy_model(prebuilt=TOY_MODEL_DIR)
    print(f"toy BF16 model: {source}", flush=True)
    fp8 = args.out / "fp8"
    qtools("convert", str(source), str(fp8))
    qtools("verify", str(fp8))
    qtools("inspect", str(fp8))
    code = qtools("check", str(source), str(fp8), "--report", str(args.out / "check"), check=False)
    print(f"open {args.out / 'check' / 'report.html'} to read the check report")
    sys.exit(code)


if __name__ == "__main__":
    main()
