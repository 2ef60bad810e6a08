"""Output allocation for the host wrappers, with an opt-in poison fill for tests.

Every buffer a kernel is expected to write in full is allocated through `empty`. Inside
`poison_allocations()` those buffers start out as NaN (floating dtypes) or as a negative sentinel
(integer dtypes), so an element that a kernel forgets to write makes the comparison with the reference
fail instead of silently reading zeros from a fresh allocation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

INT_POISON = -1_000_003
"""Sentinel written into integer buffers while poisoning is on (never a valid index or expert id)."""

_poison_depth = 0


def empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """`torch.empty`, or a NaN / `INT_POISON` filled tensor while `poison_allocations()` is active."""
    if _poison_depth == 0:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.full(tuple(shape), float("nan"), dtype=dtype, device=device)
    return torch.full(tuple(shape), INT_POISON, dtype=dtype, device=device)


@contextlib.contextmanager
def poison_allocations() -> Iterator[None]:
    """Make `empty` pre-fill buffers with NaN / `INT_POISON` for the duration of the block."""
    global _poison_depth
    _poison_depth += 1
    try:
        yield
    finally:
        _poison_depth -= 1
