"""Giving freed memory back to the operating system between the steps of a calibrated conversion.

A layer's steps allocate and free tensors of tens to hundreds of MB (an expert group's Hessians, factors, weights).
glibc's malloc keeps freed memory of that size in its heap when its dynamic mmap threshold has grown, so the
process's resident memory ratchets up to the sum of past peaks instead of the largest one. `release_freed_memory`
calls `malloc_trim(0)` (glibc only; elsewhere it does nothing), which returns free heap pages to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return the heap's free pages to the operating system (glibc `malloc_trim(0)`); no-op without glibc."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
