"""What the vLLM interop tests share: which kind of CPU this is, whether vLLM's processes get the AMX
capability shim (`amx_shim/sitecustomize.py`, see its docstring for why), and how to start the vLLM interpreter.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from qtools.testing.vllm_env import built_vllm_python, vllm_subprocess_env

HERE = Path(__file__).resolve().parent
SHIM_DIR = HERE / "amx_shim"


def cpu_kind() -> str:
    """ "amx" (vLLM's CPU kernels run natively), "avx512" (its AVX-512 kernels are built but gated on AMX: the
    shim applies), or "avx2" (vLLM 0.32's AVX2 build has no FP8 linear and no INT4 MoE kernel at all)."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    return "avx512" if torch.cpu._is_avx512_supported() else "avx2"


def needs_shim() -> bool:
    """The shim is for CPUs without AMX only (the issue's rule); on AMX CPUs and GPUs vLLM runs unaided."""
    return not torch.cuda.is_available() and cpu_kind() != "amx"


def vllm_python() -> Path:
    """The built vLLM interpreter; fails the test (never skips) when `make vllm-env` has not built it."""
    try:
        return built_vllm_python()
    except RuntimeError as error:
        pytest.fail(str(error))


def vllm_env() -> dict[str, str]:
    """Environment of a vLLM process: this checkout's qtools, the shim where `needs_shim()`, and the engine core
    in-process (one process instead of three: each saves a ~15 s import of vLLM on a 2-core machine)."""
    env = vllm_subprocess_env([SHIM_DIR] if needs_shim() else [])
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return env


def run_vllm_python(args: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the vLLM interpreter on `args`; fails the test with the output's tail when it exits non-zero."""
    result = subprocess.run(
        [str(vllm_python()), *args], env=vllm_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        pytest.fail(f"vLLM process {args[0]} exited {result.returncode}:\n{tail}")
    return result
