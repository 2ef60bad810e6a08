"""The compiled per-value loops (`qtools.numerics.native`) on their own: the float32 -> e4m3 rounding on every
non-negative float32, strided row slabs, both SIMD forms, and the refusals of bad arguments. The fast paths that
call them are compared with their references in test_fast_paths.py."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from qtools.numerics import native
from qtools.numerics.finite import abs_max
from qtools.numerics.fp8 import block_row_scales, quantize_block_row
from qtools.numerics.int4 import group_scales, pack_int4, quantize_rows

pytestmark = pytest.mark.skipif(not native.built(), reason="qtools.numerics._native is not built")
FORMS = ["scalar", "avx2"]


@pytest.fixture(params=FORMS)
def form(request):
    if request.param == "avx2" and "avx2" not in _available_forms():
        pytest.skip("this CPU has no AVX2")
    before = native.simd()
    native.set_simd(request.param)
    yield request.param
    native.set_simd(before)


def _available_forms() -> set[str]:
    before = native.simd()
    try:
        native.set_simd("avx2")
        return {"scalar", "avx2"}
    except ValueError:
        return {"scalar"}
    finally:
        native.set_simd(before)


def _reference_e4m3(values: torch.Tensor) -> torch.Tensor:
    return values.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)


@pytest.mark.skipif(sys.platform != "linux" or shutil.which("cc") is None, reason="needs a C compiler")
def test_the_extension_is_built_where_a_compiler_is():
    # Without it the converter silently takes its slower torch path: a broken build must fail here instead.
    assert native.built()


def test_e4m3_rounding_on_every_non_negative_float32():
    """Every bit pattern from +0 to +Inf, 2^31 - 2^23 of them, in the form this CPU takes by default; the sign
    only sets the top bit, checked on a sample of negatives."""
    chunk = 1 << 24
    bits = torch.empty(chunk, dtype=torch.int32)
    end = 0x7F800001  # +Inf included; NaN patterns follow it
    for first in range(0, end, chunk):
        part = bits[: min(chunk, end - first)]
        torch.arange(first, first + part.numel(), dtype=torch.int32, out=part)
        values = part.view(torch.float32)
        mismatch = native.e4m3_codes(values) != _reference_e4m3(values)
        assert not mismatch.any(), f"first mismatch at float bits {int(part[mismatch.nonzero()[0, 0]]):#010x}"
    sample = torch.randint(0, end, (1 << 20,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    negatives = -sample.view(torch.float32)
    assert torch.equal(native.e4m3_codes(negatives), _reference_e4m3(negatives))


def test_e4m3_rounding_edges_in_both_forms(form):
    """Each e4m3 boundary and tie, 2 ulps either side, and the clamp: in the form under test."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    points = torch.cat([codes, (codes[1:] + codes[:-1]) / 2, torch.tensor([448.0, 464.0, 480.0, 1e30, 2.0**-10])])
    bits = points.view(torch.int32)[:, None] + torch.arange(-2, 3, dtype=torch.int32)
    values = bits.clamp_min(0).flatten().view(torch.float32)
    values = torch.cat([values, -values, torch.tensor([float("inf"), -float("inf")])]).contiguous()
    assert torch.equal(native.e4m3_codes(values), _reference_e4m3(values))
    odd = values[:37].contiguous()  # a length that leaves a scalar tail after the 32-value steps
    assert torch.equal(native.e4m3_codes(odd), _reference_e4m3(odd))


def _strided_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A slab of rows that is a column slice of a wider weight: row stride > width, as a memory-mapped weight's
    column block would be."""
    wide = (torch.randn(rows, cols + 96, generator=torch.Generator().manual_seed(seed)) * 0.02).bfloat16()
    specials = torch.tensor([0.0, -0.0, 1e-38, -3e-39]).bfloat16()
    wide.view(-1)[40 : 40 + specials.numel()] = specials  # inside the slice below for every shape
    return wide[:, 32 : 32 + cols]


@pytest.mark.parametrize("shape", [(128, 6144), (37, 300), (1, 130), (5, 31)])
def test_fp8_codes_on_strided_rows(form, shape):
    rows = _strided_rows(*shape, seed=shape[1])
    scales = block_row_scales(rows)
    out = torch.empty(shape, dtype=torch.uint8)
    native.fp8_codes(rows, 128, scales, out)
    assert torch.equal(out, quantize_block_row(rows, scales).view(torch.uint8))


@pytest.mark.parametrize(("shape", "group"), [((64, 6144), 128), ((3, 96), 32), ((2, 48), 16), ((4, 24), 8)])
def test_int4_pack_on_strided_rows(form, shape, group):
    rows = _strided_rows(*shape, seed=group)
    scales = group_scales(rows, group)
    out = torch.empty(shape[0], shape[1] // 2, dtype=torch.uint8)
    native.int4_pack(rows, group, scales.float().contiguous(), out)
    assert torch.equal(out.view(torch.int32), pack_int4(quantize_rows(rows, scales, group)))


@pytest.mark.parametrize("over_rows", [True, False])
def test_abs_max_bits_match_the_torch_reduction(over_rows):
    rows = _strided_rows(40, 512, seed=3)
    rows[7, 300] = float("inf")
    rows[9, 10] = float("nan")
    rows[11, 140] = -float("inf")
    grouped = rows.reshape(40, 4, 128)
    dims = (0, 2) if over_rows else (2,)
    expected = grouped.float().abs().amax(dim=dims)
    got = abs_max(grouped, dims)  # takes the compiled reduction for this layout
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    out = torch.empty(4 if over_rows else (40, 4), dtype=torch.int16)
    bits = native.abs_max_bits(rows, 128, over_rows, out)
    assert torch.equal(bits.view(torch.bfloat16).float().view(torch.int32), got.view(torch.int32))


def test_bad_arguments_are_refused_before_any_pointer_is_touched():
    rows = torch.zeros(4, 256, dtype=torch.bfloat16)
    out = torch.empty(4, 256, dtype=torch.uint8)
    divisors = torch.ones(2)
    with pytest.raises(ValueError, match="bfloat16"):
        native.fp8_codes(rows.float(), 128, divisors, out)
    with pytest.raises(ValueError, match="contiguous columns"):
        native.fp8_codes(rows.t(), 128, divisors, out)
    with pytest.raises(ValueError, match="divisors"):
        native.fp8_codes(rows, 128, torch.ones(3), out)
    with pytest.raises(ValueError, match="bytes"):
        native.fp8_codes(rows, 128, divisors, out[:, :100])
    with pytest.raises(ValueError, match="even group"):
        native.int4_pack(rows, 7, torch.ones(4, 36), torch.empty(4, 128, dtype=torch.uint8))
    with pytest.raises(ValueError, match="group"):
        native.abs_max_bits(rows, 100, True, torch.empty(2, dtype=torch.int16))
    with pytest.raises(ValueError, match="no SIMD form"):
        native.set_simd("neon")


def test_disabled_means_not_usable(monkeypatch):
    rows = torch.zeros(2, 128, dtype=torch.bfloat16)
    assert native.usable(rows)
    monkeypatch.setattr(native, "ENABLED", False)
    assert not native.usable(rows)
