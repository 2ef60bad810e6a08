"""Bad input gives a clear error naming the file or tensor, a non-zero exit, an untouched source and no output
that could pass `qtools verify`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.testing.files import edit_shard, poison_nan, tree_digest
from qtools.verify import verify_checkpoint

SHARD1 = "model-00001-of-00003.safetensors"
SHARD2 = "model-00002-of-00003.safetensors"


def _truncate(root: Path) -> str:
    path = root / SHARD2
    path.write_bytes(path.read_bytes()[:-1000])
    return SHARD2


def _corrupt_header(root: Path) -> str:
    path = root / SHARD1
    data = bytearray(path.read_bytes())
    data[8:40] = b"\x00" * 32
    path.write_bytes(bytes(data))
    return SHARD1


def _index_names_missing_file(root: Path) -> str:
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00009-of-00009.safetensors"
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return "model-00009-of-00009.safetensors"


def _index_escapes_directory(root: Path) -> str:
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../outside.safetensors"
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    save_file({"lm_head.weight": torch.zeros(1)}, root.parent / "outside.safetensors")
    return "outside the checkpoint"


def _config_disagrees(root: Path) -> str:
    config = json.loads((root / "config.json").read_text())
    config["moe_intermediate_size"] = 256
    (root / "config.json").write_text(json.dumps(config))
    return "config.json implies"


def _integer_weights(root: Path) -> str:
    tensors = load_file(root / SHARD1)
    name = next(n for n in sorted(tensors) if n.endswith("q_proj.weight"))
    tensors[name] = tensors[name].to(torch.int32)
    save_file(tensors, root / SHARD1, metadata={"format": "pt"})
    return name


def _nan_weight(root: Path) -> str:
    return edit_shard(root / SHARD2, lambda n: n.endswith("down_proj.weight"), poison_nan)


DAMAGES = {
    "truncated shard": _truncate,
    "corrupt header": _corrupt_header,
    "index names a missing file": _index_names_missing_file,
    "index path outside the checkpoint": _index_escapes_directory,
    "config and weights disagree": _config_disagrees,
    "integer tensor where a weight is expected": _integer_weights,
    "NaN in a weight": _nan_weight,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_bad_source_is_refused_with_a_named_error(synth_checkpoint, tmp_path, fp8_recipe, damage):
    source = shutil.copytree(synth_checkpoint, tmp_path / "work" / "src")
    named = damage(source)
    before = tree_digest(source)
    out = tmp_path / "out"
    with pytest.raises(QtoolsError) as error:
        convert_checkpoint(source, out, fp8_recipe)
    assert named in str(error.value)
    assert tree_digest(source) == before
    assert not verify_checkpoint(out).ok


def test_cli_exit_code_and_message(synth_checkpoint, tmp_path):
    source = shutil.copytree(synth_checkpoint, tmp_path / "src")
    name = _nan_weight(source)
    result = subprocess.run(
        [sys.executable, "-m", "qtools.cli", "convert", str(source), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert name in result.stderr and "Traceback" not in result.stderr
    verify = subprocess.run([sys.executable, "-m", "qtools.cli", "verify", str(tmp_path / "out")], capture_output=True)
    assert verify.returncode == 1


def test_output_directory_holding_other_files_is_refused(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(QtoolsError, match="did not write"):
            convert_checkpoint(synth_checkpoint, out, fp8_recipe, overwrite=overwrite)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_output_inside_source_is_refused(synth_checkpoint, fp8_recipe):
    with pytest.raises(QtoolsError, match="inside"):
        convert_checkpoint(synth_checkpoint, synth_checkpoint / "fp8", fp8_recipe)


def test_full_disk_is_a_clear_error_and_leaves_nothing_verifiable(synth_checkpoint, tmp_path, fp8_recipe):
    """A file-size limit makes writes fail the way a full disk does (ENOSPC and EFBIG take the same path)."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
        from qtools.cli import app
        sys.argv = ["qtools", "convert", {str(synth_checkpoint)!r}, {str(out)!r}]
        app()
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "write failed" in result.stderr and ".safetensors" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(out.glob("*.partial"))
    assert not verify_checkpoint(out).ok
    # With room again, the same command finishes the job.
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    assert verify_checkpoint(out).ok


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs")
def test_real_full_disk_on_a_tiny_tmpfs(synth_checkpoint, tmp_path, fp8_recipe):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)]).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(QtoolsError, match="write failed"):
            convert_checkpoint(synth_checkpoint, mount_point / "out", fp8_recipe)
        assert not verify_checkpoint(mount_point / "out").ok
    finally:
        subprocess.run(["umount", str(mount_point)])
