"""`inspect_checkpoint`: what a checkpoint holds, per module family, from headers alone."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import CALIBRATION_REPORT, STATE_DIR, Checkpoint
from qtools.checkpoint.qwen3_moe import family, layer_and_expert, module_of
from qtools.errors import QtoolsError
from qtools.formats import DenseFormat, LinearLayout, detect


@dataclass
class FamilySummary:
    """Tensors of one module family (e.g. `experts.gate_proj`): what its weights are (dtype, or the quantised
    codes' kind, e.g. "int4 g128"), how many, their scale tensors and all their bytes."""

    dtypes: set[str] = field(default_factory=set)
    tensors: int = 0
    bytes: int = 0
    scales: int = 0


@dataclass
class CheckpointSummary:
    """What `inspect_checkpoint` found: layer and expert counts are those the tensor names show; `config` is
    config.json parsed (None, with `config_problem` saying why, when it is missing or unusable); `layouts`
    describes the quantised layouts the format declares (`format_problem` says why none when config.json's
    quantization_config is not one qtools reads); `calibration` is the report a calibrated conversion left in
    `.qtools/calibration.json` (per-expert routed tokens and fallbacks), None when there is none."""

    path: Path
    quant_method: str
    layers: int
    experts: int
    total_bytes: int
    shards: int
    families: dict[str, FamilySummary]
    config: ModelConfig | None = None
    config_problem: str | None = None
    layouts: list[str] = field(default_factory=list)
    format_problem: str | None = None
    calibration: dict | None = None


def inspect_checkpoint(path: str | Path) -> CheckpointSummary:
    """Summarise a checkpoint: format per module family, bytes, layer and expert counts, and its config. Reads
    headers only; a missing or unusable config.json (or quantization_config) is reported in the summary, not
    raised."""
    checkpoint = Checkpoint.open(path)
    try:
        config, config_problem = checkpoint.model_config, None
    except QtoolsError as error:
        config, config_problem = None, str(error)
    try:
        fmt, format_problem = detect(checkpoint.config), None
    except QtoolsError as error:
        fmt, format_problem = DenseFormat(), str(error)
    infos = checkpoint.tensor_infos()
    families: dict[str, FamilySummary] = defaultdict(FamilySummary)
    layers, experts = set(), set()
    total = 0
    for name, info in infos.items():
        module = module_of(name)
        layer, expert = layer_and_expert(module)
        if layer is not None:
            layers.add(layer)
        if expert is not None:
            experts.add(expert)
        summary = families[family(name)]
        dtype = str(info.dtype).removeprefix("torch.")
        _count(summary, name[len(module) + 1 :], dtype, fmt.layout_of(module, infos.get))
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
        layouts=[layout.describe() for layout in fmt.layouts],
        format_problem=format_problem,
        calibration=_calibration_report(Path(path)),
    )


def _calibration_report(root: Path) -> dict | None:
    """`.qtools/calibration.json` of a calibrated conversion's output, None when absent or unreadable."""
    try:
        report = json.loads((root / STATE_DIR / CALIBRATION_REPORT).read_text())
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("layers"), list) else None


def _count(summary: FamilySummary, suffix: str, dtype: str, layout: LinearLayout | None) -> None:
    """Count one tensor of a family: a quantised module's codes as its kind, its scales apart, its other
    tensors (INT4 `weight_shape`) in bytes only; a dense tensor by dtype."""
    if layout is None:
        summary.tensors += 1
        summary.dtypes.add(dtype)
    elif suffix == layout.codes_suffix:
        summary.tensors += 1
        summary.dtypes.add(layout.codes_label())
    elif suffix in layout.scale_suffixes:
        summary.scales += 1
