"""Deliberately damaged copies of a checkpoint, to prove that a check (and a CI gate built on it) has teeth.

`damage_experts(src, dst, layer)` copies `src` and re-quantises every expert weight of one decoder layer with
2-bit round-to-nearest (asymmetric, groups of 128 along the input dimension), written back in the source
dtype; `noise=` instead adds Gaussian noise of that relative RMS to one expert. Only the touched shards are
rewritten (streamed through the checkpoint writer convert uses, untouched tensors copied byte for byte); every
other file is copied as it is.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter, TensorSpec
from qtools.checkpoint.writer import PT_METADATA
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
    names. Works on dense (BF16) checkpoints; raises QtoolsError, before writing anything, when nothing matches
    or a matching weight is not dense."""
    src, dst = Path(src), Path(dst)
    which = r"\d+" if expert is None else str(expert)
    pattern = re.compile(rf"model\.layers\.{layer}\.mlp\.experts\.{which}\.(gate|up|down)_proj\.weight")
    checkpoint = Checkpoint.open(src)
    targets: dict[str, list[str]] = {}
    for shard in checkpoint.shard_names:
        tensors = checkpoint.reader(shard).tensors
        names = sorted(name for name in tensors if pattern.fullmatch(name))
        for name in names:
            dtype = tensors[name].dtype
            if not dtype.is_floating_point or dtype.itemsize < 2:
                raise QtoolsError(f"{src / shard}: {name} is {dtype}; damage a dense checkpoint")
        if names:
            targets[shard] = names
    if not targets:
        raise QtoolsError(f"{src}: no expert weights of layer {layer} (expert {expert}) to damage")
    root = src.resolve()
    # The damaged shards are written from the source below, so the copy skips them.
    shutil.copytree(
        src, dst, ignore=lambda folder, names: targets.keys() & set(names) if Path(folder).resolve() == root else []
    )
    for shard, names in targets.items():
        _write_damaged_shard(src / shard, dst / shard, names, noise)
    return [name for names in targets.values() for name in names]


def _write_damaged_shard(source: Path, destination: Path, names: list[str], noise: float | None) -> None:
    """Stream `source` into `destination` with tensors `names` damaged, every other tensor copied byte for byte."""
    reader = SafetensorsReader(source)
    infos = sorted(reader.tensors.values(), key=lambda info: info.start)
    writer = StreamingWriter(destination, [TensorSpec(i.name, i.dtype, i.shape) for i in infos], PT_METADATA)
    try:
        for info in infos:
            if info.name not in names:
                writer.copy_part(info.name, source, info.start, info.nbytes)
                continue
            weight = reader.read(info.name)
            seed = names.index(info.name)  # its place among the shard's damaged names: noise fixed per tensor
            writer.write(info.name, rtn_quantize(weight) if noise is None else add_noise(weight, noise, seed=seed))
        writer.close()
    except BaseException:
        writer.abort()
        raise
