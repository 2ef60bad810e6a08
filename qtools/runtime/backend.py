"""Backends compute the runtime's linear layers and routed experts: `torch` is the dequantising reference,
`triton` runs the kernels of `qtools_kernels` (kernels/ in this repository) where a layer's format allows."""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qtools.errors import QtoolsError
from qtools.runtime.weights import Fp8BlockLinear, Int4GroupLinear, RuntimeLinear

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


def _pack_int4_experts(block: MoeBlock) -> tuple[tuple[torch.Tensor, ...], int] | None:
    """((w13_packed, w13_scale, w2_packed, w2_scale), group) in the layout of `qtools_kernels.fused_moe_w4a16`
    ([E, 2I, H/8] / [E, 2I, H/g] with gate rows then up rows, [E, H, I/8] / [E, H, I/g]), or None when the
    experts are not all INT4 with one power-of-two group size (what the kernel tiles by). Each expert's buffers
    are then rebound to their views of the stacks, so the packed codes are held once, not twice."""
    linears = [(e.gate_proj, e.up_proj, e.down_proj) for e in block.experts]
    if not all(isinstance(linear, Int4GroupLinear) for triple in linears for linear in triple):
        return None
    group = linears[0][0].group_size
    if {linear.group_size for triple in linears for linear in triple} != {group} or group < 16 or group & (group - 1):
        return None
    w13 = torch.stack([torch.cat([gate.weight_packed, up.weight_packed]) for gate, up, _ in linears])
    w13_scale = torch.stack([torch.cat([gate.weight_scale, up.weight_scale]) for gate, up, _ in linears])
    w2 = torch.stack([down.weight_packed for _, _, down in linears])
    w2_scale = torch.stack([down.weight_scale for _, _, down in linears])
    width = linears[0][0].out_features
    for index, (gate, up, down) in enumerate(linears):
        gate.weight_packed, up.weight_packed, down.weight_packed = w13[index, :width], w13[index, width:], w2[index]
        gate.weight_scale, up.weight_scale = w13_scale[index, :width], w13_scale[index, width:]
        down.weight_scale = w2_scale[index]
    return (w13, w13_scale, w2, w2_scale), group


class TritonBackend(TorchBackend):
    """FP8 block-wise linears with dynamic activations run `qtools_kernels.fp8_block_linear` (W8A8 block GEMM);
    a MoE block whose experts are all such linears runs `qtools_kernels.fused_moe_fp8_block`, and one whose
    experts are all INT4 (W4A16) runs `qtools_kernels.fused_moe_w4a16`, on expert weights stacked into the
    kernel's [E, 2I, ...] / [E, H, ...] layout once per block (the experts' own buffers become views of the
    stacks). Every other layer runs the torch reference."""

    name = "triton"

    def __init__(self, kernels: ModuleType):
        self.kernels = kernels
        self._packed: weakref.WeakKeyDictionary[MoeBlock, Callable | None] = weakref.WeakKeyDictionary()

    def linear(self, x: torch.Tensor, layer: RuntimeLinear) -> torch.Tensor:
        if _is_w8a8_block(layer):
            flat = x.reshape(-1, x.shape[-1])
            out = self.kernels.fp8_block_linear(flat, layer.weight, layer.weight_scale_inv.float())
            return out.view(*x.shape[:-1], layer.out_features)
        return super().linear(x, layer)

    def _fused_experts(self, block: MoeBlock) -> Callable | None:
        """The kernel call for `block`'s experts, (x, weights, ids) -> [N, hidden], or None (torch path)."""
        fp8 = _pack_fp8_experts(block)
        if fp8 is not None:
            return lambda x, weights, ids: self.kernels.fused_moe_fp8_block(x, *fp8, weights, ids)
        int4 = _pack_int4_experts(block)
        if int4 is not None:
            tensors, group = int4
            return lambda x, weights, ids: self.kernels.fused_moe_w4a16(x, *tensors, weights, ids, group)
        return None

    def moe(self, block: MoeBlock, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if block not in self._packed:
            self._packed[block] = self._fused_experts(block)
        fused = self._packed[block]
        if fused is None or x.dtype not in (torch.bfloat16, torch.float16):
            return super().moe(block, x, weights, ids)
        return fused(x.contiguous(), weights.contiguous(), ids.to(torch.int32))


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
