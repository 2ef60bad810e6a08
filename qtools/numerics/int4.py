"""Symmetric group-wise INT4 (compressed-tensors `pack-quantized`, W4A16): the scale rule.

Codes are q = clamp(round(w / scale), -8, 7) (stored packed as q + 8); each group of `group_size` consecutive input
columns of a row shares one scale. The rule is the one compressed-tensors 0.19 applies for symmetric int4
(`calculate_qparams` on the min/max of each group, as llm-compressor's weight observer calls it):
`scale = amax(|w|) / 7.5` computed in the scale dtype, where 7.5 = (7 - (-8)) / 2, and an all-zero group gets
`finfo(dtype).eps` instead of 0. Round-to-nearest and GPTQ both take their scales from `int4_group_scales`, so the
two recipes cannot drift apart.
"""

from __future__ import annotations

import torch

__all__ = ["INT4_MAX", "INT4_MIN", "int4_group_scales"]

INT4_MIN = -8
INT4_MAX = 7


def int4_group_scales(weight: torch.Tensor, group_size: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Scales of symmetric INT4 groups: weight [..., out, in] -> [..., out, in / group_size] in `dtype`.

    `dtype` defaults to the weight's dtype (the model dtype, which the checkpoint stores scales in). The amax is
    exact in any floating dtype; it is cast to `dtype` before the division, as compressed-tensors computes the
    scale from the weight in its own dtype. Raises ValueError when `in` is not a multiple of `group_size`.
    """
    in_features = weight.shape[-1]
    if group_size <= 0 or in_features % group_size:
        raise ValueError(f"input width {in_features} is not a multiple of the INT4 group size {group_size}")
    dtype = weight.dtype if dtype is None else dtype
    amax = weight.unflatten(-1, (in_features // group_size, group_size)).abs().amax(dim=-1).to(dtype)
    # compressed-tensors divides by bit_range.to(dtype) / 2, a 0-dim tensor of `dtype`: the same rounding here.
    scales = amax / torch.tensor((INT4_MAX - INT4_MIN) / 2, dtype=dtype, device=amax.device)
    return torch.where(scales == 0, torch.tensor(torch.finfo(dtype).eps, dtype=dtype, device=amax.device), scales)
