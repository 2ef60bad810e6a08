"""INT4 symmetric group-wise weight quantisation (W4A16, compressed-tensors `pack-quantized`).

A weight W [out, in] is cut, row by row, into groups of `group` consecutive input channels; each group gets
`weight_scale = amax(|group|) / 7.5` rounded to the scale dtype (the dtype's eps for an all-zero group) and codes
`q = round(clamp(W / scale, -8, 7))` (the division in float32, by the scale as stored, rounding to nearest even).
Eight codes are packed per int32, least significant nibble first, each stored as q + 8: `weight_packed`
[out, in/8]. Dequantisation is `W ~= q * weight_scale`, group by group. The rules (`int4_group_scale`,
`int4_codes`, `pack_int4_ref`) are defined once, in `qtools_kernels.reference`, so the converter and the kernels'
reference cannot drift apart.

Rows are independent, so a streaming converter quantises a few rows at a time (`group_scales`,
`quantize_rows`); `quantize_int4_group` applies them to a whole tensor.
"""

from __future__ import annotations

import torch

from qtools.numerics.finite import NonFiniteWeightError, abs_max
from qtools.numerics.workspace import Workspace
from qtools_kernels.reference import (
    INT4_MAX,
    INT4_MIN,
    INT4_OFFSET,
    INT4_SCALE_DIVISOR,
    int4_codes,
    int4_group_scale,
    int4_zero_group_scale,
)
from qtools_kernels.reference import pack_int4_ref as pack_int4
from qtools_kernels.reference import unpack_int4_ref as unpack_int4

__all__ = [
    "GROUP_SIZES",
    "INT4_MAX",
    "INT4_MIN",
    "INT4_OFFSET",
    "INT4_SCALE_DIVISOR",
    "PACK_FACTOR",
    "NonFiniteWeightError",
    "dequantize_int4_group",
    "group_scales",
    "int4_group_scales",
    "int4_zero_group_scale",
    "int4_shape_problem",
    "pack_int4",
    "packed_shape",
    "quantize_int4_group",
    "quantize_rows",
    "scale_shape",
    "unpack_int4",
]

# Group sizes vLLM's Marlin and Triton WNA16 MoE kernels take (besides -1, channel-wise, which qtools does not
# write): a smaller group stores more scale per weight and tracks outliers better.
GROUP_SIZES = (32, 64, 128)
PACK_FACTOR = 8
"""INT4 codes per int32 word."""


def int4_shape_problem(shape: tuple[int, ...], group: int) -> str | None:
    """Why a weight of `shape` cannot be stored as INT4 groups of `group`, or None when it can.

    compressed-tensors refuses input dimensions that are not a multiple of the group (and vLLM's kernels need
    whole groups), and eight codes fill each int32 word.
    """
    if len(shape) != 2:
        return f"INT4 group quantisation takes 2-D weights, got shape {list(shape)}"
    if shape[1] % group:
        return (
            f"input dimension {shape[1]} is not a multiple of the group size {group} "
            "(compressed-tensors and vLLM need whole groups)"
        )
    return None


def packed_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Shape of `weight_packed` for a weight of `shape` [out, in]: [out, in / 8] (in a multiple of 8)."""
    return shape[0], shape[1] // PACK_FACTOR


def scale_shape(shape: tuple[int, ...], group: int) -> tuple[int, int]:
    """Shape of `weight_scale` for a weight of `shape` [out, in]: [out, in / group]."""
    return shape[0], shape[1] // group


def group_scales(
    rows: torch.Tensor, group: int, dtype: torch.dtype | None = None, workspace: Workspace | None = None
) -> torch.Tensor:
    """Scales of some whole rows: rows [r, in] (in a multiple of `group`) -> `dtype` (default: the rows' dtype)
    [r, in / group] = amax / 7.5 rounded to `dtype` (its eps for an all-zero group).

    Raises NonFiniteWeightError if the rows hold NaN or Inf. A `workspace` only changes where scratch lives.
    """
    n_rows, in_features = rows.shape
    # abs and max are exact in the source dtype, so the amax is taken before widening to float32.
    amax = abs_max(rows.reshape(n_rows, in_features // group, group), (2,), workspace)
    # amax propagates NaN and Inf, so this finds every non-finite value without another pass.
    if not torch.isfinite(amax).all():
        raise NonFiniteWeightError("weight holds NaN/Inf values")
    return int4_group_scale(amax, dtype or rows.dtype)


def int4_group_scales(weight: torch.Tensor, group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Scales of stacked weights: [..., out, in] -> `dtype` (default: the weight's) [..., out, in / group_size], the
    rule of `group_scales` (round-to-nearest and GPTQ both take their scales from here). Raises ValueError when `in`
    is not a multiple of `group_size`, NonFiniteWeightError when the weights hold NaN or Inf."""
    in_features = weight.shape[-1]
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"input width {in_features} is not a multiple of the INT4 group size {group_size}")
    flat = weight.reshape(-1, in_features)
    return group_scales(flat, group_size, dtype).view(*weight.shape[:-1], in_features // group_size)


def quantize_rows(rows: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """INT4 codes of some whole rows: rows [r, in] with their scales [r, in / group] -> int8 [r, in] in [-8, 7]."""
    n_rows, in_features = rows.shape
    scaled = rows.to(torch.float32).view(n_rows, in_features // group, group) / scales.float()[..., None]
    return int4_codes(scaled).view(n_rows, in_features)


def quantize_int4_group(
    weight: torch.Tensor, group: int = 128, scale_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D floating weight [out, in] to (weight_packed int32 [out, in/8], weight_scale `scale_dtype`
    (default: the weight's dtype) [out, in/group]).

    Raises ValueError when the weight is not 2-D floating point or its input dimension is not a multiple of
    `group`, NonFiniteWeightError when it holds NaN/Inf.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D floating-point weight, got {tuple(weight.shape)} {weight.dtype}")
    problem = int4_shape_problem(tuple(weight.shape), group)
    if problem:
        raise ValueError(problem)
    scales = group_scales(weight, group, scale_dtype)
    return pack_int4(quantize_rows(weight, scales, group)), scales


def dequantize_int4_group(
    packed: torch.Tensor, scale: torch.Tensor, group: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of `quantize_int4_group`: weight_packed int32 [out, in/8] and weight_scale [out, in/group] ->
    `dtype` [out, in]. q * scale is computed in float32 and cast once: for 16-bit scales that product is exact (a
    4-bit code times an 8- or 11-bit significand), so with `dtype` the scale dtype this is bit for bit
    compressed-tensors' product in that dtype (and what a kernel dequantising in registers to it computes)."""
    codes = unpack_int4(packed).float()
    out_features, in_features = codes.shape
    scaled = codes.view(out_features, in_features // group, group) * scale.float()[..., None]
    return scaled.view(out_features, in_features).to(dtype)
