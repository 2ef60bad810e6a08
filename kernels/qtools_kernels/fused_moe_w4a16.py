"""Fused MoE with INT4 weight-only experts read straight from compressed-tensors `pack-quantized`.

Weights stay packed as stored (int32 [E, N, K/8], nibble j of word w is K index 8w + j, value q + 8,
symmetric, one scale per (row, group)); each K tile is unpacked in registers, its integer dot with the
16-bit activations is scaled per output channel. Pipeline: sort pairs by expert -> gate/up GEMM with
silu(gate) * up epilogue stored in x.dtype -> down GEMM scaled by the routing weight -> sum over slots.
Reference: `moe_reference.fused_moe_w4a16_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._device import grouped_tile_ids, int4_group_scaled_dot, silu_and_mul
from ._launch import KernelLaunch, check_device, is_interpreted
from .moe_align import plan_moe_align_block_size
from .moe_common import MoeBuffers, allocate_moe_buffers, check_routing, expert_strides, sum_over_slots
from .reference import cdiv
from .tuning import INT4_DTYPE_NAME, KernelConfig, get_moe_config


@triton.jit
def _fused_moe_w4a16_w13_kernel(
    a_ptr,  # (T, H) bf16 / fp16 tokens
    w_ptr,  # (E, 2I, H // 8) int32 packed, rows [0, I) gate_proj, [I, 2I) up_proj
    w_scale_ptr,  # (E, 2I, cdiv(H, GROUP_SIZE)) bf16 / fp16
    act_ptr,  # (T*k, I) bf16 / fp16 out
    sorted_ids_ptr,  # (EM,) int32
    expert_ids_ptr,  # (cdiv(EM, BLOCK_M),) int32
    num_post_pad_ptr,  # (1,) int32
    num_pairs,
    inter,
    hidden,
    num_blocks_m,
    stride_am,
    stride_ak,
    stride_we,
    stride_wn,
    stride_wk,
    stride_wse,
    stride_wsn,
    stride_wsk,
    stride_cm,
    stride_ck,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
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
    acc = int4_group_scaled_dot(
        a_ptr + tokens * stride_am,
        row_mask,
        w_ptr + expert * stride_we + w_row * stride_wn,
        w_scale_ptr + expert * stride_wse + w_row * stride_wsn,
        channel < inter,
        hidden,
        stride_ak,
        stride_wk,
        stride_wsk,
        BLOCK_M,
        2 * BLOCK_N,
        BLOCK_K,
        GROUP_SIZE,
        DOT_FP32,
    )
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N, 2)))
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    out_ptrs = act_ptr + pairs[:, None] * stride_cm + cols[None, :] * stride_ck
    act = silu_and_mul(gate, up).to(act_ptr.dtype.element_ty)
    tl.store(out_ptrs, act, mask=row_mask[:, None] & (cols < inter)[None, :])


@triton.jit
def _fused_moe_w4a16_w2_kernel(
    a_ptr,  # (T*k, I) bf16 / fp16 activations
    w_ptr,  # (E, H, I // 8) int32 packed
    w_scale_ptr,  # (E, H, cdiv(I, GROUP_SIZE)) bf16 / fp16
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
    GROUP_SIZE: tl.constexpr,
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
    acc = int4_group_scaled_dot(
        a_ptr + pairs * stride_am,
        row_mask,
        w_ptr + expert * stride_we + cols * stride_wn,
        w_scale_ptr + expert * stride_wse + cols * stride_wsn,
        col_mask,
        inter,
        stride_ak,
        stride_wk,
        stride_wsk,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        GROUP_SIZE,
        DOT_FP32,
    )
    acc *= tl.load(topk_weights_ptr + pairs, mask=row_mask, other=0.0)[:, None]
    # T*k*H can pass 2**31 at large batches: 64-bit row offsets.
    out_ptrs = out_ptr + pairs[:, None].to(tl.int64) * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def effective_block_k(config: KernelConfig, group_size: int) -> int:
    """BLOCK_SIZE_K clamped to the group size, so that one scale covers each K tile."""
    return min(config.block_k, group_size)


def plan_fused_moe_w4a16(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
    buffers: MoeBuffers,
    config: KernelConfig,
) -> list[KernelLaunch]:
    """Launch plans of the whole op except the final sum over slots (works on meta tensors)."""
    (t, h), (e, two_i, _) = x.shape, w13_packed.shape
    inter, top_k = two_i // 2, topk_ids.shape[1]
    block_k = effective_block_k(config, group_size)
    if group_size % block_k or block_k < 16:
        raise ValueError(f"BLOCK_SIZE_K={block_k} must be >= 16 and divide group_size={group_size}")
    b = buffers
    launches = plan_moe_align_block_size(
        topk_ids, e, config.block_m, b.sorted_ids, b.expert_ids, b.num_post_pad, b.run_info
    )
    num_blocks_m = cdiv(b.sorted_ids.numel(), config.block_m)
    routing = {
        "sorted_ids_ptr": b.sorted_ids,
        "expert_ids_ptr": b.expert_ids,
        "num_post_pad_ptr": b.num_post_pad,
    }
    tiles = {
        "BLOCK_M": config.block_m,
        "BLOCK_N": config.block_n,
        "BLOCK_K": block_k,
        "GROUP_M": config.group_m,
        "GROUP_SIZE": group_size,
        "DOT_FP32": is_interpreted(_fused_moe_w4a16_w13_kernel),
    }
    common = {"num_pairs": t * top_k, "num_blocks_m": num_blocks_m, **routing}
    launches.append(
        KernelLaunch(
            kernel=_fused_moe_w4a16_w13_kernel,
            grid=(num_blocks_m * cdiv(inter, config.block_n),),
            args={
                "a_ptr": x,
                "w_ptr": w13_packed,
                "w_scale_ptr": w13_scale,
                "act_ptr": b.act,
                "inter": inter,
                "hidden": h,
                **common,
                "stride_am": x.stride(0),
                "stride_ak": x.stride(1),
                **expert_strides("w", w13_packed),
                **expert_strides("ws", w13_scale),
                "stride_cm": b.act.stride(0),
                "stride_ck": b.act.stride(1),
            },
            constexprs={"TOP_K": top_k, **tiles},
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    )
    launches.append(
        KernelLaunch(
            kernel=_fused_moe_w4a16_w2_kernel,
            grid=(num_blocks_m * cdiv(h, config.block_n),),
            args={
                "a_ptr": b.act,
                "w_ptr": w2_packed,
                "w_scale_ptr": w2_scale,
                "topk_weights_ptr": topk_weights.reshape(-1),
                "out_ptr": b.out,
                "hidden": h,
                "inter": inter,
                **common,
                "stride_am": b.act.stride(0),
                "stride_ak": b.act.stride(1),
                **expert_strides("w", w2_packed),
                **expert_strides("ws", w2_scale),
                "stride_om": b.out.stride(0),
                "stride_on": b.out.stride(1),
            },
            constexprs=tiles,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
    )
    return launches


def _check_w4a16_args(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
) -> None:
    if x.dim() != 2 or x.dtype not in (torch.bfloat16, torch.float16):
        raise TypeError(f"x must be bf16 / fp16 [T, H], got {x.dtype} {tuple(x.shape)}")
    if w13_packed.dtype != torch.int32 or w2_packed.dtype != torch.int32:
        raise TypeError(f"packed weights must be int32, got {w13_packed.dtype} and {w2_packed.dtype}")
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 16 (64 or 128 in practice), got {group_size}")
    h = x.shape[1]
    if h % 8 or w13_packed.dim() != 3 or w13_packed.shape[2] * 8 != h or w13_packed.shape[1] % 2:
        raise ValueError(
            f"w13_packed must be [E, 2I, H/8] with H={h} a multiple of 8, got {tuple(w13_packed.shape)}"
        )
    e, inter = w13_packed.shape[0], w13_packed.shape[1] // 2
    if inter % 8 or tuple(w2_packed.shape) != (e, h, inter // 8):
        raise ValueError(f"w2_packed must be [E={e}, H={h}, I/8={inter // 8}], got {tuple(w2_packed.shape)}")
    for name, scale, rows, cols in (("w13", w13_scale, 2 * inter, h), ("w2", w2_scale, h, inter)):
        expected = (e, rows, cdiv(cols, group_size))
        if tuple(scale.shape) != expected or scale.dtype not in (
            torch.bfloat16,
            torch.float16,
            torch.float32,
        ):
            raise ValueError(
                f"{name}_scale must be bf16 / fp16 {list(expected)}, got {scale.dtype} {list(scale.shape)}"
            )
    check_routing(x, topk_weights, topk_ids)


def fused_moe_w4a16_with_config(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """`fused_moe_w4a16` with an explicit launch config (None: table lookup / default)."""
    args = (x, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids)
    _check_w4a16_args(*args, group_size)
    check_device(_fused_moe_w4a16_w13_kernel, *args)
    e, two_i = w13_packed.shape[:2]
    config = config or get_moe_config(INT4_DTYPE_NAME, e, two_i // 2, x.shape[0])
    buffers = allocate_moe_buffers(x, e, two_i // 2, topk_ids.shape[1], config.block_m, quantized_acts=False)
    for launch in plan_fused_moe_w4a16(
        x,
        w13_packed,
        w13_scale,
        w2_packed,
        w2_scale,
        topk_weights.contiguous(),
        topk_ids.contiguous(),
        group_size,
        buffers,
        config,
    ):
        launch.run()
    return sum_over_slots(buffers.out, topk_ids.shape[1], x.dtype)


@torch.library.custom_op("qtools_kernels::fused_moe_w4a16", mutates_args=())
def fused_moe_w4a16(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    """Fused MoE forward with INT4 (W4A16, symmetric, group-wise) experts in the pack-quantized layout.

    Args:
        x: [T, H] bf16 / fp16, H a multiple of 8.
        w13_packed: [E, 2I, H/8] int32 (`weight_packed` of gate_proj rows [0, I) and up_proj rows [I, 2I),
            concatenated); w13_scale: [E, 2I, ceil(H/group_size)] bf16 / fp16 (`weight_scale`).
        w2_packed: [E, H, I/8] int32; w2_scale: [E, H, ceil(I/group_size)] bf16 / fp16. I % 8 == 0;
            I need not be a multiple of the group size (partial last group).
        topk_weights: [T, k] fp32; topk_ids: [T, k] int32.
        group_size: quantisation group along K, 64 or 128 (any power of two >= 16).

    Returns:
        [T, H] x.dtype, sum_k topk_weights * down(silu(gate(x)) * up(x)) with weights (q - 8) * scale.
    """
    return fused_moe_w4a16_with_config(
        x, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, group_size
    )


@fused_moe_w4a16.register_fake
def _(
    x: torch.Tensor,
    w13_packed: torch.Tensor,
    w13_scale: torch.Tensor,
    w2_packed: torch.Tensor,
    w2_scale: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    group_size: int,
) -> torch.Tensor:
    _check_w4a16_args(x, w13_packed, w13_scale, w2_packed, w2_scale, topk_weights, topk_ids, group_size)
    return torch.empty_like(x)
