"""Buffers, argument checks and the slot reduction shared by the two fused-MoE ops."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._buffers import empty
from .reference import FP8_BLOCK, FP8_DTYPE, cdiv, moe_align_buffer_size


@dataclass
class MoeBuffers:
    """Intermediate tensors of one fused-MoE call (T tokens, k slots, E experts, width I, hidden H).

    Fields:
        sorted_ids: [T*k + min(E, T*k) * (BLOCK_M - 1)] int32; expert_ids: [cdiv(len, BLOCK_M)] int32;
        num_post_pad: [1] int32; run_info: [2, E] int32 scratch of the align kernels.
        x_q: [T, H] fp8 and x_scale: [T, cdiv(H, 128)] fp32 (FP8 path; empty for W4A16).
        act: [T*k, I] fp8 (FP8) or x.dtype (W4A16), the silu(gate) * up intermediate per pair.
        act_scale: [T*k, cdiv(I, 128)] fp32 (FP8; empty for W4A16).
        out: [T*k, H] x.dtype, each pair's down projection times its routing weight.
    """

    sorted_ids: torch.Tensor
    expert_ids: torch.Tensor
    num_post_pad: torch.Tensor
    run_info: torch.Tensor
    x_q: torch.Tensor
    x_scale: torch.Tensor
    act: torch.Tensor
    act_scale: torch.Tensor
    out: torch.Tensor


def allocate_moe_buffers(
    x: torch.Tensor, num_experts: int, inter_size: int, top_k: int, block_m: int, quantized_acts: bool
) -> MoeBuffers:
    """Allocate `MoeBuffers` on x's device (pass `meta` tensors to plan without memory)."""
    t, h = x.shape
    pairs = t * top_k
    size = moe_align_buffer_size(pairs, num_experts, block_m)
    device = x.device
    if quantized_acts:
        x_q = empty((t, h), FP8_DTYPE, device)
        x_scale = empty((t, cdiv(h, FP8_BLOCK)), torch.float32, device)
        act = empty((pairs, inter_size), FP8_DTYPE, device)
        act_scale = empty((pairs, cdiv(inter_size, FP8_BLOCK)), torch.float32, device)
    else:
        x_q = x_scale = act_scale = torch.empty(0, device=device)
        act = empty((pairs, inter_size), x.dtype, device)
    return MoeBuffers(
        sorted_ids=empty((size,), torch.int32, device),
        expert_ids=empty((cdiv(size, block_m),), torch.int32, device),
        num_post_pad=empty((1,), torch.int32, device),
        run_info=empty((2, num_experts), torch.int32, device),
        x_q=x_q,
        x_scale=x_scale,
        act=act,
        act_scale=act_scale,
        out=empty((pairs, h), x.dtype, device),
    )


def check_routing(x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> None:
    """topk_weights [T, k] fp32 and topk_ids [T, k] int32 matching x [T, H]."""
    t = x.shape[0]
    if topk_ids.dim() != 2 or topk_ids.shape[0] != t or topk_ids.dtype != torch.int32:
        raise TypeError(f"topk_ids must be int32 [T={t}, k], got {topk_ids.dtype} {tuple(topk_ids.shape)}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape) or topk_weights.dtype != torch.float32:
        raise TypeError(
            f"topk_weights must be fp32 {list(topk_ids.shape)}, "
            f"got {topk_weights.dtype} {list(topk_weights.shape)}"
        )


def expert_strides(prefix: str, tensor: torch.Tensor) -> dict[str, int]:
    """Strides of an [E, N, K] tensor named as the MoE kernels expect: stride_{prefix}e / n / k."""
    return {f"stride_{prefix}{axis}": tensor.stride(dim) for dim, axis in enumerate("enk")}


def sum_over_slots(out: torch.Tensor, top_k: int, dtype: torch.dtype) -> torch.Tensor:
    """[T*k, H] per-pair outputs -> [T, H] `dtype`, summed in fp32."""
    return out.view(-1, top_k, out.shape[-1]).sum(dim=1, dtype=torch.float32).to(dtype)
