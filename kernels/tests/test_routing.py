"""topk_softmax and moe_align_block_size against the torch references (metadata bit-exact)."""

from __future__ import annotations

import pytest
import torch

from qtools_kernels import moe_align_block_size, topk_softmax
from qtools_kernels.reference import moe_align_block_size_ref, topk_softmax_ref

# Weights are softmax ratios computed with a different exp and summation order than torch's.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-7


@pytest.mark.parametrize(
    "tokens, experts, top_k, renormalize, dtype",
    [
        pytest.param(1, 160, 8, True, torch.bfloat16, id="T=1, 480B router (E=160, top-8)"),
        pytest.param(37, 10, 3, False, torch.float32, id="no renormalisation, rows past one tile"),
        pytest.param(6, 5, 5, True, torch.float16, id="top-k = E, prime E"),
    ],
)
def test_topk_softmax(tokens: int, experts: int, top_k: int, renormalize: bool, dtype, device) -> None:
    gen = torch.Generator().manual_seed(tokens + experts)
    logits = (torch.randn(tokens, experts, generator=gen) * 2).to(dtype)
    weights, ids = topk_softmax(logits.to(device), top_k, renormalize)
    weights_ref, ids_ref = topk_softmax_ref(logits, top_k, renormalize)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids.cpu(), ids_ref)
    torch.testing.assert_close(weights.cpu(), weights_ref, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)


def test_topk_ties_pick_lower_expert(device) -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0, -1.0]])
    weights, ids = topk_softmax(logits.to(device), 2, True)
    assert ids.cpu().tolist() == [[1, 2]]
    torch.testing.assert_close(weights.cpu(), torch.tensor([[0.5, 0.5]]))


def _ids(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32)


ALIGN_CASES = [
    pytest.param(
        torch.randint(0, 160, (1, 8), generator=torch.Generator().manual_seed(1)).int(),
        160,
        16,
        id="T=1 E=160",
    ),
    pytest.param(_ids([[0, 3], [3, 1], [1, 0], [0, 2], [2, 3]]), 4, 16, id="T below BLOCK_M"),
    pytest.param(torch.zeros(40, 1, dtype=torch.int32), 6, 16, id="all tokens on one expert, 3 blocks"),
    pytest.param(_ids([[5, 2], [2, 5], [5, 2]]), 7, 32, id="experts with no tokens"),
    pytest.param(torch.arange(3, dtype=torch.int32).repeat(4, 1), 3, 16, id="top-k = E"),
    pytest.param(
        torch.argsort(torch.rand(300, 9, generator=torch.Generator().manual_seed(2)), 1)[:, :4].int(),
        9,
        64,
        id="numel 1200 > one scan chunk, BLOCK_M=64",
    ),
]


@pytest.mark.parametrize("topk_ids, experts, block_m", ALIGN_CASES)
def test_moe_align_block_size(topk_ids: torch.Tensor, experts: int, block_m: int, device) -> None:
    sorted_ids, expert_ids, total = moe_align_block_size(topk_ids.to(device), experts, block_m)
    sorted_ref, expert_ref, total_ref = moe_align_block_size_ref(topk_ids, experts, block_m)
    assert torch.equal(total.cpu(), total_ref)
    assert torch.equal(sorted_ids.cpu(), sorted_ref)
    assert torch.equal(expert_ids.cpu(), expert_ref)
    numel = topk_ids.numel()
    assert sorted_ids.numel() == numel + min(experts, numel) * (block_m - 1)
    real = sorted_ref[sorted_ref < numel]
    assert torch.equal(real.sort().values, torch.arange(numel, dtype=torch.int32))


def test_moe_align_reference_layout() -> None:
    sorted_ids, expert_ids, total = moe_align_block_size_ref(_ids([[1, 0], [1, 2]]), 3, 16)
    pad = 4
    assert total.tolist() == [48]
    assert sorted_ids[:16].tolist() == [1] + [pad] * 15
    assert sorted_ids[16:32].tolist() == [0, 2] + [pad] * 14
    assert sorted_ids[32:48].tolist() == [3] + [pad] * 15
    assert (sorted_ids[48:] == pad).all()
    assert expert_ids.tolist() == [0, 1, 2, -1]
