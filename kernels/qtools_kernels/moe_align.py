"""Sort routed (token, slot) pairs by expert, each expert's run padded to a multiple of BLOCK_M.

Two launches: one program histograms the expert ids, turns the padded counts into run offsets and
fills everything past the padded total; then one program per expert scatters its pairs (ascending
flat index), pads its run with `numel` and writes its block -> expert entries.
Reference: `reference.moe_align_block_size_ref` (bit-exact).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._buffers import empty
from ._launch import KernelLaunch, check_device
from .reference import cdiv, moe_align_buffer_size

_CHUNK = 1024


@triton.jit
def _moe_align_count_kernel(
    topk_ids_ptr,  # (numel,) int32
    run_info_ptr,  # (2, E) int32 out: [0] pairs per expert, [1] start of each expert's padded run
    sorted_ids_ptr,  # (buffer_size,) int32 out: tail past the padded total
    expert_ids_ptr,  # (num_blocks,) int32 out: tail past the padded total
    num_post_pad_ptr,  # (1,) int32 out
    numel,
    num_experts,
    buffer_size,
    num_blocks,
    BLOCK_M: tl.constexpr,
    BLOCK_E: tl.constexpr,
    CHUNK: tl.constexpr,
):
    counts = tl.zeros((BLOCK_E,), dtype=tl.int32)
    for start in range(0, numel, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        valid = offs < numel
        ids = tl.load(topk_ids_ptr + offs, mask=valid, other=0)
        counts += tl.histogram(ids, BLOCK_E, mask=valid)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    starts = tl.cumsum(padded, axis=0) - padded
    total = tl.sum(padded, axis=0)
    experts = tl.arange(0, BLOCK_E)
    tl.store(run_info_ptr + experts, counts, mask=experts < num_experts)
    tl.store(run_info_ptr + num_experts + experts, starts, mask=experts < num_experts)
    tl.store(num_post_pad_ptr, total)
    for start in range(total, buffer_size, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(sorted_ids_ptr + offs, tl.full((CHUNK,), numel, tl.int32), mask=offs < buffer_size)
    for start in range(total // BLOCK_M, num_blocks, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        tl.store(expert_ids_ptr + offs, tl.full((CHUNK,), -1, tl.int32), mask=offs < num_blocks)


@triton.jit
def _moe_align_scatter_kernel(
    topk_ids_ptr,  # (numel,) int32
    run_info_ptr,  # (2, E) int32 from the count kernel
    sorted_ids_ptr,  # (buffer_size,) int32 out: this expert's padded run
    expert_ids_ptr,  # (num_blocks,) int32 out: this expert's blocks
    numel,
    num_experts,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
):
    expert = tl.program_id(0)
    count = tl.load(run_info_ptr + expert)
    start = tl.load(run_info_ptr + num_experts + expert)
    padded = (count + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    scan_end = tl.where(count > 0, numel, 0)
    seen = 0
    for chunk in range(0, scan_end, CHUNK):
        offs = chunk + tl.arange(0, CHUNK)
        ids = tl.load(topk_ids_ptr + offs, mask=offs < numel, other=-1)
        hit = ids == expert
        position = start + seen + tl.cumsum(hit.to(tl.int32), axis=0) - 1
        tl.store(sorted_ids_ptr + position, offs, mask=hit)
        seen += tl.sum(hit.to(tl.int32), axis=0)
    pad = start + count + tl.arange(0, BLOCK_M)
    tl.store(sorted_ids_ptr + pad, tl.full((BLOCK_M,), numel, tl.int32), mask=pad < start + padded)
    first_block = start // BLOCK_M
    last_block = (start + padded) // BLOCK_M
    for block in range(first_block, last_block, CHUNK):
        offs = block + tl.arange(0, CHUNK)
        tl.store(expert_ids_ptr + offs, tl.full((CHUNK,), expert, tl.int32), mask=offs < last_block)


def plan_moe_align_block_size(
    topk_ids: torch.Tensor,
    num_experts: int,
    block_m: int,
    sorted_ids: torch.Tensor,
    expert_ids: torch.Tensor,
    num_post_pad: torch.Tensor,
    run_info: torch.Tensor,
) -> list[KernelLaunch]:
    """Launch plans for the count and scatter kernels; `run_info` is [2, E] int32 scratch."""
    flat = topk_ids.reshape(-1)
    numel = flat.numel()
    count = KernelLaunch(
        kernel=_moe_align_count_kernel,
        grid=(1,),
        args={
            "topk_ids_ptr": flat,
            "run_info_ptr": run_info,
            "sorted_ids_ptr": sorted_ids,
            "expert_ids_ptr": expert_ids,
            "num_post_pad_ptr": num_post_pad,
            "numel": numel,
            "num_experts": num_experts,
            "buffer_size": sorted_ids.numel(),
            "num_blocks": expert_ids.numel(),
        },
        constexprs={"BLOCK_M": block_m, "BLOCK_E": triton.next_power_of_2(num_experts), "CHUNK": _CHUNK},
        num_warps=4,
        num_stages=1,
    )
    scatter = KernelLaunch(
        kernel=_moe_align_scatter_kernel,
        grid=(num_experts,),
        args={
            "topk_ids_ptr": flat,
            "run_info_ptr": run_info,
            "sorted_ids_ptr": sorted_ids,
            "expert_ids_ptr": expert_ids,
            "numel": numel,
            "num_experts": num_experts,
        },
        constexprs={"BLOCK_M": block_m, "CHUNK": _CHUNK},
        num_warps=4,
        num_stages=1,
    )
    return [count, scatter]


def _check_align_args(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> None:
    if topk_ids.dim() != 2 or topk_ids.dtype != torch.int32:
        raise TypeError(f"topk_ids must be int32 [T, k], got {topk_ids.dtype} {tuple(topk_ids.shape)}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be positive, got {num_experts}")
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")


def _output_sizes(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[int, int]:
    size = moe_align_buffer_size(topk_ids.numel(), num_experts, block_m)
    return size, cdiv(size, block_m)


def align_tokens_by_expert(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Python entry behind the custom op (also used inside the fused MoE ops)."""
    _check_align_args(topk_ids, num_experts, block_m)
    check_device(_moe_align_count_kernel, topk_ids)
    size, blocks = _output_sizes(topk_ids, num_experts, block_m)
    device = topk_ids.device
    sorted_ids = empty((size,), torch.int32, device)
    expert_ids = empty((blocks,), torch.int32, device)
    num_post_pad = empty((1,), torch.int32, device)
    run_info = empty((2, num_experts), torch.int32, device)
    flat = topk_ids.contiguous()
    for launch in plan_moe_align_block_size(
        flat, num_experts, block_m, sorted_ids, expert_ids, num_post_pad, run_info
    ):
        launch.run()
    return sorted_ids, expert_ids, num_post_pad


