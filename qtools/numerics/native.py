"""The converter's per-value loops in compiled code (`qtools/numerics/_native.c`), for BF16 rows on the CPU.

The extension is built by `pip install` when a C compiler is there (optional: without one the install still
succeeds); where it is missing, or `QTOOLS_NATIVE=0` is set, `usable` is False and the fast paths
(`fp8_fast`, `int4_fast`, `finite.abs_max`) take their torch code instead: the same bytes, slower. Each function
here is bit for bit its torch reference in `qtools.numerics` (tests/test_native.py, with the e4m3 rounding
checked on every non-negative float32); the scale rules stay in torch, only the per-value work is compiled.

Arguments are checked here, not in C: a row slab is a 2-D BF16 CPU tensor whose last dimension is contiguous
(a slice of a memory-mapped weight qualifies), outputs are contiguous tensors of the right size.
"""

from __future__ import annotations

import os

import torch

try:
    from qtools.numerics import _native
except ImportError:  # built without a C compiler, or from a source tree without `pip install`
    _native = None

NATIVE_ENV = "QTOOLS_NATIVE"
# Read once; tests switch it per test. Forked workers inherit it, spawned ones read the environment again.
ENABLED = os.environ.get(NATIVE_ENV, "1") != "0"


def built() -> bool:
    """True when the compiled extension was built and imports."""
    return _native is not None


def simd() -> str | None:
    """The form the compiled loops take now: "avx2" (x86-64 CPUs that have it, the default there) or "scalar";
    None when the extension is not built."""
    return None if _native is None else _native.simd()


def set_simd(name: str) -> None:
    """Make the compiled loops take form `name` ("avx2" or "scalar"), for tests and benchmarks; both give the
    same bytes. Raises ValueError for a form this CPU lacks, RuntimeError when the extension is not built."""
    if _native is None:
        raise RuntimeError("qtools.numerics._native is not built")
    _native.set_simd(name)


def usable(rows: torch.Tensor) -> bool:
    """True when the compiled loops can take `rows`: built, enabled, a 2-D BF16 CPU tensor with unit column
    stride."""
    return (
        ENABLED
        and _native is not None
        and rows.dtype == torch.bfloat16
        and rows.device.type == "cpu"
        and rows.dim() == 2
        and (rows.stride(1) == 1 or rows.shape[1] <= 1)
    )


def _contiguous_out(out: torch.Tensor, numel: int, dtype_size: int, what: str) -> None:
    if out.device.type != "cpu" or not out.is_contiguous() or out.numel() * out.element_size() != numel * dtype_size:
        raise ValueError(f"{what}: expected a contiguous CPU tensor of {numel * dtype_size} bytes")


def _check_rows(rows: torch.Tensor) -> None:
    if not usable(rows):
        raise ValueError(
            f"native loops take 2-D bfloat16 CPU rows with contiguous columns, got {tuple(rows.shape)} {rows.dtype} "
            f"stride {rows.stride()} on {rows.device}" + ("" if _native is not None and ENABLED else " (disabled)")
        )


def abs_max_bits(rows: torch.Tensor, group: int, over_rows: bool, out: torch.Tensor) -> torch.Tensor:
    """Sign-cleared BF16 bits of amax(|x|) per `group` columns of `rows` [r, groups * group]: one per group over
    every row (`over_rows`, out [groups]) or one per row and group (out [r, groups]); `out` is int16 and is
    returned. Its `.view(torch.bfloat16)` is the amax (NaN / Inf where a group holds them)."""
    _check_rows(rows)
    n_rows, width = rows.shape
    if group <= 0 or width % group:
        raise ValueError(f"width {width} is not a multiple of the group {group}")
    groups = width // group
    _contiguous_out(out, groups if over_rows else n_rows * groups, 2, "abs_max_bits out")
    _native.abs_max_bf16(rows.data_ptr(), n_rows, groups, group, rows.stride(0), over_rows, out.data_ptr())
    return out


def fp8_codes(rows: torch.Tensor, block: int, divisors: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of `rows` [r, in] divided by the float32 `divisors` [ceil(in/block)] of their column blocks,
    clamped to +-448, into `out` (float8_e4m3fn or uint8 [r, in]): `fp8_e4m3_codes(rows.float() / divisors)`."""
    _check_rows(rows)
    n_rows, width = rows.shape
    if block <= 0 or divisors.dtype != torch.float32 or divisors.numel() != -(-width // block):
        raise ValueError(f"expected float32 divisors for {-(-width // max(block, 1))} blocks of {block}")
    _contiguous_out(divisors, divisors.numel(), 4, "fp8_codes divisors")
    _contiguous_out(out, n_rows * width, 1, "fp8_codes out")
    _native.fp8_codes_bf16(rows.data_ptr(), n_rows, width, rows.stride(0), block, divisors.data_ptr(), out.data_ptr())
    return out


def int4_pack(rows: torch.Tensor, group: int, divisors: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Packed INT4 codes of `rows` [r, in] divided by the float32 `divisors` [r, in/group] of their groups, two
    nibbles a byte (code + 8, low nibble first), into `out` (uint8 [r, in/2]): `pack_int4(int4_codes(...))`'s
    bytes on a little-endian machine."""
    _check_rows(rows)
    n_rows, width = rows.shape
    if group <= 0 or group % 2 or width % group:
        raise ValueError(f"width {width} is not a multiple of an even group {group}")
    if divisors.dtype != torch.float32 or divisors.numel() != n_rows * (width // group):
        raise ValueError(f"expected float32 divisors [{n_rows}, {width // group}]")
    _contiguous_out(divisors, divisors.numel(), 4, "int4_pack divisors")
    _contiguous_out(out, n_rows * width // 2, 1, "int4_pack out")
    _native.int4_pack_bf16(rows.data_ptr(), n_rows, width, rows.stride(0), group, divisors.data_ptr(), out.data_ptr())
    return out


def e4m3_codes(values: torch.Tensor) -> torch.Tensor:
    """float32 values (contiguous, CPU) -> uint8 e4m3 codes after a clamp to +-448 (NaN -> 0x7F with its sign)."""
    if _native is None:
        raise RuntimeError("qtools.numerics._native is not built")
    if values.dtype != torch.float32 or values.device.type != "cpu" or not values.is_contiguous():
        raise ValueError("e4m3_codes takes contiguous float32 CPU values")
    out = torch.empty(values.shape, dtype=torch.uint8)
    _native.e4m3_from_f32(values.data_ptr(), values.numel(), out.data_ptr())
    return out
