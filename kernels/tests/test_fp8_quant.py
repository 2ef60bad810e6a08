"""per_token_group_quant_fp8 against the torch reference, bit for bit."""

from __future__ import annotations

import pytest
import torch

from qtools_kernels import per_token_group_quant_fp8
from qtools_kernels._buffers import empty
from qtools_kernels.fp8_quant import plan_per_token_group_quant_fp8
from qtools_kernels.reference import (
    FP8_DTYPE,
    FP8_ZERO_BLOCK_SCALE,
    per_token_group_quant_fp8_ref,
    quantize_fp8_block_ref,
)


def assert_bit_exact(x: torch.Tensor, group_size: int) -> None:
    q, scale = per_token_group_quant_fp8(x, group_size)
    q_ref, scale_ref = per_token_group_quant_fp8_ref(x.cpu(), group_size)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(scale.cpu(), scale_ref)


@pytest.mark.parametrize(
    "rows, cols, group_size, dtype",
    [
        pytest.param(1, 128, 128, torch.bfloat16, id="T=1 one group"),
        pytest.param(5, 320, 128, torch.bfloat16, id="K tail 320 = 128+128+64"),
        pytest.param(17, 256, 64, torch.float16, id="group 64, rows past one tile"),
        pytest.param(3, 200, 128, torch.float32, id="fp32 input, odd K"),
    ],
)
def test_random_values(rows: int, cols: int, group_size: int, dtype: torch.dtype, device) -> None:
    gen = torch.Generator().manual_seed(rows * cols)
    x = torch.randn(rows, cols, generator=gen) * torch.logspace(-3, 3, cols)
    assert_bit_exact(x.to(dtype).to(device), group_size)


def test_rounding_ties_and_binade_carries(device) -> None:
    # amax 448 gives scale 1, so these values are quantised as they are: 17 and 19 are ties on the
    # step-2 grid of [16, 32) (to even: 16, 20); 31 ties up into the next power of two (32), the case
    # the interpreter's own cast gets wrong; 0.0029296875 = 1.5 * 2**-9 ties between e4m3 subnormals.
    values = [448.0, 17.0, 19.0, 31.0, -31.0, 15.5, 0.0029296875, -0.0009765625, 240.0, 232.0]
    x = torch.zeros(2, 128)
    x[:, : len(values)] = torch.tensor(values)
    x[1] *= -1
    assert_bit_exact(x.to(device), 128)


def test_zero_and_tiny_groups_keep_finite_scales(device) -> None:
    x = torch.zeros(3, 256)
    x[1, 128:] = 1e-30
    x[2, :128] = -0.0
    x[2, 128:] = torch.linspace(-1, 1, 128)
    q, scale = per_token_group_quant_fp8(x.to(device), 128)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert torch.equal(scale[0].cpu(), torch.full((2,), 1e-10 / 448))
    assert (q[0].float() == 0).all()
    assert_bit_exact(x.to(device), 128)


def test_weight_blocks_zero_and_tiny_follow_the_block_rule() -> None:
    # Weights (unlike activations) have no amax floor: an all-zero block gets scale 1.0 and zero codes, a
    # block of tiny weights keeps amax / 448, so its maximum still maps to +-448. qtools' converter agrees.
    w = torch.ones(2, 130, 300)
    w[0, :128, :128] = 0
    w[1, 128:, 256:] = 1e-20
    q, scale = quantize_fp8_block_ref(w)
    assert scale.shape == (2, 2, 3) and scale[0, 0, 0] == FP8_ZERO_BLOCK_SCALE
    assert (q[0, :128, :128].float() == 0).all()
    assert scale[1, 1, 2] == torch.tensor(1e-20) / 448 and (q[1, 128:, 256:].float() == 448).all()


def test_poison_catches_unwritten_rows(device) -> None:
    x = torch.randn(40, 128).to(device)
    q = empty((40, 128), FP8_DTYPE, device)
    scale = empty((40, 1), torch.float32, device)
    launch = plan_per_token_group_quant_fp8(x, q, scale, 128)
    launch.grid = (1, 1)
    launch.run()
    assert torch.isnan(scale[16:]).all() and torch.isnan(q[16:].float()).all()
    assert torch.isfinite(scale[:16]).all()


def test_rejects_bad_input(device) -> None:
    with pytest.raises(ValueError, match="power of two"):
        per_token_group_quant_fp8(torch.zeros(2, 96, device=device), 96)
    with pytest.raises(TypeError, match="bf16, fp16 or fp32"):
        per_token_group_quant_fp8(torch.zeros(2, 128, dtype=torch.int32, device=device), 128)
