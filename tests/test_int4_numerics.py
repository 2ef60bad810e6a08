"""INT4 W4A16 numerics (`qtools.numerics.int4`) against compressed-tensors, the format's own library.

- Packing: bit-exact with compressed-tensors' `pack_to_int32` / `unpack_from_int32`, and with golden words.
- Scales: bit-exact with its `calculate_qparams` (symmetric int4: max(|min|, |max|) / 7.5 in the weight dtype).
- Codes: compressed-tensors' CPU path divides in the weight dtype (bf16), rounding the quotient before it rounds
  to an integer; we divide in float32, as its GPU (Triton) path does. The two agree except where the bf16
  quotient lands exactly on a .5 its float32 value was not on (a double-rounding tie), and there ours is the
  nearer code; everything else is equal.
- Dequantisation: bit-exact with its `dequantize`.
"""

from __future__ import annotations

import pytest
import torch

from qtools.numerics.int4 import (
    NonFiniteWeightError,
    dequantize_int4_group,
    group_scales,
    pack_int4,
    quantize_int4_group,
    quantize_rows,
    unpack_int4,
)
from qtools_kernels.reference import quantize_int4_group_ref

ct_helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
ct_quant = pytest.importorskip("compressed_tensors.quantization")
ct_forward = pytest.importorskip("compressed_tensors.quantization.lifecycle.forward")
ct_utils = pytest.importorskip("compressed_tensors.quantization.utils")


def _args(group: int):
    return ct_quant.QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group)


def _weight(rows: int, cols: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, cols, generator=generator) * cols**-0.5
    values *= 1 + 3 * torch.rand(rows, 1, generator=generator) ** 4  # rows of different ranges
    return values.to(dtype)


def test_golden_words():
    """Nibble j of a word is K index 8w + j, least significant first, stored as q + 8."""
    q = torch.tensor([[-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7], [7, 0, 0, 0, 0, 0, 0, -8] * 2])
    words = pack_int4(q.to(torch.int8))
    assert words.dtype == torch.int32 and words.shape == (2, 2)
    assert words.tolist() == [[0x76543210, 0xFEDCBA98 - 2**32], [0x08888880 + 0xF, 0x08888880 + 0xF]]
    assert torch.equal(unpack_int4(words), q.to(torch.int8))


