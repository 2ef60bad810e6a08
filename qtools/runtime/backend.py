"""Backends compute the runtime's linear layers and routed experts: `torch` is the dequantising reference,
`triton` runs the kernels of `qtools_kernels` (kernels/ in this repository) where a layer's format allows."""

from __future__ import annotations

import os
import weakref
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qtools.errors import QtoolsError
from qtools.runtime.weights import Fp8BlockLinear, RuntimeLinear

if TYPE_CHECKING:
    from qtools.runtime.layers import MoeBlock

BACKENDS = ("torch", "triton")
FP8_BLOCK = (128, 128)


class TorchBackend:
    """Pure torch: quantise the input as the served model does (when enabled), dequantise the weight to the
    input's dtype on every call, matmul. Exact and slow; the reference every faster backend is compared to."""

    name = "torch"

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        return F.linear(layer.quantize_input(x), layer.dequantize(x.dtype))

    def moe(self, block: MoeBlock, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Routed experts of `block`: x [N, hidden], weights float32 / ids int64 [N, top_k] -> [N, hidden]."""
        return block.reference_experts(x, weights, ids)


def _is_w8a8_block(layer: RuntimeLinear) -> bool:
    """FP8 128x128 block weights with per-token-group-128 activations: what the W8A8 kernels compute."""
    return isinstance(layer, Fp8BlockLinear) and layer.act_group_size == 128 and layer.block == FP8_BLOCK


def _pack_fp8_experts(block: MoeBlock) -> tuple[torch.Tensor, ...] | None:
    """(w13, w13_scale_inv, w2, w2_scale_inv) in the layout of `qtools_kernels.fused_moe_fp8_block`, or None
    when the experts are not all W8A8 block-wise or the expert width is not a multiple of 128 (then gate_proj's
    last scale block cannot be concatenated with up_proj's first). Each expert's `weight` is then rebound to its
    view of the stack, so the FP8 codes are held once, not twice."""
    linears = [(e.gate_proj, e.up_proj, e.down_proj) for e in block.experts]
    if not all(_is_w8a8_block(linear) for triple in linears for linear in triple):
        return None
    if linears[0][0].out_features % FP8_BLOCK[0]:
        return None
    w13 = torch.stack([torch.cat([gate.weight, up.weight]) for gate, up, _ in linears])
    w13_scale = torch.stack([torch.cat([gate.weight_scale_inv, up.weight_scale_inv]) for gate, up, _ in linears])
    w2 = torch.stack([down.weight for _, _, down in linears])
    w2_scale = torch.stack([down.weight_scale_inv for _, _, down in linears])
    width = linears[0][0].out_features
    for index, (gate, up, down) in enumerate(linears):
        gate.weight, up.weight, down.weight = w13[index, :width], w13[index, width:], w2[index]
    return w13, w13_scale.float(), w2, w2_scale.float()


class TritonBackend(TorchBackend):
    """FP8 block-wise linears with dynamic activations run `qtools_kernels.fp8_block_linear` (W8A8 block GEMM);
    a MoE block whose experts are all such linears runs `qtools_kernels.fused_moe_fp8_block`, on expert weights
    stacked into the kernel's [E, 2I, H] / [E, H, I] layout once per block (the experts' own buffers become views
    of the stacks). Every other layer runs the torch reference."""

    name = "triton"

    def __init__(self, kernels: ModuleType):
        self.kernels = kernels
        self._packed: weakref.WeakKeyDictionary[MoeBlock, tuple[torch.Tensor, ...] | None] = weakref.WeakKeyDictionary()

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor:
        if _is_w8a8_block(layer):
            flat = x.reshape(-1, x.shape[-1])
            out = self.kernels.fp8_block_linear(flat, layer.weight, layer.weight_scale_inv.float())
            return out.view(*x.shape[:-1], layer.out_features)
        return super().linear(x, layer)

    def moe(self, block: MoeBlock, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if block not in self._packed:
            self._packed[block] = _pack_fp8_experts(block)
        packed = self._packed[block]
        if packed is None or x.dtype not in (torch.bfloat16, torch.float16):
            return super().moe(block, x, weights, ids)
        return self.kernels.fused_moe_fp8_block(x.contiguous(), *packed, weights.contiguous(), ids.to(torch.int32))


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
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise QtoolsError(
            f"backend 'triton' runs on CUDA devices (or on CPU in Triton's interpreter, TRITON_INTERPRET=1), "
            f"got device={device}; use backend='torch'"
        )
    return TritonBackend(qtools_kernels)


def resolve_backend(name: str, device: torch.device) -> TorchBackend:
    """The backend called `name` for `device`; raises QtoolsError saying what to install or choose instead."""
    if name == "torch":
        return TorchBackend()
    if name == "triton":
        return _triton_backend(device)
    raise QtoolsError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
