"""Fused MoE with FP8 block-quantised experts (W8A8, 128x128 weight blocks, 1x128 activation groups).

Pipeline: quantise tokens per group of 128 -> sort pairs by expert -> gate/up GEMM whose epilogue
applies silu(gate) * up and quantises the result per group of 128 straight from fp32 -> down GEMM
scaled by the routing weight -> sum over the k slots. Reference: `moe_reference.fused_moe_fp8_block_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import FP8_BLOCK, fp8_block_scaled_dot, grouped_tile_ids, quantize_fp8_rows, silu_and_mul
from ._launch import KernelLaunch, check_device, is_interpreted
from .fp8_quant import plan_per_token_group_quant_fp8
from .moe_align import plan_moe_align_block_size
from .moe_common import MoeBuffers, allocate_moe_buffers, check_routing, expert_strides, sum_over_slots
from .reference import FP8_BLOCK as SCALE_BLOCK
from .reference import FP8_DTYPE, cdiv
from .tuning import FP8_DTYPE_NAME, KernelConfig, get_moe_config


@triton.jit
def _fused_moe_fp8_w13_kernel(
    a_ptr,  # (T, H) fp8 e4m3 tokens
    a_scale_ptr,  # (T, cdiv(H, 128)) fp32
    w_ptr,  # (E, 2I, H) fp8 e4m3, rows [0, I) gate_proj, [I, 2I) up_proj
    w_scale_ptr,  # (E, cdiv(2I, 128), cdiv(H, 128)) fp32, row r of w13 in block r // 128
    act_ptr,  # (T*k, I) fp8 e4m3 out
    act_scale_ptr,  # (T*k, cdiv(I, 128)) fp32 out
    sorted_ids_ptr,  # (EM,) int32
    expert_ids_ptr,  # (cdiv(EM, BLOCK_M),) int32
    num_post_pad_ptr,  # (1,) int32
    num_pairs,
    inter,
    hidden,
    num_blocks_m,
    stride_am,
    stride_ak,
    stride_asm,
    stride_ask,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_cm,
    stride_ck,
    stride_csm,
    stride_csk,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_FP32: tl.constexpr,
    EMULATE_FP8_CAST: tl.constexpr,
):
    # The output tile is one 128-wide activation group, so the epilogue can quantise it.
    BLOCK_N: tl.constexpr = FP8_BLOCK
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), num_blocks_m, tl.cdiv(inter, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_pad_ptr):
        return
    pairs = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_mask = pairs < num_pairs
    tokens = pairs // TOP_K
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    # Gate and up channels interleaved: tile column 2c is gate row c, 2c + 1 is up row I + c.
    lanes = tl.arange(0, 2 * BLOCK_N)
    channel = pid_n * BLOCK_N + lanes // 2
    w_row = channel + (lanes % 2) * inter
    acc = fp8_block_scaled_dot(
        a_ptr + tokens * stride_am,
        a_scale_ptr + tokens * stride_asm,
        row_mask,
        w_ptr + expert * stride_we + w_row * stride_wn,
        w_scale_ptr + expert * stride_wse + (w_row // FP8_BLOCK) * stride_wsn,
        channel < inter,
        hidden,
        stride_ak,
        stride_ask,
        stride_wk,
        stride_wsk,
        BLOCK_M,
        2 * BLOCK_N,
        BLOCK_K,
        DOT_FP32,
    )
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < inter
    act = tl.where(col_mask[None, :], silu_and_mul(gate, up), 0.0)
    q, scale = quantize_fp8_rows(act, EMULATE_FP8_CAST)
    out_ptrs = act_ptr + pairs[:, None] * stride_cm + cols[None, :] * stride_ck
    tl.store(out_ptrs, q, mask=row_mask[:, None] & col_mask[None, :])
    tl.store(act_scale_ptr + pairs * stride_csm + pid_n * stride_csk, scale, mask=row_mask)


@triton.jit
def _fused_moe_fp8_w2_kernel(
    a_ptr,  # (T*k, I) fp8 e4m3 activations
    a_scale_ptr,  # (T*k, cdiv(I, 128)) fp32
    w_ptr,  # (E, H, I) fp8 e4m3
    w_scale_ptr,  # (E, cdiv(H, 128), cdiv(I, 128)) fp32
    topk_weights_ptr,  # (T*k,) fp32
    out_ptr,  # (T*k, H) bf16 / fp16 out, already scaled by the routing weight
    sorted_ids_ptr,  # (EM,) int32
    expert_ids_ptr,  # (cdiv(EM, BLOCK_M),) int32
    num_post_pad_ptr,  # (1,) int32
    num_pairs,
    hidden,
    inter,
    num_blocks_m,
    stride_am,
    stride_ak,
    stride_asm,
    stride_ask,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_om,
    stride_on,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), num_blocks_m, tl.cdiv(hidden, BLOCK_N), GROUP_M)
    if pid_m * BLOCK_M >= tl.load(num_post_pad_ptr):
        return
    pairs = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_mask = pairs < num_pairs
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < hidden
    acc = fp8_block_scaled_dot(
        a_ptr + pairs * stride_am,
        a_scale_ptr + pairs * stride_asm,
        row_mask,
        w_ptr + expert * stride_we + cols * stride_wn,
        w_scale_ptr + expert * stride_wse + (cols // FP8_BLOCK) * stride_wsn,
        col_mask,
        inter,
        stride_ak,
        stride_ask,
        stride_wk,
        stride_wsk,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        DOT_FP32,
    )
    acc *= tl.load(topk_weights_ptr + pairs, mask=row_mask, other=0.0)[:, None]
    # T*k*H can pass 2**31 at large batches: 64-bit row offsets.
    out_ptrs = out_ptr + pairs[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def plan_fused_moe_fp8_block(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    buffers: MoeBuffers,
    config: KernelConfig,
) -> list[KernelLaunch]:
    """Launch plans of the whole op except the final sum over slots (works on meta tensors)."""
    (t, h), (e, two_i, _) = x.shape, w13.shape
    inter, top_k = two_i // 2, topk_ids.shape[1]
    if SCALE_BLOCK % config.block_k:
        raise ValueError(f"BLOCK_SIZE_K={config.block_k} must divide the 128-wide scale block")
    b = buffers
    launches = [plan_per_token_group_quant_fp8(x, b.x_q, b.x_scale, SCALE_BLOCK)]
    launches += plan_moe_align_block_size(
        topk_ids, e, config.block_m, b.sorted_ids, b.expert_ids, b.num_post_pad, b.run_info
    )
    num_blocks_m = cdiv(b.sorted_ids.numel(), config.block_m)
    routing = {
        "sorted_ids_ptr": b.sorted_ids,
        "expert_ids_ptr": b.expert_ids,
        "num_post_pad_ptr": b.num_post_pad,
    }
    interpreted = is_interpreted(_fused_moe_fp8_w13_kernel)
    tiles = {
        "BLOCK_M": config.block_m,
        "BLOCK_K": config.block_k,
        "GROUP_M": config.group_m,
        "DOT_FP32": interpreted,
    }
    launches.append(
        KernelLaunch(
            kernel=_fused_moe_fp8_w13_kernel,
            grid=(num_blocks_m * cdiv(inter, SCALE_BLOCK),),
            args={
                "a_ptr": b.x_q,
                "a_scale_ptr": b.x_scale,
                "w_ptr": w13,
                "w_scale_ptr": w13_scale_inv,
                "act_ptr": b.act,
                "act_scale_ptr": b.act_scale,
                **routing,
                "num_pairs": t * top_k,
                "inter": inter,
                "hidden": h,
                "num_blocks_m": num_blocks_m,
                "stride_am": b.x_q.stride(0),
                "stride_ak": b.x_q.stride(1),
                "stride_asm": b.x_scale.stride(0),
                "stride_ask": b.x_scale.stride(1),
                **expert_strides("w", w13),
                **expert_strides("ws", w13_scale_inv),
                "stride_cm": b.act.stride(0),
                "stride_ck": b.act.stride(1),
                "stride_csm": b.act_scale.stride(0),
                "stride_csk": b.act_scale.stride(1),
            },
            constexprs={"TOP_K": top_k, **tiles, "EMULATE_FP8_CAST": interpreted},
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    )
    launches.append(
        KernelLaunch(
            kernel=_fused_moe_fp8_w2_kernel,
            grid=(num_blocks_m * cdiv(h, config.block_n),),
            args={
                "a_ptr": b.act,
                "a_scale_ptr": b.act_scale,
                "w_ptr": w2,
                "w_scale_ptr": w2_scale_inv,
                "topk_weights_ptr": topk_weights.reshape(-1),
                "out_ptr": b.out,
                **routing,
                "num_pairs": t * top_k,
                "hidden": h,
                "inter": inter,
                "num_blocks_m": num_blocks_m,
                "stride_am": b.act.stride(0),
                "stride_ak": b.act.stride(1),
                "stride_asm": b.act_scale.stride(0),
                "stride_ask": b.act_scale.stride(1),
                **expert_strides("w", w2),
                **expert_strides("ws", w2_scale_inv),
                "stride_om": b.out.stride(0),
                "stride_on": b.out.stride(1),
            },
            constexprs={**tiles, "BLOCK_N": config.block_n},
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    )
    return launches


def _check_fp8_moe_args(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> None:
    if x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"x must be bf16 / fp16 [T, H], got {x.dtype} {tuple(x.shape)}")
    if w13.dtype != FP8_DTYPE or w2.dtype != FP8_DTYPE:
        raise TypeError(f"w13 and w2 must be float8_e4m3fn, got {w13.dtype} and {w2.dtype}")
    h = x.shape[1]
    if w13.dim() != 3 or w13.shape[2] != h or w13.shape[1] % 2:
        raise ValueError(f"w13 must be [E, 2I, H={h}], got {tuple(w13.shape)}")
    e, inter = w13.shape[0], w13.shape[1] // 2
    if tuple(w2.shape) != (e, h, inter):
        raise ValueError(f"w2 must be [E={e}, H={h}, I={inter}], got {tuple(w2.shape)}")
    for name, scale, rows, cols in (("w13", w13_scale_inv, 2 * inter, h), ("w2", w2_scale_inv, h, inter)):
        expected = (e, cdiv(rows, SCALE_BLOCK), cdiv(cols, SCALE_BLOCK))
        if tuple(scale.shape) != expected or scale.dtype != torch.float32:
            raise ValueError(
                f"{name}_scale_inv must be fp32 {list(expected)}, got {scale.dtype} {list(scale.shape)}"
                " (convert bf16 checkpoint scales with .float())"
            )
    check_routing(x, topk_weights, topk_ids)


def fused_moe_fp8_block_with_config(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """`fused_moe_fp8_block` with an explicit launch config (None: table lookup / default)."""
    _check_fp8_moe_args(x, w13, w13_scale_inv, w2, w2_scale_inv, topk_weights, topk_ids)
    check_device(_fused_moe_fp8_w13_kernel, x, w13, w13_scale_inv, w2, w2_scale_inv, topk_weights, topk_ids)
    e, two_i = w13.shape[:2]
    config = config or get_moe_config(FP8_DTYPE_NAME, e, two_i // 2, x.shape[0])
    buffers = allocate_moe_buffers(x, e, two_i // 2, topk_ids.shape[1], config.block_m, quantized_acts=True)
    for launch in plan_fused_moe_fp8_block(
        x,
        w13,
        w13_scale_inv,
        w2,
        w2_scale_inv,
        topk_weights.contiguous(),
        topk_ids.contiguous(),
        buffers,
        config,
    ):
        launch.run()
    return sum_over_slots(buffers.out, topk_ids.shape[1], x.dtype)


@torch.library.custom_op("qtools_kernels::fused_moe_fp8_block", mutates_args=())
def fused_moe_fp8_block(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    """Fused MoE forward with FP8 block-quantised experts.

    Args:
        x: [T, H] bf16 / fp16.
        w13: [E, 2I, H] float8_e4m3fn, rows [0, I) gate_proj and [I, 2I) up_proj.
        w13_scale_inv: [E, ceil(2I/128), ceil(H/128)] fp32, blocked over the concatenated 2I rows (row r
            uses block r // 128; with I = 320 one block spans the gate/up boundary).
        w2: [E, H, I] float8_e4m3fn; w2_scale_inv: [E, ceil(H/128), ceil(I/128)] fp32 (partial last
            K block when I % 128 != 0).
        topk_weights: [T, k] fp32; topk_ids: [T, k] int32.

    Returns:
        [T, H] x.dtype, sum_k topk_weights * down(silu(gate(x)) * up(x)) with x and the intermediate
        quantised per token group of 128 (e4m3, scale amax / 448).
    """
    return fused_moe_fp8_block_with_config(x, w13, w13_scale_inv, w2, w2_scale_inv, topk_weights, topk_ids)


@fused_moe_fp8_block.register_fake
def _(
    x: torch.Tensor,
    w13: torch.Tensor,
    w13_scale_inv: torch.Tensor,
    w2: torch.Tensor,
    w2_scale_inv: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
) -> torch.Tensor:
    _check_fp8_moe_args(x, w13, w13_scale_inv, w2, w2_scale_inv, topk_weights, topk_ids)
    return torch.empty_like(x)
