"""Two torchrun ranks (gloo, CPU) share a conversion; the result equals a single-process run."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

from qtools.convert import convert_checkpoint
from qtools.convert.distributed import assign_shards
from qtools.testing.files import edit_shard, poison_nan, tree_digest
from qtools.verify import verify_checkpoint


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_convert(source, destination) -> subprocess.CompletedProcess:
    """`qtools convert` under torchrun with two CPU ranks."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "qtools.cli", "convert", str(source), str(destination),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_assign_shards_balances_bytes_deterministically():
    sizes = {"a": 10, "b": 9, "c": 5, "d": 4, "e": 1}
    shares = assign_shards(sizes, 2)
    assert sorted(sum(shares, [])) == sorted(sizes)
    assert [sum(sizes[s] for s in share) for share in shares] == [15, 14]
    assert assign_shards(sizes, 1) == [sorted(sizes)]
    assert assign_shards({"a": 1}, 3) == [["a"], [], []]


def test_two_gloo_ranks_equal_single_process(synth_checkpoint, tmp_path, fp8_recipe):
    single = tmp_path / "single"
    convert_checkpoint(synth_checkpoint, single, fp8_recipe)
    out = tmp_path / "ranks"
    result = torchrun_convert(synth_checkpoint, out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert verify_checkpoint(out).ok

    def weights(root):
        return {k: v for k, v in tree_digest(root).items() if not k.startswith(".qtools")}

    assert weights(out) == weights(single)


def test_a_failing_rank_fails_the_whole_run(synth_checkpoint, tmp_path):
    source = shutil.copytree(synth_checkpoint, tmp_path / "src")
    name = edit_shard(source / "model-00002-of-00003.safetensors", lambda n: n.endswith("down_proj.weight"), poison_nan)
    out = tmp_path / "ranks"
    result = torchrun_convert(source, out)
    assert result.returncode != 0
    assert name in result.stderr
    assert not (out / "model.safetensors.index.json").exists()
    assert not verify_checkpoint(out).ok
