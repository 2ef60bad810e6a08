"""Pure-torch fused-MoE references: dequantise each routed expert, then matmul.

They define what `fused_moe_fp8_block` and `fused_moe_w4a16` compute and run anywhere torch runs (no
Triton, no GPU), so a CPU runtime can use them as its MoE implementation. The expert MLP is
`down(silu(gate(x)) * up(x))`, with w13 rows [0, I) = gate_proj and [I, 2I) = up_proj, and the output
is the sum over the k routed experts of `topk_weight * expert(x)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .reference import (
    dequant_fp8_block_ref,
    dequant_int4_group_ref,
    dequant_per_token_group_fp8_ref,
    per_token_group_quant_fp8_ref,
)

ExpertWeights = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
"""expert id -> (w13 [2I, H], w2 [H, I]) in the compute dtype."""


def _fake_quant_fp8_groups(a: torch.Tensor) -> torch.Tensor:
    """Quantise per token group of 128 to fp8 and dequantise again: [M, K] -> [M, K] fp32."""
    q, scale = per_token_group_quant_fp8_ref(a)
    return dequant_per_token_group_fp8_ref(q, scale)


def _moe_forward(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    expert_weights: ExpertWeights,
    input_transform: Callable[[torch.Tensor], torch.Tensor],
    act_transform: Callable[[torch.Tensor], torch.Tensor],
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """Shared expert loop; only the experts present in `topk_ids` are materialised."""
    top_k = topk_ids.shape[1]
    flat_ids = topk_ids.flatten()
    flat_weights = topk_weights.flatten().float()
    x_in = input_transform(x)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(flat_ids).tolist():
        pairs = (flat_ids == expert).nonzero().squeeze(1)
        tokens = pairs // top_k
        w13, w2 = expert_weights(expert)
        inter = w2.shape[1]
        h = (x_in[tokens].to(compute_dtype) @ w13.T).float()
        act = act_transform(F.silu(h[:, :inter]) * h[:, inter:])
        y = (act.to(compute_dtype) @ w2.T).float()
        out.index_add_(0, tokens, y * flat_weights[pairs, None])
    return out.to(x.dtype)


def fused_moe_fp8_block_ref(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """FP8 block-quantised MoE (W8A8, 128x128 weight blocks, 1x128 dynamic activation groups).

    Both the input tokens and the SiLU-gated intermediate (computed in fp32) are quantised per token
    group of 128 to fp8 and dequantised before their matmul, exactly as the kernel does.

    Args:
        x: [T, H] bf16 / fp16.
        w13: [E, 2I, H] float8_e4m3fn; w13_scale_inv: [E, ceil(2I/128), ceil(H/128)] fp32, blocked over
            the concatenated gate/up rows (row r uses block r // 128).
        w2: [E, H, I] float8_e4m3fn; w2_scale_inv: [E, ceil(H/128), ceil(I/128)] fp32.
        topk_weights: [T, k] fp32; topk_ids: [T, k] int32.
        compute_dtype: matmul dtype; fp32 is the reference, bf16 gives the dequantise-then-matmul baseline.

    Returns:
        [T, H] in x.dtype.
    """

    def weights(expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            dequant_fp8_block_ref(w13[expert], w13_scale_inv[expert]).to(compute_dtype),
            dequant_fp8_block_ref(w2[expert], w2_scale_inv[expert]).to(compute_dtype),
        )

    return _moe_forward(
        x, topk_weights, topk_ids, weights, _fake_quant_fp8_groups, _fake_quant_fp8_groups, compute_dtype
    )


def fused_moe_w4a16_ref(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """INT4 weight-only MoE on the compressed-tensors pack-quantized layout (symmetric, group-wise).

    The SiLU-gated intermediate is rounded to x.dtype between the two matmuls, as the kernel stores it.

    Args:
        x: [T, H] bf16 / fp16.
        w13_packed: [E, 2I, H/8] int32; w13_scale: [E, 2I, ceil(H/group_size)] bf16 / fp16.
        w2_packed: [E, H, I/8] int32; w2_scale: [E, H, ceil(I/group_size)] bf16 / fp16.
        topk_weights: [T, k] fp32; topk_ids: [T, k] int32.
        group_size: 64 or 128 (any positive size works here).
        compute_dtype: matmul dtype; fp32 is the reference, bf16 gives the dequantise-then-matmul baseline.

    Returns:
        [T, H] in x.dtype.
    """

    def weights(expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            dequant_int4_group_ref(w13_packed[expert], w13_scale[expert], group_size).to(compute_dtype),
            dequant_int4_group_ref(w2_packed[expert], w2_scale[expert], group_size).to(compute_dtype),
        )

    def round_to_input_dtype(a: torch.Tensor) -> torch.Tensor:
        return a.to(x.dtype).float()

    return _moe_forward(
        x, topk_weights, topk_ids, weights, torch.Tensor.float, round_to_input_dtype, compute_dtype
    )


def fused_moe_bf16_ref(
    x: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Unquantised MoE with matmuls in x.dtype (the BF16 baseline of the benchmarks).

    Args:
        x: [T, H]; w13: [E, 2I, H]; w2: [E, H, I], all in the same 16-bit dtype.
        topk_weights: [T, k] fp32; topk_ids: [T, k] int32.

    Returns:
        [T, H] in x.dtype.
    """

    def weights(expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        return w13[expert], w2[expert]

    def identity(a: torch.Tensor) -> torch.Tensor:
        return a

    return _moe_forward(x, topk_weights, topk_ids, weights, identity, identity, x.dtype)
