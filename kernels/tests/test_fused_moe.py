"""fused_moe_fp8_block and fused_moe_w4a16 against the fp32 dequantise-then-matmul references."""

from __future__ import annotations

import pytest
import torch
from cases import (
    MoeCase,
    assert_matches_fp32_reference,
    fp8_expert_weights,
    int4_expert_weights,
    make_routing,
    make_tokens,
)

from qtools_kernels import fused_moe_fp8_block, fused_moe_w4a16
from qtools_kernels.fused_moe_fp8 import fused_moe_fp8_block_with_config
from qtools_kernels.fused_moe_w4a16 import fused_moe_w4a16_with_config
from qtools_kernels.moe_reference import fused_moe_fp8_block_ref, fused_moe_w4a16_ref

# FP8: kernel and reference quantise the same tokens bit-identically; differences come from storing
# each pair's output in bf16 (2**-8 relative, 2**-7 where the interpreter truncates) and from the
# intermediate's fp32 summation order, which occasionally moves an fp8 rounding by one step.
FP8_REL_L2, FP8_REL_MAX = 1e-2, 2e-2
# INT4: weights dequantise exactly; the intermediate and each pair's output are rounded to bf16/fp16.
INT4_REL_L2, INT4_REL_MAX = 1e-2, 2e-2

FP8_CASES = [
    MoeCase("T=1", tokens=1, hidden=256, inter=128, experts=4, top_k=2),
    MoeCase("T below BLOCK_M, I=192: w13 scale block spans gate/up", 5, 256, 192, 4, 2, block_k=64),
    MoeCase("I=160: partial K block in w2, odd H=192", 3, 192, 160, 5, 2),
    MoeCase("experts with no tokens", 4, 128, 128, 6, 2, routing="sparse"),
    MoeCase("all tokens on one expert, 2 blocks", 20, 128, 128, 3, 1, routing="one_expert"),
    MoeCase("top-k = E", 4, 128, 128, 3, 3),
    MoeCase(
        "BLOCK_M=32, GROUP_M=2, several blocks per expert",
        40,
        128,
        128,
        4,
        2,
        block_m=32,
        group_m=2,
        block_n=64,
    ),
]

INT4_CASES = [
    (MoeCase("T=1", 1, 256, 128, 4, 2, block_n=64), 128),
    (MoeCase("T below BLOCK_M, I=192", 5, 256, 192, 4, 2, block_n=64), 64),
    (MoeCase("I=160: partial last group", 3, 256, 160, 5, 2, block_n=64), 128),
    (MoeCase("experts with no tokens", 4, 128, 128, 6, 2, routing="sparse", block_k=64), 64),
    (MoeCase("all tokens on one expert, 2 blocks", 20, 128, 64, 3, 1, routing="one_expert", block_n=32), 128),
    (MoeCase("top-k = E, BLOCK_K clamped to group 64", 4, 128, 128, 3, 3, block_n=64), 64),
]


@pytest.mark.parametrize("case", FP8_CASES, ids=lambda c: c.label)
def test_fused_moe_fp8_block(case: MoeCase, device) -> None:
    x = make_tokens(case, torch.bfloat16, device)
    w13, w13_s, w2, w2_s = fp8_expert_weights(case, device)
    topk_weights, topk_ids = make_routing(case, device)
    out = fused_moe_fp8_block_with_config(x, w13, w13_s, w2, w2_s, topk_weights, topk_ids, case.config)
    cpu = [t.cpu() for t in (x, w13, w13_s, w2, w2_s, topk_weights, topk_ids)]
    expected = fused_moe_fp8_block_ref(cpu[0].float(), *cpu[1:])
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_matches_fp32_reference(out, expected, FP8_REL_L2, FP8_REL_MAX)


@pytest.mark.parametrize("case, group_size", INT4_CASES, ids=lambda c: getattr(c, "label", None))
def test_fused_moe_w4a16(case: MoeCase, group_size: int, device) -> None:
    dtype = torch.float16 if case.top_k == case.experts else torch.bfloat16
    x = make_tokens(case, dtype, device)
    weights = int4_expert_weights(case, group_size, dtype, device)
    topk_weights, topk_ids = make_routing(case, device)
    out = fused_moe_w4a16_with_config(x, *weights, topk_weights, topk_ids, group_size, case.config)
    cpu = [t.cpu() for t in (x, *weights, topk_weights, topk_ids)]
    expected = fused_moe_w4a16_ref(*cpu, group_size)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert_matches_fp32_reference(out, expected, INT4_REL_L2, INT4_REL_MAX)


def test_custom_ops_pick_default_configs(device) -> None:
    case = MoeCase("default config", 2, 128, 128, 3, 2)
    x = make_tokens(case, torch.bfloat16, device)
    topk_weights, topk_ids = make_routing(case, device)
    fp8 = fp8_expert_weights(case, device)
    out = torch.ops.qtools_kernels.fused_moe_fp8_block(x, *fp8, topk_weights, topk_ids)
    cpu = [t.cpu() for t in (x, *fp8, topk_weights, topk_ids)]
    assert_matches_fp32_reference(out, fused_moe_fp8_block_ref(*cpu), FP8_REL_L2, FP8_REL_MAX)
    int4 = int4_expert_weights(case, 128, torch.bfloat16, device)
    out = fused_moe_w4a16(x, *int4, topk_weights, topk_ids, 128)
    cpu = [t.cpu() for t in (x, *int4, topk_weights, topk_ids)]
    assert_matches_fp32_reference(out, fused_moe_w4a16_ref(*cpu, 128), INT4_REL_L2, INT4_REL_MAX)


def test_rejects_mismatched_shapes(device) -> None:
    case = MoeCase("bad", 2, 128, 128, 3, 2)
    x = make_tokens(case, torch.bfloat16, device)
    w13, w13_s, w2, w2_s = fp8_expert_weights(case, device)
    topk_weights, topk_ids = make_routing(case, device)
    with pytest.raises(ValueError, match="w2 must be"):
        fused_moe_fp8_block(x, w13, w13_s, w2[:, :, :64], w2_s, topk_weights, topk_ids)
    with pytest.raises(TypeError, match="topk_ids must be int32"):
        fused_moe_fp8_block(x, w13, w13_s, w2, w2_s, topk_weights, topk_ids.long())
