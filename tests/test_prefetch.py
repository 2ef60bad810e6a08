"""Row slabs read three ways (copied into a reused buffer, memory-mapped, read ahead by a thread into a ring of
buffers) give the same bytes; the read-ahead stops cleanly and reports read errors at the slab that failed; and
a shard converted with read-ahead (the `--device cuda` path, run here on CPU) is byte-identical to one without."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import save_file

from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.safetensors_io import SafetensorsReader
from qtools.convert import prefetch
from qtools.convert.plan import plan_conversion
from qtools.convert.prefetch import map_rows_inline, prefetch_rows, slab_buffers
from qtools.convert.shard import convert_shard
from qtools.errors import QtoolsError
from qtools.recipe import load_recipe

TENSORS = {
    "a": torch.randn(300, 40).bfloat16(),
    "b": torch.randn(5, 7),
    "c": torch.randn(129, 128).bfloat16(),
}


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file(TENSORS, str(path))
    return path


def _steps(rows_per_step: int):
    return [
        (name, first, rows_per_step) for name, t in TENSORS.items() for first in range(0, t.shape[0], rows_per_step)
    ]


def _expected(rows_per_step: int):
    return [TENSORS[name][first : first + count] for name, first, count in _steps(rows_per_step)]


def test_read_rows_into_and_map_rows_match_read_rows(shard):
    reader = SafetensorsReader(shard)
    buffer = torch.empty(129 * 128 * 2, dtype=torch.uint8)
    for name, tensor in TENSORS.items():
        for first, count in [(0, 128), (128, 128), (tensor.shape[0] - 1, 128), (0, tensor.shape[0])]:
            want = tensor[first : first + count]
            assert torch.equal(reader.read_rows(name, first, count), want)
            assert torch.equal(reader.read_rows_into(name, first, count, buffer), want)
            assert torch.equal(reader.map_rows(name, first, count), want)


def test_read_rows_into_refuses_a_small_or_wrong_buffer(shard):
    reader = SafetensorsReader(shard)
    with pytest.raises(ValueError, match="buffer"):
        reader.read_rows_into("a", 0, 128, torch.empty(10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="buffer"):
        reader.read_rows_into("a", 0, 128, torch.empty(128 * 40, dtype=torch.bfloat16))


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("window", [1, 40 * 2 * 48, 1 << 30], ids=["slab per map", "3 slabs per map", "whole"])
def test_prefetch_and_mapped_slabs_match_in_order(shard, depth, window, monkeypatch):
    monkeypatch.setattr(prefetch, "MAP_WINDOW_BYTES", window)
    reader = SafetensorsReader(shard)
    buffers = slab_buffers(16 * 128 * 4, depth, pin=False)
    # Each slab is checked before the next is asked for: its buffer is only reused after that.
    got = [slab.clone() for slab in prefetch_rows(reader, _steps(16), buffers)]
    mapped = [slab.clone() for slab in map_rows_inline(reader, _steps(16))]
    for want, ahead, view in zip(_expected(16), got, mapped, strict=True):
        assert torch.equal(ahead, want) and torch.equal(view, want)


def test_prefetch_stops_its_thread_when_left_early(shard):
    reader = SafetensorsReader(shard)
    before = {t for t in threading.enumerate() if t.name == "qtools-prefetch"}
    slabs = prefetch_rows(reader, _steps(16), slab_buffers(16 * 128 * 2, 2, pin=False))
    assert torch.equal(next(slabs), TENSORS["a"][:16])
    slabs.close()
    assert {t for t in threading.enumerate() if t.name == "qtools-prefetch"} == before


def test_prefetch_raises_a_read_error_at_its_slab(shard):
    reader = SafetensorsReader(shard)
    steps = _steps(128)
    shard.write_bytes(shard.read_bytes()[:-1000])  # truncated after the plan was made: "c" cannot be read
    slabs = prefetch_rows(reader, steps, slab_buffers(128 * 128 * 2, 2, pin=False))
    seen = 0
    with pytest.raises(QtoolsError, match="truncated"):
        for _ in slabs:
            seen += 1
    assert seen == sum(1 for name, _, _ in steps if name != "c")


@pytest.mark.parametrize("recipe", ["fp8-block", "w4a16-rtn"])
def test_shard_with_read_ahead_is_byte_identical(aligned_checkpoint, tmp_path, recipe):
    checkpoint = Checkpoint.open(aligned_checkpoint)
    plan = plan_conversion(checkpoint, load_recipe(recipe))
    shard = checkpoint.shard_names[0]
    plain = convert_shard(aligned_checkpoint / shard, tmp_path / "plain.safetensors", plan.actions[shard])
    ahead = convert_shard(
        aligned_checkpoint / shard, tmp_path / "ahead.safetensors", plan.actions[shard], prefetch=True
    )
    assert plain.converted > 0
    assert (tmp_path / "plain.safetensors").read_bytes() == (tmp_path / "ahead.safetensors").read_bytes()
    assert plain.sha256 == ahead.sha256 and plain.source == ahead.source
