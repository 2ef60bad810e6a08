"""FP8 block quantisation against a brute-force block-by-block reference and e4m3 rounding bounds."""

from __future__ import annotations

import math

import pytest
import torch

from qtools.numerics.fp8 import (
    FP8_DTYPE,
    NonFiniteWeightError,
    block_scales_reference,
    dequantize_fp8_block,
    quantize_fp8_block,
    scale_shape,
)

SHAPES = {
    "aligned": (256, 384),
    "odd rows and columns": (300, 200),
    "smaller than one block": (7, 5),
    "one column tail": (128, 129),
    "single row": (1, 260),
}


def reference_quantize(weight: torch.Tensor, block=(128, 128)):
    """Block by block, the definition written out: scale = amax/448 (1.0 if zero), q = clamp(w / scale)."""
    n_out, n_in = scale_shape(weight.shape, block)
    scales = torch.empty(n_out, n_in)
    codes = torch.empty(weight.shape)
    for i in range(n_out):
        for j in range(n_in):
            rows, cols = slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1])
            tile = weight[rows, cols].float()
            amax = tile.abs().max()
            scale = amax / 448 if amax > 0 else torch.tensor(1.0)
            scales[i, j] = scale
            codes[rows, cols] = (tile / scale).clamp(-448, 448)
    return codes.to(FP8_DTYPE), scales


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_matches_blockwise_reference_bit_exactly(shape, dtype):
    weight = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.02).to(dtype)
    original = weight.clone()
    codes, scales = quantize_fp8_block(weight)
    assert torch.equal(weight, original), "quantisation must not modify its input"
    ref_codes, ref_scales = reference_quantize(weight)
    assert scales.dtype == torch.float32 and scales.shape == scale_shape(shape)
    assert torch.equal(scales, ref_scales)
    assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8))
    assert torch.equal(block_scales_reference(weight), ref_scales)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_dequantised_within_e4m3_rounding_bounds(shape):
    weight = (torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 0.05).bfloat16()
    codes, scales = quantize_fp8_block(weight)
    restored = dequantize_fp8_block(codes, scales)
    expanded = scales.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]]
    exact = weight.float()
    # e4m3 has 3 mantissa bits: round-to-nearest is within 2^-4 relative for normal codes (|q| >= 2^-6) and
    # within half the subnormal step 2^-9 (in code units) below that.
    bound = torch.maximum(exact.abs() * 2.0**-4, expanded * 2.0**-10)
    assert ((restored - exact).abs() <= bound * (1 + 1e-6)).all()
    # The block maximum is representable exactly (it maps to +-448).
    assert (codes.float().abs().amax() == 448) or shape == (0, 0)


def test_zero_block_has_finite_scale_and_dequantises_to_zero():
    weight = torch.randn(256, 256).bfloat16()
    weight[:128, 128:] = 0
    codes, scales = quantize_fp8_block(weight)
    assert scales[0, 1] == 1.0 and torch.isfinite(scales).all() and (scales > 0).all()
    assert (dequantize_fp8_block(codes, scales)[:128, 128:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("bad", [math.nan, -math.nan, math.inf, -math.inf])
def test_non_finite_weight_is_an_error(bad, dtype):
    weight = torch.randn(300, 200).to(dtype)
    weight[299, 199] = bad
    with pytest.raises(NonFiniteWeightError):
        quantize_fp8_block(weight)


@pytest.mark.parametrize("weight", [torch.ones(4, 4, 4), torch.ones(4, 4, dtype=torch.int32)], ids=["3-D", "int"])
def test_rejects_non_matrix_or_integer(weight):
    with pytest.raises(ValueError):
        quantize_fp8_block(weight)


def test_same_block_rule_as_the_kernels_reference():
    """qtools' converter and the kernels' reference (which quantises the kernels' test weights) are one rule, bit
    for bit, on the edge cases too: an all-zero block, a block below the old 1e-10 amax floor, partial blocks."""
    from qtools_kernels.reference import quantize_fp8_block_ref

    weight = (torch.randn(300, 200, generator=torch.Generator().manual_seed(3)) * 0.02).bfloat16()
    weight[:128, 128:] = 0
    weight[128:256, :128] *= 1e-10
    codes, scales = quantize_fp8_block(weight)
    ref_codes, ref_scales = quantize_fp8_block_ref(weight)
    assert torch.equal(scales, ref_scales)
    assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8))
