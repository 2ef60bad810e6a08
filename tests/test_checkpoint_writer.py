"""One checkpoint writer: convert, the synthetic generator and the check's damaged copies all write through
`qtools.checkpoint.writer` / `StreamingWriter` (atomic shards, index last), and their files load with safetensors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qtools.check.damage import damage_experts
from qtools.checkpoint.hf import INDEX_NAME, Checkpoint
from qtools.checkpoint.safetensors_io import TensorSpec, save_tensors, shard_digest
from qtools.checkpoint.writer import plan_shards, write_sharded_checkpoint
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError

REPO = Path(__file__).resolve().parent.parent
# The one package that writes safetensors files; everything else calls it.
WRITER_PACKAGE = REPO / "qtools" / "checkpoint"


def _tensors(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (40, 30), "b.weight": (10,), "c.weight": (50, 20), "d.weight": (3, 3)}
    return [(name, torch.randn(shape, generator=generator).bfloat16()) for name, shape in shapes.items()]


def test_sharded_checkpoint_loads_and_matches_safetensors_bytes(tmp_path):
    tensors = _tensors()
    specs = [TensorSpec.of(name, tensor) for name, tensor in tensors]
    index = write_sharded_checkpoint(tmp_path / "ckpt", specs, iter(tensors), shard_bytes=2500, index_metadata={"k": 1})
    planned = [[s.name for s in shard] for shard in plan_shards(specs, 2500)]
    assert planned == [["a.weight", "b.weight"], ["c.weight", "d.weight"]]
    on_disk = json.loads((tmp_path / "ckpt" / INDEX_NAME).read_text())
    assert on_disk == index and index["metadata"] == {"total_size": sum(s.nbytes for s in specs), "k": 1}
    checkpoint = Checkpoint.open(tmp_path / "ckpt")
    assert checkpoint.shard_names == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    loaded = {}
    for shard in checkpoint.shard_names:
        loaded.update(load_file(tmp_path / "ckpt" / shard))
    assert loaded.keys() == dict(tensors).keys() and all(torch.equal(loaded[n], t) for n, t in tensors)
    assert not list((tmp_path / "ckpt").glob("*.partial"))
    # The layout is safetensors' own: rewriting a shard with save_tensors gives the same bytes.
    first = tmp_path / "ckpt" / checkpoint.shard_names[0]
    digest = save_tensors(tmp_path / "again.safetensors", load_file(first), {"format": "pt"})
    assert (tmp_path / "again.safetensors").read_bytes() == first.read_bytes() and digest == shard_digest(first)


def test_a_failing_producer_leaves_no_partial_shard_and_no_index(tmp_path):
    tensors = _tensors()
    specs = [TensorSpec.of(name, tensor) for name, tensor in tensors]

    def produce():
        yield tensors[0]
        raise RuntimeError("generator broke")

    with pytest.raises(RuntimeError, match="generator broke"):
        write_sharded_checkpoint(tmp_path, specs, produce(), shard_bytes=10**6)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="specs' order"):
        write_sharded_checkpoint(tmp_path, specs, reversed(tensors), shard_bytes=10**6)
    assert list(tmp_path.iterdir()) == []


def test_only_the_checkpoint_package_writes_safetensors_files():
    """safetensors' writers (`save_file`, `save`, `save_model`) are called from qtools/checkpoint only."""
    writers = {"save_file", "save", "save_model"}
    found = []
    for path in sorted((REPO / "qtools").rglob("*.py")):
        if WRITER_PACKAGE in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                found += [f"{path.relative_to(REPO)}:{node.lineno}" for a in node.names if a.name in writers]
    assert not found, "write checkpoints through qtools.checkpoint.writer instead:\n" + "\n".join(found)


def test_damaged_copy_changes_only_the_chosen_experts_and_loads(synth_checkpoint, tmp_path):
    damaged = damage_experts(synth_checkpoint, tmp_path / "damaged", layer=1, expert=2, noise=0.3)
    assert sorted(damaged) == [f"model.layers.1.mlp.experts.2.{p}_proj.weight" for p in ("down", "gate", "up")]
    source, copy = Checkpoint.open(synth_checkpoint), Checkpoint.open(tmp_path / "damaged")
    assert copy.weight_map == source.weight_map
    for shard in source.shard_names:
        before, after = load_file(synth_checkpoint / shard), load_file(tmp_path / "damaged" / shard)
        assert before.keys() == after.keys()
        for name in before:
            assert torch.equal(before[name], after[name]) == (name not in damaged), name
    untouched = [s for s in source.shard_names if not any(source.weight_map[n] == s for n in damaged)]
    assert untouched and all(
        (synth_checkpoint / s).read_bytes() == (tmp_path / "damaged" / s).read_bytes() for s in untouched
    )
    assert not list((tmp_path / "damaged").glob("*.partial"))


def test_damage_refuses_before_writing_anything(synth_checkpoint, fp8_recipe, tmp_path):
    with pytest.raises(QtoolsError, match="no expert weights of layer 7"):
        damage_experts(synth_checkpoint, tmp_path / "none", layer=7)
    assert not (tmp_path / "none").exists()
    convert_checkpoint(synth_checkpoint, tmp_path / "fp8", fp8_recipe, workers=1)
    with pytest.raises(QtoolsError, match="damage a dense checkpoint"):
        damage_experts(tmp_path / "fp8", tmp_path / "from-fp8", layer=0)
    assert not (tmp_path / "from-fp8").exists()
