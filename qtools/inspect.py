"""`inspect_checkpoint`: what a checkpoint holds, per module family, from headers alone."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.qwen3_moe import family, layer_and_expert
from qtools.errors import QtoolsError


@dataclass
class FamilySummary:
    """Tensors of one module family (e.g. `experts.gate_proj`): dtypes, count and bytes."""

    dtypes: set[str] = field(default_factory=set)
    tensors: int = 0
    bytes: int = 0
    scales: int = 0


@dataclass
class CheckpointSummary:
    """What `inspect_checkpoint` found: layer and expert counts are those the tensor names show; `config` is
    config.json parsed (None, with `config_problem` saying why, when it is missing or unusable)."""

    path: Path
    quant_method: str
    layers: int
    experts: int
    total_bytes: int
    shards: int
    families: dict[str, FamilySummary]
    config: ModelConfig | None = None
    config_problem: str | None = None


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    """Summarise a checkpoint: format per module family, bytes, layer and expert counts, and its config. Reads
    headers only; a missing or unusable config.json is reported in the summary, not raised."""
    checkpoint = Checkpoint.open(path)
    try:
        config, config_problem = checkpoint.model_config, None
    except QtoolsError as error:
        config, config_problem = None, str(error)
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
        config=config,
        config_problem=config_problem,
    )