@torch.library.custom_op("qtools_kernels::moe_align_block_size", mutates_args=())
def moe_align_block_size(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group routed pairs by expert for the fused-MoE GEMMs (vLLM `moe_align_block_size` semantics).

    Args:
        topk_ids: [T, k] int32 expert ids in [0, num_experts) (not range-checked on device).
        num_experts: E.
        block_m: the GEMM's BLOCK_SIZE_M, a power of two >= 16.

    Returns:
        sorted_token_ids: [T*k + min(E, T*k) * (block_m - 1)] int32 flat pair indices t*k + j by expert,
            ascending within an expert, each run padded to a multiple of block_m with T*k, T*k after
            the last run.
        expert_ids: [ceil(len(sorted_token_ids) / block_m)] int32 expert of each block, -1 past the end.
        num_tokens_post_padded: [1] int32 padded total.
    """
    return align_tokens_by_expert(topk_ids, num_experts, block_m)


@moe_align_block_size.register_fake
def _(
    topk_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_align_args(topk_ids, num_experts, block_m)
    size, blocks = _output_sizes(topk_ids, num_experts, block_m)
    return (
        topk_ids.new_empty((size,), dtype=torch.int32),
        topk_ids.new_empty((blocks,), dtype=torch.int32),
        topk_ids.new_empty((1,), dtype=torch.int32),
    )
