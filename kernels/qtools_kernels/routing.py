"""Qwen3-MoE router post-processing: softmax over experts, top-k, renormalise (`norm_topk_prob`).

One program handles BLOCK_T tokens: top-k by repeated argmax on the fp32 logits (ties go to the lower
expert id), then the chosen softmax probabilities, divided by their own sum when renormalising.
Reference: `reference.topk_softmax_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._buffers import empty
from ._launch import KernelLaunch, check_device
from .reference import cdiv


@triton.jit
def _topk_softmax_kernel(
    logits_ptr,  # (T, E) bf16 / fp16 / fp32
    weights_ptr,  # (T, TOP_K) fp32
    ids_ptr,  # (T, TOP_K) int32
    T,
    E,
    stride_lt,
    stride_le,
    stride_wt,
    stride_it,
    TOP_K: tl.constexpr,
    RENORMALIZE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    experts = tl.arange(0, BLOCK_E)
    slots = tl.arange(0, BLOCK_K)
    row_mask = rows < T
    expert_mask = experts < E
    logits = tl.load(
        logits_ptr + rows[:, None] * stride_lt + experts[None, :] * stride_le,
        mask=row_mask[:, None] & expert_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    logits = tl.where(expert_mask[None, :], logits, float("-inf"))
    exps = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    chosen_exp = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)
    chosen_id = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    remaining = logits
    for slot in tl.static_range(TOP_K):
        best = tl.argmax(remaining, axis=1, tie_break_left=True)
        hit = experts[None, :] == best[:, None]
        best_exp = tl.sum(tl.where(hit, exps, 0.0), axis=1)
        chosen_exp = tl.where(slots[None, :] == slot, best_exp[:, None], chosen_exp)
        chosen_id = tl.where(slots[None, :] == slot, best[:, None].to(tl.int32), chosen_id)
        remaining = tl.where(hit, float("-inf"), remaining)
    if RENORMALIZE:
        denominator = tl.sum(chosen_exp, axis=1)
    else:
        denominator = tl.sum(exps, axis=1)
    weights = tl.math.div_rn(chosen_exp, denominator[:, None])
    out_mask = row_mask[:, None] & (slots < TOP_K)[None, :]
    tl.store(weights_ptr + rows[:, None] * stride_wt + slots[None, :], weights, mask=out_mask)
    tl.store(ids_ptr + rows[:, None] * stride_it + slots[None, :], chosen_id, mask=out_mask)


def plan_topk_softmax(
    router_logits: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    top_k: int,
    renormalize: bool,
) -> KernelLaunch:
    """Launch plan writing topk_weights / topk_ids [T, top_k] from router_logits [T, E]."""
    t, e = router_logits.shape
    block_e = triton.next_power_of_2(e)
    block_t = max(1, min(16, 4096 // block_e))
    return KernelLaunch(
        kernel=_topk_softmax_kernel,
        grid=(cdiv(t, block_t),),
        args={
            "logits_ptr": router_logits,
            "weights_ptr": topk_weights,
            "ids_ptr": topk_ids,
            "T": t,
            "E": e,
            "stride_lt": router_logits.stride(0),
            "stride_le": router_logits.stride(1),
            "stride_wt": topk_weights.stride(0),
            "stride_it": topk_ids.stride(0),
        },
        constexprs={
            "TOP_K": top_k,
            "RENORMALIZE": renormalize,
            "BLOCK_T": block_t,
            "BLOCK_E": block_e,
            "BLOCK_K": triton.next_power_of_2(top_k),
        },
        num_warps=4,
        num_stages=1,
    )


def _check_routing_args(router_logits: torch.Tensor, top_k: int) -> None:
    if router_logits.dim() != 2:
        raise ValueError(f"router_logits must be [T, E], got shape {tuple(router_logits.shape)}")
    if router_logits.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"router_logits must be bf16, fp16 or fp32, got {router_logits.dtype}")
    if not 1 <= top_k <= router_logits.shape[1]:
        raise ValueError(f"top_k must be in [1, E={router_logits.shape[1]}], got {top_k}")


@torch.library.custom_op("qtools_kernels::topk_softmax", mutates_args=())
def topk_softmax(
    router_logits: torch.Tensor, top_k: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax routing with top-k selection.

    Args:
        router_logits: [T, E] bf16 / fp16 / fp32, finite (the output of `mlp.gate`).
        top_k: experts per token (8 for Qwen3-Coder-480B), 1 <= top_k <= E.
        renormalize: divide the chosen probabilities by their sum (`norm_topk_prob: true`).

    Returns:
        topk_weights: [T, top_k] fp32; topk_ids: [T, top_k] int32 in descending logit order, ties to the
        lower expert id. Ids are bit-exact with `reference.topk_softmax_ref`, weights to float rounding.
    """
    _check_routing_args(router_logits, top_k)
    check_device(_topk_softmax_kernel, router_logits)
    t = router_logits.shape[0]
    topk_weights = empty((t, top_k), torch.float32, router_logits.device)
    topk_ids = empty((t, top_k), torch.int32, router_logits.device)
    plan_topk_softmax(router_logits, topk_weights, topk_ids, top_k, renormalize).run()
    return topk_weights, topk_ids


@topk_softmax.register_fake
def _(router_logits: torch.Tensor, top_k: int, renormalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    _check_routing_args(router_logits, top_k)
    t = router_logits.shape[0]
    return (
        router_logits.new_empty((t, top_k), dtype=torch.float32),
        router_logits.new_empty((t, top_k), dtype=torch.int32),
    )
