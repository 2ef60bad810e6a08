"""The converter's fast paths against the pure-torch references beside them, bit for bit, on labelled edge
cases: FP8 block rows (`quantize_block_row_fast` vs `block_row_scales` + `quantize_block_row`) and INT4 RTN rows
(`quantize_int4_rows_fast` vs `group_scales` + `quantize_rows` + `pack_int4`).

Every test runs once per way the fast paths can compute on this machine: the compiled loops in their AVX2 and
scalar forms (`qtools.numerics.native`, BF16 rows) and the torch code they replace."""

from __future__ import annotations

import pytest
import torch

from qtools.numerics import fp8_fast, int4_fast, native
from qtools.numerics.fp8 import FP8_DTYPE, NonFiniteWeightError, block_row_scales, quantize_block_row
from qtools.numerics.fp8_fast import clamp_is_identity, quantize_block_row_fast
from qtools.numerics.int4 import group_scales, pack_int4, quantize_rows
from qtools.numerics.int4_fast import quantize_int4_rows_fast
from qtools.numerics.workspace import Workspace


def _forms() -> list:
    forms = []
    if native.built():
        forms += ["scalar"] + (["avx2"] if native.simd() == "avx2" else [])
    return forms + ["torch"]


@pytest.fixture(autouse=True, params=_forms())
def compute(request, monkeypatch):
    """The way the fast paths compute in this test: a form of the compiled loops, or torch."""
    if request.param == "torch":
        monkeypatch.setattr(native, "ENABLED", False)
        yield request.param
        return
    before = native.simd()
    native.set_simd(request.param)
    try:
        yield request.param
    finally:
        native.set_simd(before)


def _gaussian(shape, dtype, seed=0, std=0.02):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std).to(dtype)


