"""`inspect_checkpoint`: what a checkpoint holds, per module family, from headers alone."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.qwen3_moe import family, layer_and_expert


@dataclass
class FamilySummary:
    """Tensors of one module family (e.g. `experts.gate_proj`): dtypes, count and bytes."""

    dtypes: set[str] = field(default_factory=set)
    tensors: int = 0
    bytes: int = 0
    scales: int = 0


@dataclass
class CheckpointSummary:
    path: Path
    quant_method: str
    layers: int
    experts: int
    total_bytes: int
    shards: int
    families: dict[str, FamilySummary]


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    """Summarise a checkpoint: format per module family, bytes, layer and expert counts. Reads headers only."""
    checkpoint = Checkpoint.open(path)
    families: dict[str, FamilySummary] = defaultdict(FamilySummary)
    layers, experts = set(), set()
    total = 0
    for name, info in checkpoint.tensor_infos().items():
        layer, expert = layer_and_expert(name.replace("weight_scale_inv", "weight").replace("weight_scale", "weight"))
        if layer is not None:
            layers.add(layer)
        if expert is not None:
            experts.add(expert)
        summary = families[family(name)]
        if name.endswith(("weight_scale_inv", "weight_scale")):
            summary.scales += 1
        else:
            summary.tensors += 1
            summary.dtypes.add(str(info.dtype).removeprefix("torch."))
        summary.bytes += info.nbytes
        total += info.nbytes
    quant = checkpoint.config.get("quantization_config") or {}
    return CheckpointSummary(
        path=Path(path),
        quant_method=quant.get("quant_method", "none (unquantised)"),
        layers=len(layers),
        experts=len(experts),
        total_bytes=total,
        shards=len(checkpoint.shard_names),
        families=dict(sorted(families.items())),
    )
