"""Pure-torch references for the quantisation, GEMM and routing kernels.

These define the semantics the Triton kernels must reproduce: tests compare against them (bit-exactly
for quantisation and routing metadata) and benchmarks use them as baselines. Nothing here imports
Triton, so a runtime without Triton or a GPU can call them directly.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_E4M3_MAX = 448.0
FP8_SCALE_EPS = 1e-10
"""Activation amax floor (vLLM's): an all-zero group gets scale 1e-10 / 448 (a normal fp32) and q = 0."""
FP8_ZERO_BLOCK_SCALE = 1.0
"""weight_scale_inv of an all-zero weight block: finite and positive; its codes (all 0) dequantise to 0."""
FP8_BLOCK = 128
INT4_OFFSET = 8
"""compressed-tensors stores each signed int4 value q in [-8, 7] as the nibble q + 8."""
INT4_MIN, INT4_MAX = -8, 7
INT4_SCALE_DIVISOR = (INT4_MAX - INT4_MIN) / 2
"""7.5: compressed-tensors' symmetric rule `scale = max(|min|, |max|) / ((q_max - q_min) / 2)`, so the group's
largest magnitude lands on +-7.5 and rounds to 7 (positive, after the clamp) or -8 (negative)."""


def int4_zero_group_scale(dtype: torch.dtype) -> float:
    """weight_scale of an all-zero group (or one whose scale underflows the scale dtype): the dtype's eps, as
    compressed-tensors writes (finite and positive; the group's codes are all 0 and dequantise to 0)."""
    return torch.finfo(dtype).eps


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _expand_blocks(scale: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """Repeat a per-block scale [..., nb, kb] to the element grid [..., N, K] (cropping partial blocks)."""
    rows, cols = shape
    full = scale.repeat_interleave(block[0], dim=-2).repeat_interleave(block[1], dim=-1)
    return full[..., :rows, :cols]


def fp8_block_scale(amax: torch.Tensor) -> torch.Tensor:
    """The FP8 weight block rule: fp32 amax(|block|) of any shape -> fp32 weight_scale_inv of that shape,
    `amax / 448`, or `FP8_ZERO_BLOCK_SCALE` for an all-zero block.

    The one definition of the rule: qtools' checkpoint converter (`qtools.numerics.fp8`) and
    `quantize_fp8_block_ref` (the kernels' test weights) both call it. Unlike activations, weights get no amax
    floor, so a block of tiny weights keeps the full e4m3 resolution.
    """
    return torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.full_like(amax, FP8_ZERO_BLOCK_SCALE))


def fp8_e4m3_codes(scaled: torch.Tensor) -> torch.Tensor:
    """fp32 values already divided by their scale -> float8_e4m3fn codes of the same shape: clamped to
    +-448 (the cast would turn larger values into NaN), then rounded to nearest even by the cast."""
    return scaled.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)


