"""What every weight format provides: a linear layer that can dequantise itself, and a loader for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from qtools.runtime.weights.source import WeightSource


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


class WeightFormat(Protocol):
    """One on-disk weight format, recognised from config.json's `quantization_config`."""

    name: str
    # True when the served model quantises linear inputs at run time (FP8 W8A8 dynamic); decides `act_quant`'s default.
    dynamic_activations: bool

    def load_linear(
        self, source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions
    ) -> RuntimeLinear:
        """The linear layer `module` (e.g. `model.layers.0.self_attn.q_proj`) with weight `shape` [out, in],
        read from `source`; raises QtoolsError when the stored tensors disagree with `shape` or the format."""
        ...
