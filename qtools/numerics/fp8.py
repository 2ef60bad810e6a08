"""FP8 e4m3 block-wise weight quantisation (the official Qwen / DeepSeek layout).

A weight W [out, in] is cut into 128x128 blocks (partial blocks at the edges); each block gets
`weight_scale_inv = amax(|block|) / 448` in float32 (1.0 for an all-zero block) and codes
`q = clamp(W / scale, -448, 448)` cast to float8_e4m3fn. Dequantisation is `W ~= q * weight_scale_inv`, block by
block. The rule itself (`fp8_block_scale`, `fp8_e4m3_codes`) is defined once, in `qtools_kernels.reference`, so
the converter and the kernels' reference cannot drift apart.

The work is done one row of blocks at a time (`block_row_scales`, `quantize_block_row`) so a streaming converter
never holds more than 128 rows of a weight; `quantize_fp8_block` applies them to a whole tensor.
"""

from __future__ import annotations

import math

import torch

from qtools.numerics.finite import NonFiniteWeightError, abs_max
from qtools.numerics.workspace import Workspace
from qtools_kernels.reference import FP8_DTYPE, fp8_block_scale, fp8_e4m3_codes
from qtools_kernels.reference import FP8_E4M3_MAX as FP8_MAX

__all__ = [
    "FP8_DTYPE",
    "FP8_MAX",
    "NonFiniteWeightError",
    "block_row_scales",
    "block_scales_reference",
    "dequantize_fp8_block",
    "quantize_block_row",
    "quantize_fp8_block",
    "scale_shape",
]


def scale_shape(shape: tuple[int, ...], block: tuple[int, int] = (128, 128)) -> tuple[int, int]:
    """Shape of the block-scale tensor for a weight of `shape` [out, in]: [ceil(out/bo), ceil(in/bi)]."""
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def block_scales_reference(weight: torch.Tensor, block: tuple[int, int] = (128, 128)) -> torch.Tensor:
    """Whole-tensor block scales [ceil(out/bo), ceil(in/bi)] (zero-padded view): the reference the row-wise path
    is tested against."""
    out_features, in_features = weight.shape
    n_out, n_in = scale_shape(weight.shape, block)
    # Zero padding leaves every block's amax unchanged.
    padded = torch.nn.functional.pad(
        weight.float(), (0, n_in * block[1] - in_features, 0, n_out * block[0] - out_features)
    )
    return fp8_block_scale(padded.view(n_out, block[0], n_in, block[1]).abs().amax(dim=(1, 3)))


def block_row_scales(rows: torch.Tensor, block_in: int = 128, workspace: Workspace | None = None) -> torch.Tensor:
    """Scales of one row of blocks: rows [<=bo, in] -> float32 [ceil(in/block_in)] = amax/448 (1.0 if zero).

    Raises NonFiniteWeightError if the rows hold NaN or Inf. A `workspace` only changes where scratch lives.
    """
    n_rows, in_features = rows.shape
    n_in = math.ceil(in_features / block_in)
    full_in = (in_features // block_in) * block_in
    # abs and max are exact in the source dtype, so the amax is taken before widening to float32.
    amax = torch.empty(n_in, dtype=torch.float32, device=rows.device)
    if full_in:
        amax[: full_in // block_in] = abs_max(
            rows[:, :full_in].reshape(n_rows, full_in // block_in, block_in), (0, 2), workspace
        )
    if full_in < in_features:
        amax[-1] = abs_max(rows[:, full_in:], (0, 1))
    # amax propagates NaN and Inf, so this finds every non-finite value without another pass.
    if not torch.isfinite(amax).all():
        raise NonFiniteWeightError("weight holds NaN/Inf values")
    return fp8_block_scale(amax)


def quantize_block_row(rows: torch.Tensor, scales: torch.Tensor, block_in: int = 128) -> torch.Tensor:
    """Codes of one row of blocks: rows [<=bo, in] with their scales [ceil(in/block_in)] -> float8_e4m3fn."""
    n_rows, in_features = rows.shape
    full_in = (in_features // block_in) * block_in
    work = rows.to(torch.float32, copy=True)  # never a view: the division below is in place
    if full_in:
        work[:, :full_in].view(n_rows, full_in // block_in, block_in).div_(scales[: full_in // block_in, None])
    if full_in < in_features:
        work[:, full_in:].div_(scales[-1])
    return fp8_e4m3_codes(work)


def quantize_fp8_block(weight: torch.Tensor, block: tuple[int, int] = (128, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise a 2-D floating weight [out, in] to (codes float8_e4m3fn [out, in], scale_inv float32
    [ceil(out/128), ceil(in/128)]).

    Raises ValueError when the weight is not 2-D floating point, NonFiniteWeightError when it holds NaN/Inf.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D floating-point weight, got {tuple(weight.shape)} {weight.dtype}")
    bo, bi = block
    n_out, n_in = scale_shape(weight.shape, block)
    codes = torch.empty(weight.shape, dtype=FP8_DTYPE, device=weight.device)
    scale_inv = torch.empty(n_out, n_in, dtype=torch.float32, device=weight.device)
    for block_row in range(n_out):
        rows = weight[block_row * bo : (block_row + 1) * bo]
        scale_inv[block_row] = block_row_scales(rows, bi)
        codes[block_row * bo : block_row * bo + rows.shape[0]] = quantize_block_row(rows, scale_inv[block_row], bi)
    return codes, scale_inv


def dequantize_fp8_block(
    codes: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int] = (128, 128),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Inverse of `quantize_fp8_block`: codes [out, in] * per-block scale_inv -> `dtype` [out, in]."""
    out_features, in_features = codes.shape
    expanded = scale_inv.float().repeat_interleave(block[0], dim=0)[:out_features]
    expanded = expanded.repeat_interleave(block[1], dim=1)[:, :in_features]
    return (codes.float() * expanded).to(dtype)
