"""The README's demo: build a small Qwen3-MoE checkpoint, convert it to FP8, verify and inspect the result."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from qtools.testing.synth import SynthSpec, make_checkpoint


def qtools(*args: str) -> None:
    print(f"$ qtools {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "qtools.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    source = make_checkpoint(
        args.out / "bf16",
        SynthSpec(num_layers=4, hidden_size=384, moe_intermediate_size=320, num_experts=8, shard_bytes=8_000_000),
    )
    print(f"built a synthetic BF16 Qwen3-MoE checkpoint in {source}")
    qtools("convert", str(source), str(args.out / "fp8"))
    qtools("verify", str(args.out / "fp8"))
    qtools("inspect", str(args.out / "fp8"))


if __name__ == "__main__":
    main()
