"""What the vLLM interop tests share: which kind of CPU this is, whether vLLM's processes get the AMX
capability shim (`amx_shim/sitecustomize.py`, see its docstring for why), and how to start the vLLM interpreter.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def vllm_servers(models: list[Path], tokenizer: Path, logs: Path, startup_s: float = 900) -> Iterator[list[str]]:
    """vLLM's OpenAI API server for each of `models` on 127.0.0.1 (free ports), with the qwen3_coder tool parser,
    all started at once; yields their base URLs once each /v1/models answers, and stops every server (SIGTERM,
    then SIGKILL) when the block ends. Fails the test with a server log's tail when one exits or does not
    answer within `startup_s`."""
    servers: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for index, model in enumerate(models):
            port, log = free_port(), logs / f"server-{index}.log"
            args = ["-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--tokenizer", str(tokenizer)]
            args += ["--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16", "--seed", "0"]
            args += ["--enforce-eager", "--max-model-len", "4096", "--max-logprobs", "20"]
            args += ["--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
            with log.open("w") as out:
                # the API server runs its engine core in a process of its own (in-process, it does not start)
                env = {**vllm_env(), "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
                process = subprocess.Popen([str(vllm_python()), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
            servers.append((process, f"http://127.0.0.1:{port}", log))
        deadline = time.monotonic() + startup_s
        for process, url, log in servers:
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                        break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        tail = "\n".join(log.read_text().splitlines()[-40:])
                        pytest.fail(f"vLLM server {url} did not come up (exit {process.poll()}):\n{tail}")
                    time.sleep(1)  # polling for readiness, not timing a result
        yield [url for _, url, _ in servers]
    finally:
        for process, _, _ in servers:
            process.terminate()
        for process, _, _ in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
