"""Per-token-group FP8 quantisation: each row's groups of 128 values -> e4m3 values + one fp32 scale.

One program quantises a (BLOCK_M rows x 1 group) tile: amax, scale = max(amax, 1e-10) / 448,
q = round(clamp(x / scale, +-448)). Reference: `reference.per_token_group_quant_fp8_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._buffers import empty
from ._device import quantize_fp8_rows
from ._launch import KernelLaunch, check_device, is_interpreted
from .reference import FP8_BLOCK, FP8_DTYPE, cdiv

_BLOCK_M = 16


@triton.jit
def _per_token_group_quant_fp8_kernel(
    x_ptr,  # (M, K) bf16 / fp16 / fp32
    q_ptr,  # (M, K) fp8 e4m3
    scale_ptr,  # (M, cdiv(K, GROUP_SIZE)) fp32
    M,
    K,
    stride_xm,
    stride_xk,
    stride_qm,
    stride_qk,
    stride_sm,
    stride_sg,
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    EMULATE_FP8_CAST: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    group = tl.program_id(1)
    cols = group * GROUP_SIZE + tl.arange(0, GROUP_SIZE)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :] * stride_xk, mask=mask, other=0.0)
    q, scale = quantize_fp8_rows(x.to(tl.float32), EMULATE_FP8_CAST)
    tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :] * stride_qk, q, mask=mask)
    tl.store(scale_ptr + rows * stride_sm + group * stride_sg, scale, mask=rows < M)


def plan_per_token_group_quant_fp8(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, group_size: int
) -> KernelLaunch:
    """Launch plan writing `q` [M, K] fp8 and `scale` [M, ceil(K / group_size)] fp32 from `x` [M, K]."""
    m, k = x.shape
    return KernelLaunch(
        kernel=_per_token_group_quant_fp8_kernel,
        grid=(cdiv(m, _BLOCK_M), cdiv(k, group_size)),
        args={
            "x_ptr": x,
            "q_ptr": q,
            "scale_ptr": scale,
            "M": m,
            "K": k,
            "stride_xm": x.stride(0),
            "stride_xk": x.stride(1),
            "stride_qm": q.stride(0),
            "stride_qk": q.stride(1),
            "stride_sm": scale.stride(0),
            "stride_sg": scale.stride(1),
        },
        constexprs={
            "GROUP_SIZE": group_size,
            "BLOCK_M": _BLOCK_M,
            "EMULATE_FP8_CAST": is_interpreted(_per_token_group_quant_fp8_kernel),
        },
        num_warps=4,
        num_stages=1,
    )


def _check_quant_args(x: torch.Tensor, group_size: int) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x must be bf16, fp16 or fp32, got {x.dtype}")
    if group_size < 16 or group_size & (group_size - 1):
        raise ValueError(f"group_size must be a power of two >= 16, got {group_size}")


def quantize_tokens_fp8(x: torch.Tensor, group_size: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Python entry behind the custom op (also used inside the other ops without a dispatcher hop)."""
    _check_quant_args(x, group_size)
    check_device(_per_token_group_quant_fp8_kernel, x)
    m, k = x.shape
    q = empty((m, k), FP8_DTYPE, x.device)
    scale = empty((m, cdiv(k, group_size)), torch.float32, x.device)
    plan_per_token_group_quant_fp8(x, q, scale, group_size).run()
    return q, scale


@torch.library.custom_op("qtools_kernels::per_token_group_quant_fp8", mutates_args=())
def per_token_group_quant_fp8(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token-group FP8 (e4m3) quantisation.

    Args:
        x: [M, K] bf16 / fp16 / fp32; K need not be a multiple of `group_size` (the last group is partial).
        group_size: power of two, 128 for the FP8 block checkpoints.

    Returns:
        q: [M, K] float8_e4m3fn; scale: [M, ceil(K / group_size)] fp32 with x ~ q * scale per group.
        An all-zero group gets scale 1e-10 / 448 and q = 0. Bit-exact with
        `reference.per_token_group_quant_fp8_ref`.
    """
    return quantize_tokens_fp8(x, group_size)


@per_token_group_quant_fp8.register_fake
def _(x: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    _check_quant_args(x, group_size)
    m, k = x.shape
    return x.new_empty((m, k), dtype=FP8_DTYPE), x.new_empty((m, cdiv(k, group_size)), dtype=torch.float32)
