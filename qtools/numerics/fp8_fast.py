"""The converter's fast path for FP8 block rows: `quantize_block_row_fast` returns, bit for bit, what the
reference `block_row_scales` + `quantize_block_row` (`qtools.numerics.fp8`, the one tests and benchmarks share)
return, in fewer passes over memory.

Same rule, same operations, in the same order (amax by integer bits, `fp8_block_scale`, float32 division by the
scale as stored, clamp to +-448, e4m3 rounding to nearest even). BF16 rows on the CPU take the compiled loops of
`qtools.numerics.native` for the amax and for divide + clamp + round (one pass each over the rows, about 0.7 ns a
value on this project's 2-core AVX2 VM, against about 2 for the torch code below); the scale rule stays the
torch call. Other rows (float16, float32, a GPU, or no compiled extension) take torch: every intermediate lives
in a reused `Workspace` buffer (no page faults for fresh memory), division and cast run in place on tiles of
about `TILE_ELEMENTS` values (so the float32 copy of a tile stays in cache between the divide and the cast), and
the clamp to +-448 is skipped where it provably changes nothing: always when torch's cast saturates
(`cast_saturates`, true of torch 2.13), else where every block scale is a normal number (`clamp_is_identity`).
"""

from __future__ import annotations

import functools

import torch

from qtools.numerics import native
from qtools.numerics.fp8 import FP8_DTYPE, FP8_MAX, block_row_scales
from qtools.numerics.workspace import Workspace

# float32 values per divide-and-cast tile: 1 MiB, about an L2 cache's worth on the CPUs this runs on.
TILE_ELEMENTS = 1 << 18


@functools.cache
def cast_saturates(device_type: str = "cpu") -> bool:
    """True when this torch's float32 -> float8_e4m3fn cast on `device_type` saturates (|x| > 448 and +-Inf give
    +-448, as on CPU in torch 2.13), so clamping first never changes a non-NaN code; older casts turned large
    values into NaN. Probed once per device type."""
    probe = torch.tensor([470.0, 1e30, float("inf"), -float("inf")], device=device_type)
    return probe.to(FP8_DTYPE).view(torch.uint8).tolist() == [0x7E, 0x7E, 0x7E, 0xFE]


def clamp_is_identity(scales: torch.Tensor) -> bool:
    """True when dividing weights by these block `scales` (as stored, any float dtype) cannot give |x/s| >= 464,
    so clamping to +-448 before the cast changes no code (a cast rounds x in [448, 464) to 448, e4m3's largest
    finite value: 464 is the tie with 480, which rounds to even; only |x| >= 464 could become NaN unclamped).

    Each scale is amax/448 rounded to its dtype; |w| <= amax, so |w/s| <= 448 * (1 + d) / (1 - d)-ish with d
    the dtype's relative rounding error (2^-24 for float32, 2^-8 for bfloat16): far below 464 while the scale is
    a normal number of its dtype. A subnormal (or zero) scale has no such bound: then the clamp stays.
    """
    info = torch.finfo(scales.dtype)
    return info.eps <= 2.0**-7 and bool(scales.min() >= info.tiny)


def quantize_block_row_fast(
    rows: torch.Tensor,
    scale_dtype: torch.dtype = torch.float32,
    block_in: int = 128,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One row of blocks: rows [<=bo, in] (floating) -> (scales `scale_dtype` [ceil(in/block_in)], codes
    float8_e4m3fn [r, in]), equal bit for bit to `block_row_scales(rows).to(scale_dtype)` and
    `quantize_block_row(rows, scales.float())`.

    The codes are a view of `workspace` (valid until its next use); raises NonFiniteWeightError for NaN/Inf.
    """
    workspace = workspace or Workspace(rows.device)
    n_rows, in_features = rows.shape
    full_in = (in_features // block_in) * block_in
    n_full = full_in // block_in
    scales = block_row_scales(rows, block_in, workspace).to(scale_dtype)
    divisors = scales.float()
    codes = workspace.tensor("codes", (n_rows, in_features), FP8_DTYPE)
    if native.usable(rows):
        native.fp8_codes(rows, block_in, divisors.contiguous(), codes)
        return scales, codes
    clamp = not (cast_saturates(rows.device.type) or clamp_is_identity(scales))
    # On a GPU one launch per op over the whole slab beats cache-sized tiles.
    tile_elements = TILE_ELEMENTS if rows.device.type == "cpu" else n_rows * in_features
    tile_rows = max(1, min(n_rows, tile_elements // max(in_features, 1)))
    work = workspace.tensor("work", (tile_rows, in_features), torch.float32)
    for first in range(0, n_rows, tile_rows):
        part = rows[first : first + tile_rows]
        tile = work[: part.shape[0]]
        tile.copy_(part)
        if full_in:
            tile[:, :full_in].view(part.shape[0], n_full, block_in).div_(divisors[:n_full, None])
        if full_in < in_features:
            tile[:, full_in:].div_(divisors[-1])
        if clamp:
            tile.clamp_(-FP8_MAX, FP8_MAX)
        codes[first : first + part.shape[0]].copy_(tile)
    return scales, codes
