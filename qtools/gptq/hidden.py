"""The calibration hidden states between two decoder layers: [N, T, H] in the compute dtype, in memory or spilled.

A layer reads its inputs from one store and writes its outputs to another; the two swap at the next layer. Past
the memory budget a store is a file under `DST/.qtools/hidden/` mapped into memory (`torch.from_file`), so the
operating system pages it in and out: the run's memory stays one layer's weights and Hessians plus one batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class HiddenStore:
    """Hidden states of N sequences, shape [N, T, H] `dtype`, read and written a batch of sequences at a time.

    `path` None keeps them in memory; otherwise they live in that file (created, removed by `close`).
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, path: Path | None = None):
        self.shape, self.dtype, self.path = shape, dtype, path
        if path is None:
            self.data = torch.empty(shape, dtype=dtype)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            self.data = torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=dtype).view(shape)

    @staticmethod
    def nbytes(shape: tuple[int, int, int], dtype: torch.dtype) -> int:
        return math.prod(shape) * torch.empty((), dtype=dtype).element_size()

    def read(self, first: int, count: int, device: torch.device | str) -> torch.Tensor:
        """Sequences [first, first + count) -> [count, T, H] on `device` (a copy)."""
        return self.data[first : first + count].to(device, copy=True)

    def write(self, first: int, values: torch.Tensor) -> None:
        """Store values [count, T, H] as sequences [first, first + count)."""
        self.data[first : first + values.shape[0]].copy_(values.to("cpu"))

    def rows(self, index: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """Tokens `index` (int64 [n], flat positions sequence * T + t) -> [n, H] on `device` (a copy)."""
        return self.data.view(-1, self.shape[-1])[index.to("cpu")].to(device)

    def add(self, first: int, values: torch.Tensor) -> None:
        """Add values [count, T, H] to sequences [first, first + count), in place."""
        self.data[first : first + values.shape[0]].add_(values.to("cpu"))

    def close(self) -> None:
        self.data = None  # type: ignore[assignment]
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def hidden_stores(
    shape: tuple[int, int, int], dtype: torch.dtype, max_memory: int | None, spill_dir: Path
) -> tuple[HiddenStore, HiddenStore]:
    """The two stores a layer-by-layer run swaps between: in memory when both fit in `max_memory` bytes (None: no
    limit), else both spilled to files in `spill_dir`."""
    spill = max_memory is not None and 2 * HiddenStore.nbytes(shape, dtype) > max_memory
    paths = (spill_dir / "a.bin", spill_dir / "b.bin") if spill else (None, None)
    return HiddenStore(shape, dtype, paths[0]), HiddenStore(shape, dtype, paths[1])
