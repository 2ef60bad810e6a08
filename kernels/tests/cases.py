"""Builders for small MoE problems and the shared comparison used by the GEMM tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtools_kernels import reference as ref
from qtools_kernels.tuning import KernelConfig


@dataclass(frozen=True)
class MoeCase:
    """One labelled fused-MoE problem. `routing`: "random", "one_expert" (every pair on expert 0),
    "sparse" (only experts 0 and E-1 used) or "all" (top_k == E)."""

    label: str
    tokens: int
    hidden: int
    inter: int
    experts: int
    top_k: int
    routing: str = "random"
    block_m: int = 16
    block_n: int = 128
    block_k: int = 128
    group_m: int = 1

    @property
    def config(self) -> KernelConfig:
        return KernelConfig(self.block_m, self.block_n, self.block_k, self.group_m, num_warps=4, num_stages=2)


def make_routing(case: MoeCase, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_weights [T, k] fp32 (rows sum to 1) and topk_ids [T, k] int32 with distinct ids per row."""
    gen = torch.Generator().manual_seed(seed)
    t, e, k = case.tokens, case.experts, case.top_k
    if case.routing == "one_expert":
        if k != 1:
            raise ValueError("one_expert routing needs top_k == 1")
        ids = torch.zeros(t, 1, dtype=torch.int32)
    elif case.routing == "sparse":
        if k != 2:
            raise ValueError("sparse routing needs top_k == 2")
        ids = torch.tensor([[0, e - 1], [e - 1, 0]], dtype=torch.int32).repeat(t, 1)[:t]
    else:
        ids = torch.argsort(torch.rand(t, e, generator=gen), dim=1)[:, :k].to(torch.int32)
    weights = torch.rand(t, k, generator=gen) + 0.1
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(device), ids.to(device)


def make_expert_weights(case: MoeCase, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 w13 [E, 2I, H] and w2 [E, H, I] scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    w13 = torch.randn(case.experts, 2 * case.inter, case.hidden, generator=gen) / case.hidden**0.5
    w2 = torch.randn(case.experts, case.hidden, case.inter, generator=gen) / case.inter**0.5
    # Uneven block magnitudes so a wrong scale index changes the result.
    w13[:, : case.inter] *= 3.0
    w2[:, :, -8:] *= 4.0
    return w13, w2


def make_tokens(case: MoeCase, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(case.tokens, case.hidden, generator=gen) * 2.0).to(dtype).to(device)


def fp8_expert_weights(case: MoeCase, device: torch.device) -> tuple[torch.Tensor, ...]:
    w13, w2 = make_expert_weights(case)
    w13_q, w13_s = ref.quantize_fp8_block_ref(w13)
    w2_q, w2_s = ref.quantize_fp8_block_ref(w2)
    return tuple(t.to(device) for t in (w13_q, w13_s, w2_q, w2_s))


def int4_expert_weights(
    case: MoeCase, group_size: int, scale_dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, ...]:
    w13, w2 = make_expert_weights(case)
    w13_p, w13_s = ref.quantize_int4_group_ref(w13, group_size, scale_dtype)
    w2_p, w2_s = ref.quantize_int4_group_ref(w2, group_size, scale_dtype)
    return tuple(t.to(device) for t in (w13_p, w13_s, w2_p, w2_s))


def assert_matches_fp32_reference(
    out: torch.Tensor, expected: torch.Tensor, rel_l2: float, rel_max: float
) -> None:
    """out vs an fp32 dequantise-then-matmul reference: relative L2 error below `rel_l2` and every
    element within `rel_max * max|expected|` (NaN, i.e. an unwritten element, always fails)."""
    out, expected = out.float().cpu(), expected.float().cpu()
    assert out.shape == expected.shape
    assert torch.isfinite(out).all(), "output has NaN/inf: some element was never written"
    scale = expected.abs().max().clamp_min(1e-6)
    error = (out - expected).norm() / expected.norm().clamp_min(1e-6)
    assert error < rel_l2, f"relative L2 error {error:.2e} >= {rel_l2:.0e}"
    worst = (out - expected).abs().max() / scale
    assert worst < rel_max, f"max error {worst:.2e} of max|ref| >= {rel_max:.0e}"
