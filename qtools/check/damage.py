"""Deliberately damaged copies of a checkpoint, to prove that a check (and a CI gate built on it) has teeth.

`damage_experts(src, dst, layer)` copies `src` and re-quantises every expert weight of one decoder layer with
2-bit round-to-nearest (asymmetric, groups of 128 along the input dimension), written back in the source
dtype; `noise=` instead adds Gaussian noise of that relative RMS to one expert. Only the touched shards are
rewritten; everything else is copied byte for byte.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qtools.errors import QtoolsError


def rtn_quantize(weight: torch.Tensor, bits: int = 2, group: int = 128) -> torch.Tensor:
    """weight [out, in] rounded to 2**bits levels per group of `group` input columns (min/max asymmetric),
    returned dequantised in the weight's dtype."""
    values = weight.float()
    rows, cols = values.shape
    grouped = torch.nn.functional.pad(values, (0, (-cols) % group)).reshape(rows, -1, group)
    low, high = grouped.amin(-1, keepdim=True), grouped.amax(-1, keepdim=True)
    scale = ((high - low) / (2**bits - 1)).clamp_min(1e-12)
    codes = ((grouped - low) / scale).round().clamp(0, 2**bits - 1)
    return (codes * scale + low).reshape(rows, -1)[:, :cols].to(weight.dtype)


def add_noise(weight: torch.Tensor, relative_rms: float, seed: int = 0) -> torch.Tensor:
    """weight plus Gaussian noise whose RMS is `relative_rms` times the weight's, in the weight's dtype."""
    values = weight.float()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(values.shape, generator=generator) * values.square().mean().sqrt() * relative_rms
    return (values + noise).to(weight.dtype)


def damage_experts(
    src: str | Path, dst: str | Path, layer: int, expert: int | None = None, noise: float | None = None
) -> list[str]:
    """Copy checkpoint `src` to `dst` with the experts of decoder `layer` damaged (all of them, or only
    `expert`): 2-bit RTN, or Gaussian noise of relative RMS `noise` when given. Returns the damaged tensor
    names. Works on dense (BF16) checkpoints; raises QtoolsError when nothing matches."""
    src, dst = Path(src), Path(dst)
    which = r"\d+" if expert is None else str(expert)
    pattern = re.compile(rf"model\.layers\.{layer}\.mlp\.experts\.{which}\.(gate|up|down)_proj\.weight")
    shutil.copytree(src, dst)
    damaged: list[str] = []
    for shard in sorted(dst.glob("*.safetensors")):
        tensors = load_file(shard)
        names = sorted(name for name in tensors if pattern.fullmatch(name))
        if not names:
            continue
        for index, name in enumerate(names):
            if not tensors[name].is_floating_point() or tensors[name].element_size() < 2:
                raise QtoolsError(f"{shard}: {name} is {tensors[name].dtype}; damage a dense checkpoint")
            weight = tensors[name]
            tensors[name] = rtn_quantize(weight) if noise is None else add_noise(weight, noise, seed=index)
        save_file(tensors, shard, metadata={"format": "pt"})
        damaged += names
    if not damaged:
        raise QtoolsError(f"{src}: no expert weights of layer {layer} (expert {expert}) to damage")
    return damaged
