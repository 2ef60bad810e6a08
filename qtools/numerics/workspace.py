"""Reusable scratch buffers for the streaming quantisers' fast paths.

A converter quantises a weight one slab of rows at a time; allocating fresh float32 and code tensors for every
slab costs a page fault per 4 KiB (the allocator hands large blocks back to the kernel) and, with torch's
out-of-place ops, one extra pass over memory per op. A `Workspace` keeps one flat buffer per name and hands out
views of it, growing a buffer only when a larger slab asks for it.
"""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named scratch buffers on one device. A tensor from `tensor(name, ...)` stays valid until the next call
    for the same name: a caller must consume (write out or copy) it before asking again."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self._buffers: dict[str, torch.Tensor] = {}

    def tensor(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous `dtype` tensor of `shape`, a view of buffer `name`."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < nbytes:
            buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=self.device)
            self._buffers[name] = buffer
        return buffer[:nbytes].view(dtype).view(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held by every buffer together."""
        return sum(buffer.numel() for buffer in self._buffers.values())
