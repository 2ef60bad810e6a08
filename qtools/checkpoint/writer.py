"""Writing Hugging Face checkpoints: sharded safetensors files and the JSON beside them, all atomically.

Every checkpoint qtools writes (converted, synthetic, deliberately damaged, the toy) goes through here and
`StreamingWriter`: each shard lands under its final name only once complete and fsynced, and the index, which
names the shards, is written last, so a reader never sees an index pointing at missing or half-written files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from qtools.checkpoint.hf import INDEX_NAME
from qtools.checkpoint.safetensors_io import StreamingWriter, TensorSpec, write_atomic

# safetensors' own metadata, which transformers requires to load a file as PyTorch weights.
PT_METADATA = {"format": "pt"}


def shard_file_name(number: int, total: int) -> str:
    """`model-0000N-of-0000M.safetensors`, the Hugging Face naming, for shard `number` (from 1) of `total`."""
    return f"model-{number:05d}-of-{total:05d}.safetensors"


def plan_shards(specs: Sequence[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of `specs`, in order, each at most `shard_bytes` unless a single tensor is larger."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON with a final newline, atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def write_index(root: Path, weight_map: dict[str, str], metadata: dict[str, Any]) -> dict[str, Any]:
    """Write `model.safetensors.index.json` (`metadata`, `weight_map` name -> shard file, sorted by name) into
    `root`, atomically; returns the index."""
    index = {"metadata": dict(metadata), "weight_map": dict(sorted(weight_map.items()))}
    write_json(Path(root) / INDEX_NAME, index)
    return index


def write_sharded_checkpoint(
    root: str | Path,
    specs: Sequence[TensorSpec],
    tensors: Iterable[tuple[str, torch.Tensor]],
    shard_bytes: int,
    index_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the weights of a checkpoint into `root` (created): shards of at most `shard_bytes` (`plan_shards`),
    named `shard_file_name`, then the index (`metadata.total_size` in bytes plus `index_metadata`).

    `tensors` yields (name, tensor) in the order of `specs` and may produce them lazily: only the tensor in hand
    is held. Each tensor must have its spec's dtype and shape. Returns the index. The same tensors always give
    byte-identical files.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(specs, shard_bytes)
    produced = iter(tensors)
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        file = shard_file_name(number, len(shards))
        writer = StreamingWriter(root / file, list(shard), PT_METADATA)
        try:
            for spec in shard:
                name, tensor = next(produced, (None, None))
                if name != spec.name:
                    raise RuntimeError(f"expected tensor {spec.name!r} (the specs' order), got {name!r}")
                writer.write(name, tensor.detach().contiguous())
            writer.close()
        except BaseException:
            writer.abort()
            raise
        weight_map.update(dict.fromkeys((spec.name for spec in shard), file))
    if next(produced, None) is not None:
        raise RuntimeError("more tensors than specs")
    total = sum(spec.nbytes for spec in specs)
    return write_index(root, weight_map, {"total_size": total, **(index_metadata or {})})
