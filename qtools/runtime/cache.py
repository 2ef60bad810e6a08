"""Per-layer key/value cache for incremental decoding, preallocated to a fixed capacity (gpt-fast style)."""

from __future__ import annotations

import torch

from qtools.errors import QtoolsError


class KVCache:
    """Keys and values of one attention layer, each [B, kv_heads, capacity, head_dim], valid up to `length`."""

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ):
        self.keys = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def update(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append new keys/values [B, kv_heads, T, head_dim]; return all cached ones [B, kv_heads, length, hd]."""
        end = self.length + keys.shape[2]
        if end > self.capacity:
            raise QtoolsError(f"KV cache holds {self.capacity} positions; {end} needed")
        self.keys[:, :, self.length : end] = keys
        self.values[:, :, self.length : end] = values
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]
