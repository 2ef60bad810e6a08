"""Backends compute the runtime's linear layers: `torch` is the dequantising reference, `triton` the hook for the
fused kernels of `qtools_kernels` (kernels/ in this repository)."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F

from qtools.errors import QtoolsError
from qtools.runtime.weights import Fp8BlockLinear, RuntimeLinear

BACKENDS = ("torch", "triton")


class TorchBackend:
    """Pure torch: quantise the input as the served model does (when enabled), dequantise the weight to the
    input's dtype on every call, matmul. Exact and slow; the reference every faster backend is compared to."""

    name = "torch"

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        return F.linear(layer.quantize_input(x), layer.dequantize(x.dtype))


class TritonBackend(TorchBackend):
    """FP8 block-wise linears with dynamic activations run `qtools_kernels.fp8_block_linear` (W8A8 block GEMM);
    every other layer, and the MoE expert loop, still runs the torch reference until the fused-MoE kernel is
    wired in here."""

    name = "triton"

    def __init__(self, kernels: ModuleType):
        self.kernels = kernels

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor:
        if isinstance(layer, Fp8BlockLinear) and layer.act_group_size == 128 and layer.block == (128, 128):
            flat = x.reshape(-1, x.shape[-1])
            out = self.kernels.fp8_block_linear(flat, layer.weight, layer.weight_scale_inv.float())
            return out.view(*x.shape[:-1], layer.out_features)
        return super().linear(x, layer)


def _triton_backend(device: torch.device) -> TritonBackend:
    try:
        import qtools_kernels
    except ImportError as error:
        raise QtoolsError(
            "backend 'triton' is not available yet: it needs the qtools_kernels package (kernels/ in this "
            "repository, `pip install -e kernels/`), which is not importable; use backend='torch'"
        ) from error
    if not getattr(qtools_kernels, "HAS_TRITON", False):
        raise QtoolsError("backend 'triton' needs Triton (`pip install triton`); use backend='torch'")
    if device.type != "cuda":
        raise QtoolsError(f"backend 'triton' runs on CUDA devices, got device={device}; use backend='torch'")
    return TritonBackend(qtools_kernels)


def resolve_backend(name: str, device: torch.device) -> TorchBackend:
    """The backend called `name` for `device`; raises QtoolsError saying what to install or choose instead."""
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        return _triton_backend(device)
    raise QtoolsError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
