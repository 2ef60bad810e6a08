"""The converter's fast path for INT4 round-to-nearest rows: `quantize_int4_rows_fast` returns, bit for bit,
what the reference `group_scales` + `quantize_rows` + `pack_int4` (`qtools.numerics.int4`, the one tests and
benchmarks share) return, in fewer passes over memory.

The scale rule is the reference's own call (`group_scales`, hence `int4_group_scale`); the codes follow
`int4_codes` (float32 division by the scale as stored, clamp to [-8, 7], round half to even), computed in place
in a reused `Workspace` tile with the +8 nibble offset added in float (exact for these small integers). Packing
joins two nibbles per byte with int16 shifts instead of summing int64 words: on a little-endian machine the
four bytes of each int32 word then hold nibbles 0..7, least significant first, which is `pack_int4`'s layout.
BF16 rows on the CPU take the compiled loop of `qtools.numerics.native` instead (the same operations, one pass).
"""

from __future__ import annotations

import sys

import torch

from qtools.numerics import native
from qtools.numerics.int4 import INT4_MAX, INT4_MIN, INT4_OFFSET, group_scales, pack_int4, quantize_rows
from qtools.numerics.workspace import Workspace

# float32 values per divide-round-pack tile: 1 MiB, about an L2 cache's worth on the CPUs this runs on.
TILE_ELEMENTS = 1 << 18
_LITTLE_ENDIAN = sys.byteorder == "little"


def quantize_int4_rows_fast(
    rows: torch.Tensor, group: int, workspace: Workspace | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole rows [r, in] (in a multiple of `group` and of 8) -> (weight_packed int32 [r, in/8], weight_scale in
    the rows' dtype [r, in/group]), equal bit for bit to `pack_int4(quantize_rows(rows, s, group))` and
    `s = group_scales(rows, group)`.

    The packed words are a view of `workspace` (valid until its next use); raises NonFiniteWeightError for
    NaN/Inf.
    """
    workspace = workspace or Workspace(rows.device)
    n_rows, in_features = rows.shape
    scales = group_scales(rows, group, workspace=workspace)
    if not _LITTLE_ENDIAN:
        return pack_int4(quantize_rows(rows, scales, group)), scales
    divisors = scales.float()
    packed = workspace.tensor("packed", (n_rows, in_features // 2), torch.uint8)
    if native.usable(rows) and group % 2 == 0:
        native.int4_pack(rows, group, divisors.contiguous(), packed)
        return packed.view(torch.int32), scales
    tile_elements = TILE_ELEMENTS if rows.device.type == "cpu" else n_rows * in_features
    tile_rows = max(1, min(n_rows, tile_elements // max(in_features, 1)))
    work = workspace.tensor("work", (tile_rows, in_features), torch.float32)
    nibbles = workspace.tensor("nibbles", (tile_rows, in_features), torch.uint8)
    pairs = workspace.tensor("pairs", (tile_rows, in_features // 2), torch.int16)
    for first in range(0, n_rows, tile_rows):
        part = rows[first : first + tile_rows]
        count = part.shape[0]
        tile, nib, pair = work[:count], nibbles[:count], pairs[:count]
        tile.copy_(part)
        tile.view(count, in_features // group, group).div_(divisors[first : first + count, :, None])
        tile.clamp_(INT4_MIN, INT4_MAX).round_().add_(INT4_OFFSET)
        nib.copy_(tile)
        # Two nibbles as one int16 (little-endian): v = even + 256 * odd, so v | (v >> 4) has even + 16 * odd in
        # its low byte, which the narrowing copy keeps; every op runs on contiguous memory.
        wide = nib.view(torch.int16)
        torch.bitwise_right_shift(wide, 4, out=pair)
        pair.bitwise_or_(wide)
        packed[first : first + count].copy_(pair)
    return packed.view(torch.int32), scales
