"""torch.library registration: schemas and fake (meta) implementations agree with the real ops."""

from __future__ import annotations

import pytest
import torch
from cases import MoeCase, fp8_expert_weights, int4_expert_weights, make_routing, make_tokens

import qtools_kernels  # noqa: F401  (registers torch.ops.qtools_kernels.*)
from qtools_kernels.reference import quantize_fp8_block_ref

FAST_CHECKS = ("test_schema", "test_faketensor")


def _small_inputs(device) -> dict[str, tuple]:
    case = MoeCase("opcheck", 3, 128, 128, 3, 2)
    x = make_tokens(case, torch.bfloat16, device)
    topk_weights, topk_ids = make_routing(case, device)
    w_q, w_s = (t.to(device) for t in quantize_fp8_block_ref(torch.randn(64, 128)))
    x_q, x_s = torch.ops.qtools_kernels.per_token_group_quant_fp8(x, 128)
    return {
        "per_token_group_quant_fp8": (x, 128),
        "fp8_block_matmul": (x_q, x_s, w_q, w_s, torch.bfloat16),
        "topk_softmax": (torch.randn(3, 6, device=device), 2, True),
        "moe_align_block_size": (topk_ids, 3, 16),
        "fused_moe_fp8_block": (x, *fp8_expert_weights(case, device), topk_weights, topk_ids),
        "fused_moe_w4a16": (
            x,
            *int4_expert_weights(case, 64, torch.bfloat16, device),
            topk_weights,
            topk_ids,
            64,
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "per_token_group_quant_fp8",
        "fp8_block_matmul",
        "topk_softmax",
        "moe_align_block_size",
        "fused_moe_fp8_block",
        "fused_moe_w4a16",
    ],
)
def test_opcheck(name: str, device) -> None:
    op = getattr(torch.ops.qtools_kernels, name)
    args = _small_inputs(device)[name]
    checks = FAST_CHECKS
    if device.type == "cpu" and any(getattr(a, "dtype", None) == torch.float8_e4m3fn for a in args):
        # test_schema perturbs the inputs arithmetically, which torch does not implement for fp8 on CPU.
        checks = ("test_faketensor",)
    torch.library.opcheck(op, args, test_utils=checks)


def test_fake_shapes_without_running_kernels() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(4096, 6144, dtype=torch.bfloat16)
        ids = torch.empty(4096, 8, dtype=torch.int32)
        w13 = torch.empty(160, 640, 6144, dtype=torch.float8_e4m3fn)
        w13_s = torch.empty(160, 5, 48)
        w2 = torch.empty(160, 6144, 320, dtype=torch.float8_e4m3fn)
        w2_s = torch.empty(160, 48, 3)
        out = torch.ops.qtools_kernels.fused_moe_fp8_block(x, w13, w13_s, w2, w2_s, torch.empty(4096, 8), ids)
        sorted_ids, expert_ids, total = torch.ops.qtools_kernels.moe_align_block_size(ids, 160, 64)
    assert tuple(out.shape) == (4096, 6144) and out.dtype == torch.bfloat16
    assert sorted_ids.shape[0] == 4096 * 8 + 160 * 63 and expert_ids.shape[0] == -(-sorted_ids.shape[0] // 64)
    assert tuple(total.shape) == (1,)
