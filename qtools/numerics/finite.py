"""Finite-value checks shared by every quantiser and by verify: `all_finite` (kept tensors), `abs_max` (the
amax a scale is computed from, which also exposes NaN/Inf) and `NonFiniteWeightError`."""

from __future__ import annotations

import torch

from qtools.numerics import native
from qtools.numerics.workspace import Workspace


class NonFiniteWeightError(ValueError):
    """A weight holds NaN or Inf; no quantised format can represent it and the source is likely corrupt."""


def all_finite(values: torch.Tensor) -> bool:
    """True when a floating-point tensor of any shape holds no NaN or Inf (an empty one is finite).

    `torch.aminmax` propagates NaN and keeps +-Inf at the ends, so two finite extremes prove the whole tensor
    finite; on CPU it runs about 6x faster than `torch.isfinite(values).all()` over bfloat16. float8 has no
    aminmax kernel and is widened to float32 first.
    """
    if values.numel() == 0:
        return True
    if values.element_size() == 1:
        values = values.float()
    low, high = torch.aminmax(values)
    return bool(torch.isfinite(low) and torch.isfinite(high))


_SIGN_MASKS = {2: (torch.int16, 0x7FFF), 4: (torch.int32, 0x7FFFFFFF)}


def abs_max(values: torch.Tensor, dims: tuple[int, ...], workspace: Workspace | None = None) -> torch.Tensor:
    """amax(|values|) over `dims`, as float32; NaN where a reduced slice holds NaN, Inf where it holds Inf.

    For IEEE floats, clearing the sign bit gives |x| and the integer order of the bits is the order of the values
    (NaN above Inf above every finite value), so one integer reduction replaces abs() plus a float reduction.
    With a `workspace` the cleared bits go to a reused buffer instead of fresh memory (same result).
    """
    if (grouped := _native_grouped(values, dims)) is not None:
        return grouped
    mask = _SIGN_MASKS.get(values.element_size())
    if mask is None or not values.is_floating_point():
        return values.abs().amax(dim=dims).float()
    int_dtype, sign_off = mask
    if workspace is None:
        magnitude = values.view(int_dtype) & sign_off
    else:
        magnitude = workspace.tensor("abs_max", tuple(values.shape), int_dtype)
        torch.bitwise_and(values.view(int_dtype), sign_off, out=magnitude)
    return magnitude.amax(dim=dims).view(values.dtype).float()


def _native_grouped(values: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """The compiled form of the two reductions the quantisers ask for, or None where it does not apply: BF16
    `values` [rows, groups, group] laid out as groups of columns of 2-D rows (strides (s, group, 1)), reduced over
    (0, 2) (one amax per group of a block row) or over (2,) (one per row and group)."""
    if values.dim() != 3 or dims not in ((0, 2), (2,)) or values.numel() == 0:
        return None
    n_rows, groups, group = values.shape
    if values.stride()[1:] != (group, 1):
        return None
    rows = values.as_strided((n_rows, groups * group), (values.stride(0), 1))
    if not native.usable(rows):
        return None
    over_rows = dims == (0, 2)
    out = torch.empty(groups if over_rows else (n_rows, groups), dtype=torch.int16)
    return native.abs_max_bits(rows, group, over_rows, out).view(torch.bfloat16).float()
