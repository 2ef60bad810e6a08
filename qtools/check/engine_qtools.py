"""The qtools engine: both models run by the project's own runtime (resident, or streamed layer by layer).

Decoder layer i of both checkpoints is read together, once: the held-out code is pushed through both
(`distribution.PairedForward`) and every weight is compared (`sqnr`) while the pair is in memory. Greedy
decoding then runs each resident model with a KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qtools.check.decode import greedy_decode
from qtools.check.distribution import PairedForward, summarize
from qtools.check.metrics import lowest_index
from qtools.check.sqnr import compare_layer_weights, compare_resident_weights, layer_weight_summary, weights_section
from qtools.check.workload import Workload
from qtools.errors import QtoolsError
from qtools.runtime import CheckpointLoader, Qwen3MoeModel

SHAPE_KEYS = ("num_layers", "hidden_size", "vocab_size", "num_experts", "moe_intermediate_size")


@dataclass
class EngineRun:
    """What an engine produced: figure sections (distribution, layers, weights), per-module weight records,
    both models' decoded token ids in `Workload.prompts` order, and how each model was loaded."""

    figures: dict[str, Any] = field(default_factory=dict)
    weight_records: list[dict] = field(default_factory=list)
    ref_outputs: list[list[int]] = field(default_factory=list)
    quant_outputs: list[list[int]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def open_pair(ref: Path, quant: Path, **options: Any) -> tuple[CheckpointLoader, CheckpointLoader]:
    """Loaders of both checkpoints (configs and headers only, no tensor read yet), with `options` for
    `CheckpointLoader`; QtoolsError unless the two have the same shapes."""
    loaders = CheckpointLoader(ref, **options), CheckpointLoader(quant, **options)
    for key in SHAPE_KEYS:
        a, b = (getattr(loader.config, key) for loader in loaders)
        if a != b:
            raise QtoolsError(f"{ref} and {quant} are not the same model: config {key} {a} vs {b}")
    return loaders


def pair_info(ref: CheckpointLoader, quant: CheckpointLoader) -> dict[str, Any]:
    """How the two checkpoints are read, for the report."""
    return {
        "reference_format": ref.info.weight_format,
        "quantised_format": quant.info.weight_format,
        "quantised_act_quant": quant.info.act_quant,
    }


def layer_walk(
    ref: Qwen3MoeModel,
    quant: Qwen3MoeModel,
    windows: list[torch.Tensor],
    valid_vocab: int,
    weights: bool,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict]]:
    """Read layer i of both models together; push `windows` through both (when any) and compare the weights
    (when `weights`). Returns the figure sections ("distribution", "layers", "weights" as run) and the
    per-module weight records."""
    paired = PairedForward(ref, quant, windows) if windows else None
    per_layer: list[dict[str, Any]] = []
    modules: list[dict] = []
    for index in range(ref.config.num_layers):
        ref_layer, quant_layer = ref.layer(index), quant.layer(index)
        row: dict[str, Any] = {"layer": index}
        if paired is not None:
            row.update(paired.step(index, ref_layer, quant_layer))
        if weights:
            records = compare_layer_weights(index, ref_layer, quant_layer)
            modules += records
            row.update(layer_weight_summary(records))
        per_layer.append(row)
        del ref_layer, quant_layer  # streamed layers are freed before the next pair is read
        log(f"layer {index + 1}/{ref.config.num_layers}")
    figures: dict[str, Any] = {"layers": {"per_layer": per_layer}}
    if paired is not None:
        figures["distribution"] = summarize(paired.finish(valid_vocab), len(windows))
        # NaN ranks lowest: a layer whose output went NaN is the worst layer, not one a minimum skips.
        worst = per_layer[lowest_index([row["update_sqnr_db"] for row in per_layer])]
        figures["layers"]["update_sqnr_min_db"] = worst["update_sqnr_db"]
        figures["layers"]["worst_layer_by_update"] = worst["layer"]
    if weights:
        modules += compare_resident_weights(ref, quant)
        figures["weights"] = weights_section(modules)
        worst = per_layer[lowest_index([row["weight_sqnr_min_db"] for row in per_layer])]
        figures["layers"]["worst_layer_by_weights"] = worst["layer"]
    return figures, modules


def run_qtools(
    ref: Path,
    quant: Path,
    work: Workload,
    weights: bool,
    device: str,
    stream_layers: bool,
    dtype: torch.dtype,
    log: Callable[[str], None],
) -> EngineRun:
    """Run the teacher-forced suites and weight comparison, then (resident models only) greedy decoding."""
    # Resident models keep dequantised weights (decoding re-runs every linear per token); streamed ones cannot.
    loaders = open_pair(ref, quant, device=device, dtype=dtype, cache_dequantized=not stream_layers)
    ref_model, quant_model = (loader.model(stream_layers) for loader in loaders)
    run = EngineRun(info=pair_info(*loaders))
    if work.windows or weights:
        run.figures, run.weight_records = layer_walk(
            ref_model, quant_model, work.windows, work.valid_vocab, weights, log
        )
    if work.prompts:
        run.ref_outputs = _decode(ref_model, work, "reference", log)
        run.quant_outputs = _decode(quant_model, work, "quantised", log)
    return run


def _decode(model: Qwen3MoeModel, work: Workload, label: str, log: Callable[[str], None]) -> list[list[int]]:
    started = time.perf_counter()
    outputs = greedy_decode(model, work.prompts, work.budgets, work.eos)
    log(f"decoded {len(outputs)} prompts with the {label} model in {time.perf_counter() - started:.1f}s")
    return outputs