def _fp8_edge_rows(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """[<=128, in] rows, each case in its own blocks."""
    cases = {
        "gaussian, 480B expert width": _gaussian((128, 2560), dtype),
        "partial row block, column tail": _gaussian((37, 300), dtype, seed=1),
        "single row": _gaussian((1, 260), dtype, seed=2),
    }
    zeros = _gaussian((128, 512), dtype, seed=3)
    zeros[:, :128] = 0.0  # an all-zero block: scale 1.0, codes 0
    zeros[:, 128:256] = -0.0  # an all-negative-zero block: codes keep the sign (0x80)
    zeros[5, 300] = -0.0
    cases["zero and negative-zero blocks"] = zeros
    # One 448 per block pins the scale to exactly 1.0, so every other value is cast as it is: every finite
    # value of the dtype in [-448, 448] (ties between e4m3 neighbours, e4m3 subnormals, values that round to 0).
    if dtype != torch.float32:
        bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
        values = bits[torch.isfinite(bits) & (bits.abs() <= 448)]
    else:
        values = torch.linspace(-448, 448, 20001)
    values = torch.cat([values, torch.zeros(-values.numel() % 127, dtype=dtype)])
    grid = values.view(-1, 127)
    grid = torch.cat([torch.full((grid.shape[0], 1), 448.0, dtype=dtype), grid], dim=1)
    for part, chunk in enumerate(grid.split(128)):
        cases[f"every value of the dtype at scale 1, part {part}"] = chunk
    ties = torch.tensor([1.0625, -1.0625, 1.1875, 0.0029296875, 0.0009765625, -0.0009765625, 464.0, 460.0])
    tie_block = torch.zeros(4, 128, dtype=dtype)
    tie_block[:, 0] = 448.0
    tie_block[:, 1 : 1 + ties.numel()] = ties.to(dtype)
    cases["e4m3 ties and the 448/480 boundary"] = tie_block
    # Block maxima from the dtype's smallest subnormal up: scales below the normal range of float32 (or, stored
    # in bfloat16, rounded to a subnormal or to 0) leave |w / s| unbounded (512, inf), so the clamp must stay.
    if dtype != torch.float16:
        lowest = -149.0 if dtype == torch.float32 else -133.0
        maxima = 2 ** torch.linspace(lowest, -110.0, 96, dtype=torch.float64)
        tiny = torch.rand(4, 96, 128, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
        tiny = tiny * maxima[None, :, None]
        tiny[0, :, 0], tiny[1, :, 5] = maxima, -maxima
        cases["subnormal and underflowing scales"] = tiny.reshape(4, 96 * 128).to(dtype)
    huge = torch.randn(8, 256, generator=torch.Generator().manual_seed(5)).clamp(-3, 3)
    cases["largest magnitudes of the dtype"] = (huge * (2e4 if dtype == torch.float16 else 1e38)).to(dtype)
    return cases


FP8_DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_fp8_fast_path_matches_reference_bit_exactly(dtype, scale_dtype):
    workspace = Workspace()
    for label, rows in _fp8_edge_rows(dtype).items():
        original = rows.clone()
        scales, codes = quantize_block_row_fast(rows, scale_dtype, 128, workspace)
        ref_scales = block_row_scales(rows).to(scale_dtype)
        ref_codes = quantize_block_row(rows, ref_scales.float())
        assert torch.equal(rows, original), f"{label}: the input changed"
        assert scales.dtype == scale_dtype and torch.equal(scales, ref_scales), label
        assert codes.dtype == FP8_DTYPE and codes.shape == rows.shape, label
        assert torch.equal(codes.view(torch.uint8), ref_codes.view(torch.uint8)), label


def test_fp8_fast_path_tiles_and_reused_workspace():
    """Tiles smaller than the slab, and a workspace reused across slabs of different widths, change nothing."""
    workspace = Workspace()
    saved = fp8_fast.TILE_ELEMENTS
    try:
        fp8_fast.TILE_ELEMENTS = 1000  # three rows of 300 per tile
        for shape in [(128, 300), (64, 1000), (128, 300)]:
            rows = _gaussian(shape, torch.bfloat16, seed=shape[1])
            scales, codes = quantize_block_row_fast(rows, torch.float32, 128, workspace)
            ref = quantize_block_row(rows, block_row_scales(rows))
            assert torch.equal(codes.view(torch.uint8), ref.view(torch.uint8)), shape
    finally:
        fp8_fast.TILE_ELEMENTS = saved


def test_fp8_fast_path_without_a_saturating_cast(monkeypatch):
    """Where torch's cast is not known to saturate, the clamp is skipped only for normal scales: same codes."""
    monkeypatch.setattr(fp8_fast, "cast_saturates", lambda device_type="cpu": False)
    for label, rows in _fp8_edge_rows(torch.float32).items():
        for scale_dtype in (torch.float32, torch.bfloat16):
            scales, codes = quantize_block_row_fast(rows, scale_dtype)
            ref = quantize_block_row(rows, block_row_scales(rows).to(scale_dtype).float())
            assert torch.equal(codes.view(torch.uint8), ref.view(torch.uint8)), label


def test_cast_saturates_says_what_torch_does():
    large = torch.tensor([470.0, 1e30, float("inf")]).to(FP8_DTYPE).view(torch.uint8)
    assert fp8_fast.cast_saturates() == bool((large == 0x7E).all())


def test_clamp_is_identity_only_for_normal_scales():
    assert clamp_is_identity(torch.tensor([1e-4, 1.0, 3e35]))
    assert not clamp_is_identity(torch.tensor([1e-4, 1e-40]))  # float32 subnormal
    assert not clamp_is_identity(torch.tensor([1e-4, 0.0]))
    assert clamp_is_identity(torch.tensor([1e-30], dtype=torch.bfloat16))
    assert not clamp_is_identity(torch.tensor([1e-39], dtype=torch.float32).to(torch.bfloat16))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_fp8_fast_path_refuses_non_finite_like_the_reference(bad):
    rows = _gaussian((128, 256), torch.bfloat16)
    rows[17, 200] = bad
    with pytest.raises(NonFiniteWeightError):
        block_row_scales(rows)
    with pytest.raises(NonFiniteWeightError):
        quantize_block_row_fast(rows)


def _int4_edge_rows(dtype: torch.dtype, group: int) -> dict[str, torch.Tensor]:
    cases = {
        "gaussian, 480B expert width": _gaussian((128, 2560), dtype),
        "few rows": _gaussian((3, 4 * group), dtype, seed=1),
    }
    zeros = _gaussian((16, 4 * group), dtype, seed=2)
    zeros[:, :group] = 0.0
    zeros[:, group : 2 * group] = -0.0
    cases["zero and negative-zero groups"] = zeros
    # amax 7.5 gives scale exactly 1.0: k + 0.5 are ties, rounding to even; -8 and 7 are the clamp's ends.
    ties = torch.zeros(2, group, dtype=dtype)
    ties[:, 0] = 7.5
    ties[0, 1:17] = torch.arange(-8, 8, dtype=torch.float32).to(dtype) + 0.5
    ties[1, 1:17] = torch.arange(-8, 8, dtype=torch.float32).to(dtype)
    cases["ties and the ends"] = ties
    cases["tiny groups (scale underflows to eps)"] = (_gaussian((4, group * 2), torch.float32, seed=3) * 1e-40).to(
        dtype
    )
    return cases


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", FP8_DTYPES)
def test_int4_fast_path_matches_reference_bit_exactly(dtype, group):
    workspace = Workspace()
    for label, rows in _int4_edge_rows(dtype, group).items():
        original = rows.clone()
        packed, scales = quantize_int4_rows_fast(rows, group, workspace)
        ref_scales = group_scales(rows, group)
        ref_packed = pack_int4(quantize_rows(rows, ref_scales, group))
        assert torch.equal(rows, original), f"{label}: the input changed"
        assert scales.dtype == ref_scales.dtype and torch.equal(scales, ref_scales), label
        assert packed.dtype == torch.int32 and torch.equal(packed, ref_packed), label


def test_int4_fast_path_tiles():
    saved = int4_fast.TILE_ELEMENTS
    try:
        int4_fast.TILE_ELEMENTS = 512 * 3
        rows = _gaussian((128, 512), torch.bfloat16, seed=9)
        packed, _ = quantize_int4_rows_fast(rows, 128, Workspace())
        assert torch.equal(packed, pack_int4(quantize_rows(rows, group_scales(rows, 128), 128)))
    finally:
        int4_fast.TILE_ELEMENTS = saved


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int4_fast_path_refuses_non_finite(bad):
    rows = _gaussian((8, 256), torch.bfloat16)
    rows[3, 100] = bad
    with pytest.raises(NonFiniteWeightError):
        quantize_int4_rows_fast(rows, 128)


def test_workspace_hands_out_views_and_grows():
    workspace = Workspace()
    small = workspace.tensor("a", (4, 4), torch.float32)
    assert small.shape == (4, 4) and small.dtype == torch.float32 and small.is_contiguous()
    again = workspace.tensor("a", (2, 8), torch.float32)
    assert again.data_ptr() == small.data_ptr(), "a buffer that is large enough is reused"
    big = workspace.tensor("a", (64, 64), torch.float32)
    assert big.numel() == 4096 and workspace.nbytes >= 4096 * 4