@pytest.mark.parametrize("shape", [(1, 8), (3, 256), (17, 40), (64, 1024)])
def test_packing_is_bit_exact_with_compressed_tensors(shape):
    q = torch.randint(-8, 8, shape, generator=torch.Generator().manual_seed(shape[1]), dtype=torch.int8)
    ours = pack_int4(q)
    assert torch.equal(ours, ct_helpers.pack_to_int32(q, 4))
    assert torch.equal(unpack_int4(ours), ct_helpers.unpack_from_int32(ours, 4, torch.Size(shape)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_scales_are_bit_exact_with_compressed_tensors(dtype, group):
    weight = _weight(48, 512, dtype, seed=group)
    ours = group_scales(weight, group)
    grouped = weight.view(48, 512 // group, group)
    theirs, zero_point = ct_utils.calculate_qparams(grouped.amin(-1), grouped.amax(-1), _args(group))
    assert ours.dtype == theirs.dtype == dtype and torch.equal(ours, theirs)
    assert not zero_point.any()


@pytest.mark.parametrize("group", [32, 128])
def test_codes_match_compressed_tensors_but_at_weight_dtype_division_ties(group):
    weight = _weight(64, 1024, torch.bfloat16, seed=7)
    scales = group_scales(weight, group)
    ours = quantize_rows(weight, scales, group)
    theirs = ct_forward.quantize(weight, scales, None, _args(group), dtype=torch.int8)
    expanded = scales.repeat_interleave(group, dim=1)
    quotient = weight / expanded  # bf16 / bf16, rounded to bf16, as compressed-tensors' CPU path computes it
    emulated = torch.round(quotient.float().clamp(-8, 7)).to(torch.int8)
    assert torch.equal(emulated, theirs), "compressed-tensors' codes are no longer round(bf16(w / scale))"
    differ = ours != theirs
    exact = weight.double() / expanded.double()
    at_tie = (quotient.float() - quotient.float().floor()) == 0.5
    assert (differ <= at_tie).all(), "every difference is a bf16 double-rounding tie"
    assert ((ours.double() - exact).abs() <= (theirs.double() - exact).abs()).all(), "ours is never further"
    print(f"\ngroup {group}: codes agree on {1 - differ.float().mean().item():.4f}, all differences at bf16 ties")
    assert differ.float().mean() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_dequantisation_is_bit_exact_with_compressed_tensors(dtype):
    """compressed-tensors multiplies in the scale dtype; our float32 product of a 16-bit scale is exact, so
    ours cast to the scale dtype is theirs bit for bit (and for float32 scales both are the float32 product)."""
    weight = _weight(32, 256, dtype, seed=3)
    packed, scales = quantize_int4_group(weight, 64)
    codes = ct_helpers.unpack_from_int32(packed, 4, torch.Size(weight.shape))
    theirs = ct_forward.dequantize(codes, scales, None, _args(64))
    assert theirs.dtype == dtype and torch.equal(dequantize_int4_group(packed, scales, 64, dtype), theirs)
    if dtype != torch.float32:
        exact = dequantize_int4_group(packed, scales, 64)
        assert torch.equal(exact, codes.double().mul(scales.double().repeat_interleave(64, 1)).float())


def test_round_to_nearest_error_is_half_a_step():
    weight = _weight(40, 384, torch.bfloat16, seed=5)
    packed, scales = quantize_int4_group(weight, 128)
    restored = dequantize_int4_group(packed, scales, 128)
    step = scales.float().repeat_interleave(128, dim=1)
    # Half a step, plus the group maximum's overshoot past 7.5 steps when its bf16 scale rounded down (2^-8 of it).
    assert ((restored - weight.float()).abs() <= step * (0.5 + 7.5 * 2.0**-8)).all()
    codes = unpack_int4(packed).view(40, 3, 128)
    assert (codes.abs().amax(-1) >= 7).all(), "each group's extreme lands at the end of the range"


def test_streamed_rows_equal_the_whole_tensor_and_the_kernels_reference():
    weight = _weight(300, 256, torch.bfloat16, seed=9)
    packed, scales = quantize_int4_group(weight, 64)
    parts = [quantize_rows(weight[i : i + 128], group_scales(weight[i : i + 128], 64), 64) for i in (0, 128, 256)]
    assert torch.equal(pack_int4(torch.cat(parts)), packed)
    ref_packed, ref_scales = quantize_int4_group_ref(weight, 64, torch.bfloat16)
    assert torch.equal(ref_packed, packed) and torch.equal(ref_scales, scales)


def test_all_zero_group_gets_a_finite_scale_and_zero_codes():
    weight = _weight(4, 256, torch.bfloat16)
    weight[1, 128:] = 0
    packed, scales = quantize_int4_group(weight, 128)
    assert scales[1, 1] == torch.finfo(torch.bfloat16).eps and (scales > 0).all()
    assert not unpack_int4(packed)[1, 128:].any()
    assert not dequantize_int4_group(packed, scales, 128)[1, 128:].any()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(value):
    weight = _weight(4, 256, torch.bfloat16)
    weight[2, 77] = value
    with pytest.raises(NonFiniteWeightError):
        quantize_int4_group(weight, 128)


def test_shapes_the_format_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="multiple of the group size 128"):
        quantize_int4_group(_weight(4, 200, torch.bfloat16), 128)
    with pytest.raises(ValueError, match="2-D floating-point"):
        quantize_int4_group(torch.zeros(4, 256, dtype=torch.int32), 128)