def per_token_group_quant_fp8_ref(
    x: torch.Tensor, group_size: int = FP8_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token-group FP8 quantisation.

    Args:
        x: [M, K] bf16 / fp16 / fp32 activations.
        group_size: elements per group along K; the last group may be partial (K % group_size != 0).

    Returns:
        q: [M, K] float8_e4m3fn, `clamp(x / scale, -448, 448)` rounded to nearest even.
        scale: [M, ceil(K / group_size)] fp32, `max(amax(|x_group|), 1e-10) / 448`.
    """
    m, k = x.shape
    groups = cdiv(k, group_size)
    xf = torch.zeros(m, groups * group_size, dtype=torch.float32, device=x.device)
    xf[:, :k] = x.float()
    xf = xf.view(m, groups, group_size)
    amax = xf.abs().amax(dim=-1)
    scale = amax.clamp_min(FP8_SCALE_EPS) / FP8_E4M3_MAX
    q = fp8_e4m3_codes(xf / scale[..., None])
    return q.view(m, groups * group_size)[:, :k].contiguous(), scale


def dequant_per_token_group_fp8_ref(
    q: torch.Tensor, scale: torch.Tensor, group_size: int = FP8_BLOCK
) -> torch.Tensor:
    """[M, K] fp8 and [M, ceil(K / group_size)] fp32 scales -> [M, K] fp32."""
    return q.float() * scale.repeat_interleave(group_size, dim=-1)[:, : q.shape[-1]]


def quantize_fp8_block_ref(w: torch.Tensor, block: int = FP8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise FP8 weight quantisation (test-weight generator, same rule as the checkpoints).

    Args:
        w: [..., N, K] float weights.

    Returns:
        q: [..., N, K] float8_e4m3fn.
        weight_scale_inv: [..., ceil(N / block), ceil(K / block)] fp32, `fp8_block_scale(amax)` (amax / 448,
            1.0 for an all-zero block); the dequantised weight is `q * weight_scale_inv` per block.
    """
    *lead, n, k = w.shape
    nb, kb = cdiv(n, block), cdiv(k, block)
    padded = torch.zeros(*lead, nb * block, kb * block, dtype=torch.float32, device=w.device)
    padded[..., :n, :k] = w.float()
    tiles = padded.view(*lead, nb, block, kb, block)
    scale = fp8_block_scale(tiles.abs().amax(dim=(-3, -1)))
    q = fp8_e4m3_codes(tiles / scale[..., :, None, :, None])
    q = q.view(*lead, nb * block, kb * block)[..., :n, :k].contiguous()
    return q, scale


def dequant_fp8_block_ref(q: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """[..., N, K] fp8 with [..., ceil(N/block), ceil(K/block)] scales -> [..., N, K] fp32."""
    return q.float() * _expand_blocks(scale_inv.float(), (block, block), tuple(q.shape[-2:]))


def fp8_block_matmul_ref(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """W8A8 block GEMM by dequantise-then-matmul in fp32.

    Args:
        x_q: [M, K] fp8 activations, x_scale: [M, ceil(K/128)] fp32 per-token-group scales.
        weight: [N, K] fp8, weight_scale_inv: [ceil(N/128), ceil(K/128)] fp32.

    Returns:
        [M, N] `out_dtype` = x @ weight.T.
    """
    a = dequant_per_token_group_fp8_ref(x_q, x_scale)
    b = dequant_fp8_block_ref(weight, weight_scale_inv)
    return (a @ b.T).to(out_dtype)


def fp8_block_linear_ref(
    x: torch.Tensor, weight: torch.Tensor, weight_scale_inv: torch.Tensor
) -> torch.Tensor:
    """[M, K] bf16/fp16 x, quantised per token group of 128, times the block-FP8 weight -> [M, N] x.dtype."""
    x_q, x_scale = per_token_group_quant_fp8_ref(x)
    return fp8_block_matmul_ref(x_q, x_scale, weight, weight_scale_inv, x.dtype)


def topk_softmax_ref(
    router_logits: torch.Tensor, top_k: int, renormalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE routing: softmax over experts, top-k, optional renormalisation (`norm_topk_prob`).

    Experts are selected on the fp32 logits (softmax is monotonic), highest first, ties broken towards
    the lower expert index, so the selection is exact on any hardware.

    Args:
        router_logits: [T, E] bf16 / fp16 / fp32, finite.

    Returns:
        topk_weights: [T, top_k] fp32, softmax probabilities of the chosen experts, divided by their sum
            when `renormalize`.
        topk_ids: [T, top_k] int32, in descending logit order.
    """
    logits = router_logits.float()
    ids = torch.sort(logits, dim=-1, descending=True, stable=True).indices[:, :top_k]
    row_max = logits.amax(dim=-1, keepdim=True)
    chosen = torch.exp(logits.gather(1, ids) - row_max)
    if renormalize:
        weights = chosen / chosen.sum(dim=-1, keepdim=True)
    else:
        weights = chosen / torch.exp(logits - row_max).sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def moe_align_buffer_size(numel: int, num_experts: int, block_m: int) -> int:
    """Length of `sorted_token_ids`: numel + min(E, numel) * (block_m - 1), which bounds the padded total
    (only experts that receive pairs add padding, at most block_m - 1 each)."""
    return numel + min(num_experts, numel) * (block_m - 1)


def moe_align_block_size_ref(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort (token, slot) pairs by expert, padding each expert's run to a multiple of `block_m`.

    Args:
        topk_ids: [T, k] int32 expert ids in [0, num_experts).

    Returns:
        sorted_token_ids: [moe_align_buffer_size(T*k, E, block_m)] int32 flat indices t*k + j, grouped by
            expert in ascending expert order and ascending flat index within an expert; padding slots
            (inside an expert's run and after the last run) hold T*k.
        expert_ids: [ceil(len(sorted_token_ids) / block_m)] int32, the expert of each block; blocks past
            `num_tokens_post_padded` hold -1.
        num_tokens_post_padded: [1] int32, the padded total (a multiple of block_m).
    """
    flat = topk_ids.flatten().long()
    numel = flat.numel()
    device = topk_ids.device
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    starts = torch.cumsum(padded, 0) - padded
    first = torch.cumsum(counts, 0) - counts
    order = torch.sort(flat, stable=True).indices
    experts_in_order = flat[order]
    rank = torch.arange(numel, device=device) - first[experts_in_order]
    size = moe_align_buffer_size(numel, num_experts, block_m)
    sorted_ids = torch.full((size,), numel, dtype=torch.int32, device=device)
    sorted_ids[starts[experts_in_order] + rank] = order.to(torch.int32)
    expert_ids = torch.full((cdiv(size, block_m),), -1, dtype=torch.int32, device=device)
    run = torch.repeat_interleave(torch.arange(num_experts, device=device), padded // block_m)
    expert_ids[: run.numel()] = run.to(torch.int32)
    total = padded.sum().to(torch.int32).reshape(1)
    return sorted_ids, expert_ids, total


def pack_int4_ref(q: torch.Tensor) -> torch.Tensor:
    """compressed-tensors pack-quantized packing.

    Args:
        q: [..., N, K] integer values in [-8, 7], K a multiple of 8.

    Returns:
        [..., N, K // 8] int32; value K-index 8*w + j sits in nibble j (bits 4j..4j+3, least significant
        first) of word w, stored as q + 8.
    """
    *lead, n, k = q.shape
    if k % 8:
        raise ValueError(f"K={k} must be a multiple of 8 to pack int4 values into int32")
    nibbles = (q.long() + INT4_OFFSET).view(*lead, n, k // 8, 8)
    shifts = torch.arange(0, 32, 4, device=q.device)
    words = (nibbles << shifts).sum(dim=-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def unpack_int4_ref(packed: torch.Tensor) -> torch.Tensor:
    """[..., N, K // 8] int32 -> [..., N, K] int8 signed values in [-8, 7]."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nibbles = (packed[..., None] >> shifts) & 0xF
    return (nibbles - INT4_OFFSET).to(torch.int8).flatten(-2)


def int4_group_scale(amax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The INT4 group rule: amax(|group|) of any shape -> weight_scale `dtype` of that shape, the fp32
    quotient `amax / 7.5` rounded to `dtype`, or `int4_zero_group_scale(dtype)` where that is 0 (all-zero
    group).

    The one definition of the rule: qtools' checkpoint converter (`qtools.numerics.int4`) and
    `quantize_int4_group_ref` (the kernels' test weights) both call it. Bit for bit compressed-tensors'
    `calculate_qparams` for symmetric int4 (its division in the weight dtype rounds the same fp32
    quotient), all-zero groups included.
    """
    scale = (amax.float() / INT4_SCALE_DIVISOR).to(dtype)
    return torch.where(scale > 0, scale, torch.full_like(scale, int4_zero_group_scale(dtype)))


def int4_codes(scaled: torch.Tensor) -> torch.Tensor:
    """fp32 values already divided by their scale -> int8 codes in [-8, 7] of the same shape: clamped, then
    rounded to nearest even (compressed-tensors' `round(clamp(x / scale, -8, 7))`)."""
    return torch.round(scaled.clamp(INT4_MIN, INT4_MAX)).to(torch.int8)


def quantize_int4_group_ref(
    w: torch.Tensor, group_size: int, scale_dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric group-wise round-to-nearest INT4 (test-weight generator, same rule as the checkpoints).

    Args:
        w: [..., N, K] float weights, K a multiple of 8 (the last group may be partial).

    Returns:
        weight_packed: [..., N, K // 8] int32 (see `pack_int4_ref`).
        weight_scale: [..., N, ceil(K / group_size)] `scale_dtype`, `int4_group_scale(amax)`; w ~ q * scale.
    """
    *lead, n, k = w.shape
    groups = cdiv(k, group_size)
    padded = torch.zeros(*lead, n, groups * group_size, dtype=torch.float32, device=w.device)
    padded[..., :k] = w.float()
    tiles = padded.view(*lead, n, groups, group_size)
    scale = int4_group_scale(tiles.abs().amax(dim=-1), scale_dtype)
    q = int4_codes(tiles / scale.float()[..., None])
    q = q.view(*lead, n, groups * group_size)[..., :k]
    return pack_int4_ref(q), scale


def dequant_int4_group_ref(packed: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """[..., N, K // 8] int32 and [..., N, ceil(K / group_size)] scales -> [..., N, K] fp32."""
    q = unpack_int4_ref(packed).float()
    return q * scale.float().repeat_interleave(group_size, dim=-1)[..., : q.shape[-1]]
