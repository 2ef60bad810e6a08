"""What every runtime linear layer provides: its weight in its on-disk format, dequantised on demand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class LinearBackend(Protocol):
    """Computes a runtime linear layer; `qtools.runtime.backend` holds the implementations."""

    name: str

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor: ...


@dataclass(frozen=True)
class LoadOptions:
    """How weights are placed: compute `dtype` for dense tensors, `device`, the backend and whether FP8 linears
    simulate dynamic activation quantisation (`act_quant`); `cache_dequantized` keeps each quantised weight's
    dequantised copy after its first use (faster decoding, one compute-dtype copy of every weight in memory)."""

    device: torch.device
    dtype: torch.dtype
    backend: LinearBackend
    act_quant: bool
    cache_dequantized: bool = False


class RuntimeLinear(nn.Module):
    """y = x W^T without bias, W [out_features, in_features] kept in its on-disk format.

    Subclasses hold their tensors as buffers and implement `dequantize`; `quantize_input` is the activation
    quantisation the served model applies (identity by default). The backend decides how to compute.
    """

    def __init__(self, out_features: int, in_features: int, backend: LinearBackend):
        super().__init__()
        self.out_features = out_features
        self.in_features = in_features
        self.backend = backend

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The dense weight `dtype` [out_features, in_features]."""
        raise NotImplementedError

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] as the served model's GEMM sees it (same shape and dtype)."""
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features], in x's dtype."""
        return self.backend.linear(x, self)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DequantizedCache:
    """A quantised layer's dense weight kept after its first use in `dtype` (the compute dtype): the same values,
    computed once. Other dtypes (e.g. float32 for SQNR) are computed afresh and not kept; `dtype` None keeps
    nothing."""

    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype
        self._weight: torch.Tensor | None = None

    def get(self, dtype: torch.dtype, compute) -> torch.Tensor:
        """`compute(dtype)` [out, in], from the cache when `dtype` is the cached dtype."""
        if dtype != self.dtype:
            return compute(dtype)
        if self._weight is None:
            self._weight = compute(dtype)
        return self._weight
