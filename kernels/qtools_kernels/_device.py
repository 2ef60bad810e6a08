"""`@triton.jit` device functions shared by the op kernels: tile ordering, FP8 rounding and group
quantisation, and the two scaled K loops (FP8 block-scaled, INT4 group-scaled)."""

from __future__ import annotations

import triton
import triton.language as tl

FP8_E4M3_MAX = tl.constexpr(448.0)
FP8_SCALE_EPS = tl.constexpr(1e-10)
FP8_BLOCK = tl.constexpr(128)


@triton.jit
def grouped_tile_ids(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Map a linear program id to (pid_m, pid_n), walking GROUP_M row tiles per column sweep so that
    neighbouring programs share activation rows in L2."""
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    rows_in_group = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows_in_group
    pid_n = (pid % width) // rows_in_group
    return pid_m, pid_n


@triton.jit
def round_to_e4m3_grid(v):
    """Round fp32 values in [-448, 448] to the nearest e4m3 value (ties to even), still as fp32.

    The Triton interpreter's fp32 -> fp8 cast drops the carry when rounding crosses a power of two
    (31.1 becomes 16), but it converts exactly representable values correctly; so the interpreter path
    rounds here first. Adding and subtracting 1.5 * 2**(e + 20) rounds to a multiple of the e4m3 step
    2**(e - 3) (e = the value's exponent, floored at -6 where e4m3 turns subnormal).
    """
    magnitude = tl.abs(v)
    exponent = (magnitude.to(tl.int32, bitcast=True) >> 23) - 127
    exponent = tl.maximum(exponent, -6)
    magic = (((exponent + 147) << 23) | 0x400000).to(tl.float32, bitcast=True)
    rounded = (magnitude + magic) - magic
    return tl.where(v.to(tl.int32, bitcast=True) < 0, -rounded, rounded)


@triton.jit
def quantize_fp8_rows(x, EMULATE_FP8_CAST: tl.constexpr):
    """Quantise each row of an fp32 tile (one quantisation group, padding already zero) to e4m3.

    Returns (q, scale): q has x's shape in float8e4nv, scale [rows] fp32 = max(amax, 1e-10) / 448.
    Divisions are round-to-nearest so results match the torch reference bit for bit.
    """
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.math.div_rn(tl.maximum(amax, FP8_SCALE_EPS), FP8_E4M3_MAX)
    y = tl.math.div_rn(x, scale[:, None])
    y = tl.clamp(y, -FP8_E4M3_MAX, FP8_E4M3_MAX)
    if EMULATE_FP8_CAST:
        y = round_to_e4m3_grid(y)
    return y.to(tl.float8e4nv), scale


@triton.jit
def silu_and_mul(gate, up):
    """silu(gate) * up in fp32."""
    return gate / (1.0 + tl.exp(-gate)) * up


@triton.jit
def fp8_block_scaled_dot(
    a_rows,  # (BLOCK_M,) pointers to activation rows, fp8 e4m3
    a_scale_rows,  # (BLOCK_M,) pointers to each row's per-group scales, fp32
    row_mask,  # (BLOCK_M,)
    w_cols,  # (BLOCK_N,) pointers to weight rows (one per output channel), fp8 e4m3
    w_scale_cols,  # (BLOCK_N,) pointers to each output channel's row of 128x128 block scales, fp32
    col_mask,  # (BLOCK_N,)
    K,
    stride_ak,
    stride_ask,
    stride_wk,
    stride_wsk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """sum_k a[m, k] * w[n, k] with per-(row, 128-group) activation scales and per-128x128 weight
    block scales, applied to each K tile's partial product (BLOCK_K divides 128). Returns fp32
    (BLOCK_M, BLOCK_N). DOT_FP32 widens operands first (the interpreter's low-precision dot is wrong)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_rows[:, None] + offs_k[None, :] * stride_ak
    w_ptrs = w_cols[None, :] + offs_k[:, None] * stride_wk
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        group = k0 // FP8_BLOCK
        a_scale = tl.load(a_scale_rows + group * stride_ask, mask=row_mask, other=0.0)
        w_scale = tl.load(w_scale_cols + group * stride_wsk, mask=col_mask, other=0.0)
        if DOT_FP32:
            part = tl.dot(a.to(tl.float32), w.to(tl.float32))
        else:
            part = tl.dot(a, w)
        acc += part * a_scale[:, None] * w_scale[None, :]
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += BLOCK_K * stride_wk
    return acc


@triton.jit
def int4_group_scaled_dot(
    a_rows,  # (BLOCK_M,) pointers to activation rows, bf16 / fp16
    row_mask,  # (BLOCK_M,)
    w_cols,  # (BLOCK_N,) pointers to packed weight rows, int32 words of 8 nibbles along K
    w_scale_cols,  # (BLOCK_N,) pointers to each output channel's group scales, bf16 / fp16
    col_mask,  # (BLOCK_N,)
    K,
    stride_ak,
    stride_wk,
    stride_wsk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr,
):
    """sum_k a[m, k] * (q[n, k] - 8) * scale[n, k // GROUP_SIZE] on the compressed-tensors
    pack-quantized layout (K index 8*w + j in nibble j of word w). BLOCK_K divides GROUP_SIZE, so one
    scale per output channel applies to each K tile's integer partial product. Returns fp32
    (BLOCK_M, BLOCK_N)."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    shifts = tl.arange(0, 8) * 4
    offs_k = tl.arange(0, BLOCK_K)
    offs_word = tl.arange(0, BLOCK_K // 8)
    a_ptrs = a_rows[:, None] + offs_k[None, :] * stride_ak
    w_ptrs = w_cols[None, :] + offs_word[:, None] * stride_wk
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=row_mask[:, None] & (offs_k < K - k0)[None, :], other=0.0)
        words = tl.load(w_ptrs, mask=(offs_word < (K - k0) // 8)[:, None] & col_mask[None, :], other=0)
        nibbles = (words[:, None, :] >> shifts[None, :, None]) & 0xF
        w = tl.reshape(nibbles, (BLOCK_K, BLOCK_N)) - 8
        scale = tl.load(w_scale_cols + (k0 // GROUP_SIZE) * stride_wsk, mask=col_mask, other=0.0)
        if DOT_FP32:
            part = tl.dot(a.to(tl.float32), w.to(tl.float32))
        else:
            part = tl.dot(a, w.to(a.dtype))
        acc += part * scale.to(tl.float32)[None, :]
        a_ptrs += BLOCK_K * stride_ak
        w_ptrs += (BLOCK_K // 8) * stride_wk
    return acc
