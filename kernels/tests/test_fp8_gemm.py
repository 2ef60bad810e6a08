"""Dense block-FP8 GEMM against an fp32 dequantise-then-matmul reference."""

from __future__ import annotations

import pytest
import torch
from cases import assert_matches_fp32_reference

from qtools_kernels import fp8_block_linear, per_token_group_quant_fp8
from qtools_kernels.fp8_gemm import fp8_block_matmul_with_config
from qtools_kernels.reference import fp8_block_linear_ref, fp8_block_matmul_ref, quantize_fp8_block_ref
from qtools_kernels.tuning import KernelConfig

# Kernel and reference see identical fp8 inputs and scales, so only the fp32 summation order and the
# final rounding differ: bf16 output is within 2**-8 relative (2**-7: the interpreter's fp32 -> bf16
# cast truncates), fp32 output within summation noise.
BF16_REL_L2, BF16_REL_MAX = 1e-2, 1e-2
FP32_REL_L2, FP32_REL_MAX = 1e-5, 1e-5


def _problem(m: int, n: int, k: int, device) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(m * n + k)
    x = (torch.randn(m, k, generator=gen) * 3).to(torch.bfloat16)
    w = torch.randn(n, k, generator=gen) / k**0.5
    w[:, :64] *= 5.0
    w_q, w_s = quantize_fp8_block_ref(w)
    x_q, x_s = per_token_group_quant_fp8(x.to(device))
    return x.to(device), x_q, x_s, w_q.to(device), w_s.to(device)


@pytest.mark.parametrize(
    "m, n, k, config",
    [
        pytest.param(1, 256, 256, KernelConfig(16, 64, 128, 1, 4, 2), id="M=1"),
        pytest.param(5, 160, 320, KernelConfig(16, 64, 64, 1, 4, 2), id="N and K tails, BLOCK_K=64"),
        pytest.param(33, 128, 128, KernelConfig(16, 32, 128, 2, 4, 2), id="3 row tiles, GROUP_M=2"),
    ],
)
def test_matches_reference(m: int, n: int, k: int, config: KernelConfig, device) -> None:
    _, x_q, x_s, w_q, w_s = _problem(m, n, k, device)
    out = fp8_block_matmul_with_config(x_q, x_s, w_q, w_s, torch.bfloat16, config)
    expected = fp8_block_matmul_ref(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), torch.float32)
    assert out.dtype == torch.bfloat16
    assert_matches_fp32_reference(out, expected, BF16_REL_L2, BF16_REL_MAX)


def test_fp32_output_is_tight(device) -> None:
    _, x_q, x_s, w_q, w_s = _problem(4, 128, 256, device)
    out = fp8_block_matmul_with_config(x_q, x_s, w_q, w_s, torch.float32, KernelConfig(16, 128, 128, 1, 4, 2))
    expected = fp8_block_matmul_ref(x_q.cpu(), x_s.cpu(), w_q.cpu(), w_s.cpu(), torch.float32)
    assert_matches_fp32_reference(out, expected, FP32_REL_L2, FP32_REL_MAX)


def test_linear_quantises_then_multiplies(device) -> None:
    x, _, _, w_q, w_s = _problem(3, 128, 192, device)
    out = fp8_block_linear(x, w_q, w_s)
    expected = fp8_block_linear_ref(x.cpu().float(), w_q.cpu(), w_s.cpu())
    assert out.dtype == x.dtype
    assert_matches_fp32_reference(out, expected, BF16_REL_L2, BF16_REL_MAX)


def test_rejects_bf16_scales(device) -> None:
    _, x_q, x_s, w_q, w_s = _problem(1, 128, 128, device)
    with pytest.raises(ValueError, match="fp32"):
        fp8_block_matmul_with_config(x_q, x_s, w_q, w_s.to(torch.bfloat16))
