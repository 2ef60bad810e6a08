"""Dense W8A8 block-FP8 GEMM for the attention projections: out = x_q @ weight.T with scales.

Activations carry one fp32 scale per (token, 128 columns), weights one per 128x128 block
(`weight_scale_inv` [ceil(N/128), ceil(K/128)]); each K tile's fp8 dot is scaled by both and
accumulated in fp32. Reference: `reference.fp8_block_matmul_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._buffers import empty
from ._device import FP8_BLOCK, fp8_block_scaled_dot, grouped_tile_ids
from ._launch import KernelLaunch, check_device, is_interpreted
from .fp8_quant import per_token_group_quant_fp8
from .reference import FP8_BLOCK as SCALE_BLOCK
from .reference import FP8_DTYPE, cdiv
from .tuning import KernelConfig, get_gemm_config

_OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@triton.jit
def _fp8_block_matmul_kernel(
    a_ptr,  # (M, K) fp8 e4m3
    a_scale_ptr,  # (M, cdiv(K, 128)) fp32
    w_ptr,  # (N, K) fp8 e4m3
    w_scale_ptr,  # (cdiv(N, 128), cdiv(K, 128)) fp32
    out_ptr,  # (M, N) bf16 / fp16 / fp32
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_asm,
    stride_ask,
    stride_wn,
    stride_wk,
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
    pid_m, pid_n = grouped_tile_ids(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    acc = fp8_block_scaled_dot(
        a_ptr + rows * stride_am,
        a_scale_ptr + rows * stride_asm,
        row_mask,
        w_ptr + cols * stride_wn,
        w_scale_ptr + (cols // FP8_BLOCK) * stride_wsn,
        col_mask,
        K,
        stride_ak,
        stride_ask,
        stride_wk,
        stride_wsk,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        DOT_FP32,
    )
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def plan_fp8_block_matmul(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out: torch.Tensor,
    config: KernelConfig,
) -> KernelLaunch:
    """Launch plan for `out` [M, N] = x_q [M, K] @ weight [N, K].T with block scales."""
    m, k = x_q.shape
    n = weight.shape[0]
    if SCALE_BLOCK % config.block_k:
        raise ValueError(f"BLOCK_SIZE_K={config.block_k} must divide the 128-wide scale block")
    return KernelLaunch(
        kernel=_fp8_block_matmul_kernel,
        grid=(cdiv(m, config.block_m) * cdiv(n, config.block_n),),
        args={
            "a_ptr": x_q,
            "a_scale_ptr": x_scale,
            "w_ptr": weight,
            "w_scale_ptr": weight_scale_inv,
            "out_ptr": out,
            "M": m,
            "N": n,
            "K": k,
            "stride_am": x_q.stride(0),
            "stride_ak": x_q.stride(1),
            "stride_asm": x_scale.stride(0),
            "stride_ask": x_scale.stride(1),
            "stride_wn": weight.stride(0),
            "stride_wk": weight.stride(1),
            "stride_wsn": weight_scale_inv.stride(0),
            "stride_wsk": weight_scale_inv.stride(1),
            "stride_om": out.stride(0),
            "stride_on": out.stride(1),
        },
        constexprs={
            "BLOCK_M": config.block_m,
            "BLOCK_N": config.block_n,
            "BLOCK_K": config.block_k,
            "GROUP_M": config.group_m,
            "DOT_FP32": is_interpreted(_fp8_block_matmul_kernel),
        },
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def _check_matmul_args(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype,
) -> None:
    if x_q.dim() != 2 or weight.dim() != 2 or x_q.shape[1] != weight.shape[1]:
        raise ValueError(
            f"need x_q [M, K] and weight [N, K], got {tuple(x_q.shape)} and {tuple(weight.shape)}"
        )
    if x_q.dtype != FP8_DTYPE or weight.dtype != FP8_DTYPE:
        raise TypeError(f"x_q and weight must be float8_e4m3fn, got {x_q.dtype} and {weight.dtype}")
    (m, k), n = x_q.shape, weight.shape[0]
    if tuple(x_scale.shape) != (m, cdiv(k, 128)) or x_scale.dtype != torch.float32:
        raise ValueError(
            f"x_scale must be fp32 [{m}, {cdiv(k, 128)}], got {x_scale.dtype} {tuple(x_scale.shape)}"
        )
    expected = (cdiv(n, 128), cdiv(k, 128))
    if tuple(weight_scale_inv.shape) != expected or weight_scale_inv.dtype != torch.float32:
        raise ValueError(
            f"weight_scale_inv must be fp32 {list(expected)}, got {weight_scale_inv.dtype} "
            f"{list(weight_scale_inv.shape)} (convert bf16 checkpoint scales with .float())"
        )
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype}")


def fp8_block_matmul_with_config(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    config: KernelConfig | None = None,
) -> torch.Tensor:
    """`fp8_block_matmul` with an explicit launch config (None: table lookup / default)."""
    _check_matmul_args(x_q, x_scale, weight, weight_scale_inv, out_dtype)
    check_device(_fp8_block_matmul_kernel, x_q, x_scale, weight, weight_scale_inv)
    (m, k), n = x_q.shape, weight.shape[0]
    config = config or get_gemm_config(n, k, m)
    out = empty((m, n), out_dtype, x_q.device)
    plan_fp8_block_matmul(x_q, x_scale, weight, weight_scale_inv, out, config).run()
    return out


@torch.library.custom_op("qtools_kernels::fp8_block_matmul", mutates_args=())
def fp8_block_matmul(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """W8A8 block-FP8 GEMM.

    Args:
        x_q: [M, K] float8_e4m3fn; x_scale: [M, ceil(K/128)] fp32 (from `per_token_group_quant_fp8`).
        weight: [N, K] float8_e4m3fn; weight_scale_inv: [ceil(N/128), ceil(K/128)] fp32.
        out_dtype: bf16 (default), fp16 or fp32.

    Returns:
        [M, N] `out_dtype`; matches `reference.fp8_block_matmul_ref` up to fp32 summation order.
    """
    return fp8_block_matmul_with_config(x_q, x_scale, weight, weight_scale_inv, out_dtype)


@fp8_block_matmul.register_fake
def _(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    _check_matmul_args(x_q, x_scale, weight, weight_scale_inv, out_dtype)
    return x_q.new_empty((x_q.shape[0], weight.shape[0]), dtype=out_dtype)


def fp8_block_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor) -> torch.Tensor:
    """A block-FP8 linear layer: quantise x [M, K] (bf16 / fp16) per token group of 128, then
    `fp8_block_matmul` with weight [N, K] fp8 and weight_scale_inv [ceil(N/128), ceil(K/128)] fp32.
    Returns [M, N] in x.dtype (reference: `reference.fp8_block_linear_ref`)."""
    x_q, x_scale = per_token_group_quant_fp8(x)
    return fp8_block_matmul(x_q, x_scale, weight, weight_scale_inv, x.dtype)
