"""SQNR of every weight of a quantised checkpoint against its BF16 source, module by module.

Weights are compared as the runtime holds them: each side's linear layer is built by the runtime's format
module (dense, FP8 block-wise, ...) and `dequantize(float32)` gives the weight the model multiplies by, so any
format the runtime loads is compared the same way, one decoder layer at a time.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from qtools.check.metrics import energies, lowest, sqnr_from_energies, worst_first
from qtools.runtime import DecoderLayer, Qwen3MoeModel
from qtools.runtime.weights import RuntimeLinear


def _module_record(name: str, reference: torch.Tensor, candidate: RuntimeLinear) -> dict:
    signal, noise = energies(reference, candidate.dequantize(torch.float32))
    return {
        "module": name,
        "format": type(candidate).__name__,
        "sqnr_db": sqnr_from_energies(signal, noise),
        "signal": signal,
        "noise": noise,
    }


@torch.no_grad()
def compare_layer_weights(index: int, ref_layer: DecoderLayer, quant_layer: DecoderLayer) -> list[dict]:
    """One record per linear module of decoder layer `index`: checkpoint name (`model.layers.3.mlp.experts.7.
    up_proj`), the quantised side's format class, SQNR in dB (inf when identical) and the float64 energies."""
    quant_linears = {name: module for name, module in quant_layer.named_modules() if isinstance(module, RuntimeLinear)}
    records = []
    for name, module in ref_layer.named_modules():
        if isinstance(module, RuntimeLinear) and name in quant_linears:
            reference = module.dequantize(torch.float32)
            records.append(_module_record(f"model.layers.{index}.{name}", reference, quant_linears[name]))
            del reference
    return records


@torch.no_grad()
def compare_resident_weights(ref: Qwen3MoeModel, quant: Qwen3MoeModel) -> list[dict]:
    """Records for the embedding and lm_head (kept BF16 by the usual recipes; listed when they differ)."""
    signal, noise = energies(ref.embed_tokens, quant.embed_tokens.to(ref.embed_tokens.device))
    embed = {
        "module": "model.embed_tokens",
        "format": "embedding",
        "sqnr_db": sqnr_from_energies(signal, noise),
        "signal": signal,
        "noise": noise,
    }
    return [embed, _module_record("lm_head", ref.lm_head.dequantize(torch.float32), quant.lm_head)]


def _changed(records: list[dict]) -> list[dict]:
    # `!= 0` rather than `> 0`: NaN noise (a NaN in a dequantised weight) is a change, the worst there is.
    return [record for record in records if record["noise"] != 0.0]


def layer_weight_summary(records: list[dict]) -> dict:
    """Per-layer figures from module records: the lowest module SQNR (NaN when any module's is NaN), the
    energy-weighted SQNR of the whole layer, and how many modules differ from the reference at all."""
    return {
        "weight_sqnr_min_db": lowest([record["sqnr_db"] for record in records]),
        "weight_sqnr_db": sqnr_from_energies(sum(r["signal"] for r in records), sum(r["noise"] for r in records)),
        "modules": len(records),
        "modules_changed": len(_changed(records)),
    }


def worst_modules(records: list[dict], count: int = 10) -> list[dict]:
    """The `count` changed modules with the lowest SQNR, lowest first; NaN (non-finite noise) before all."""
    return sorted(_changed(records), key=lambda record: worst_first(record["sqnr_db"]))[:count]


def _median(ordered: list[float]) -> float:
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def weights_section(modules: list[dict]) -> dict[str, Any]:
    """Summary of per-module weight records: counts, lowest and median SQNR of changed modules (NaN ranked
    lowest), the worst modules; inf when nothing changed."""
    changed = sorted((record["sqnr_db"] for record in _changed(modules)), key=worst_first)
    return {
        "modules": len(modules),
        "modules_changed": len(changed),
        "sqnr_min_db": changed[0] if changed else math.inf,
        "sqnr_median_db": _median(changed) if changed else math.inf,
        "worst": worst_modules(modules),
    }
