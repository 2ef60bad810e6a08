"""INT4 W4A16 weights in compressed-tensors `pack-quantized`: the layout and its config group.

A quantised linear `X` with weight [out, in] is stored as (FACTS §3):
- `X.weight_packed` int32 [out, in/8]: eight 4-bit codes per word, least significant nibble first, each q + 8;
- `X.weight_scale` [out, in/group] in the model dtype (the source weight's): `W = q * scale` per group;
- `X.weight_shape` int64 [2]: [out, in].
Symmetric (no `weight_zero_point`), `strategy: group`, `actorder: null` (the format is the same for "static", but
SGLang takes its act-order path for any truthy value). Activations stay in the model dtype. The numerics are
`qtools.numerics.int4`; the compressed-tensors container is `qtools.formats.compressed_tensors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from qtools.checkpoint.safetensors_io import TensorSpec
from qtools.errors import QtoolsError
from qtools.formats.base import FLOAT16_MAX, SCALE_DTYPES, TensorLookup, TensorReader, scale_value_problem
from qtools.numerics.fp8 import FP8_DTYPE
from qtools.numerics.int4 import (
    INT4_MIN,
    PACK_FACTOR,
    dequantize_int4_group,
    int4_shape_problem,
    pack_int4,
    packed_shape,
    scale_shape,
)
from qtools.numerics.int4_fast import quantize_int4_rows_fast
from qtools.numerics.workspace import Workspace

PACKED, SCALE, SHAPE = "weight_packed", "weight_scale", "weight_shape"
DEFAULT_GROUP_SIZE = 128
# Largest plausible group scale: codes (|q| <= 8) then dequantise to at most 65504, float16's largest finite value.
MAX_SCALE = FLOAT16_MAX / -INT4_MIN
# The observer llm-compressor 0.14's round-to-nearest W4A16 (`QuantizationModifier`) records; loaders ignore it.
RTN_OBSERVER = "memoryless_minmax"
# A whole group of the code -8 is the nibble 0 eight times per word: zeroed file bytes. Round-to-nearest gives -8
# only to a group's negative extreme, and no trained weight group is one repeated negative value.
_ZERO_WORD = 0
# Act orders that keep the stored layout (no `weight_g_idx` permutation to apply).
_PLAIN_ACTORDERS = (None, False, "static", "weight")


@dataclass(frozen=True)
class Int4GroupLayout:
    """INT4 codes packed eight per int32 `weight_packed` [out, in/8], `weight_scale` [out, in/group] and
    `weight_shape` int64 [2]; symmetric, one scale per row and group of `group_size` input channels."""

    group_size: int = DEFAULT_GROUP_SIZE
    observer: str | None = RTN_OBSERVER
    scheme = "w4a16"
    act_group_size = None
    dynamic_activations = False

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (PACKED, SCALE, SHAPE)

    @property
    def codes_suffix(self) -> str:
        return PACKED

    @property
    def scale_suffixes(self) -> tuple[str, ...]:
        return (SCALE,)

    def describe(self) -> str:
        return f"INT4 symmetric, groups of {self.group_size}"

    def codes_label(self) -> str:
        return f"int4 g{self.group_size}"

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        return int4_shape_problem(shape, self.group_size)

    def tensor_specs(self, module: str, shape: tuple[int, int], dtype: torch.dtype) -> tuple[TensorSpec, ...]:
        """(weight_packed int32 [out, in/8], weight_scale `dtype` [out, in/group], weight_shape int64 [2])."""
        return (
            TensorSpec(f"{module}.{PACKED}", torch.int32, packed_shape(shape)),
            TensorSpec(f"{module}.{SCALE}", dtype, scale_shape(shape, self.group_size)),
            TensorSpec(f"{module}.{SHAPE}", torch.int64, (2,)),
        )

    def stores(self, module: str, lookup: TensorLookup) -> bool:
        return lookup(f"{module}.{PACKED}") is not None

    def storage_problems(self, module: str, lookup: TensorLookup) -> list[str]:
        packed, weight = lookup(f"{module}.{PACKED}"), lookup(f"{module}.weight")
        if packed is None:
            problems = []
            if lookup(f"{module}.{SHAPE}") is not None:
                problems.append(f"{module}.{SHAPE}: without {module}.{PACKED}")
            # An FP8 weight's compressed-tensors scale has the same name; that layout checks it.
            if lookup(f"{module}.{SCALE}") is not None and (weight is None or weight.dtype != FP8_DTYPE):
                problems.append(f"{module}.{SCALE}: scale without {module}.{PACKED}")
            return problems
        missing = [suffix for suffix in (SCALE, SHAPE) if lookup(f"{module}.{suffix}") is None]
        problems = [f"{module}.{PACKED}: INT4 weight without its {suffix} tensor" for suffix in missing]
        if weight is not None:
            problems.append(f"{module}.weight: stored beside {module}.{PACKED}; a module is stored one way")
        return problems

    def logical_shape(self, module: str, lookup: TensorLookup, read: TensorReader) -> tuple[int, ...]:
        """[out, in] from `weight_shape`; raises QtoolsError when that tensor is not two positive int64s."""
        name = f"{module}.{SHAPE}"
        info = lookup(name)
        if info.dtype != torch.int64 or tuple(info.shape) != (2,):
            raise QtoolsError(f"{name}: {info.dtype} {list(info.shape)}, expected int64 [2] ([out, in])")
        shape = tuple(int(v) for v in read(name).tolist())
        if min(shape) <= 0:
            raise QtoolsError(f"{name}: {list(shape)} is no weight shape")
        return shape

    def layout_problems(self, module: str, lookup: TensorLookup, shape: tuple[int, ...]) -> list[str]:
        problem = int4_shape_problem(shape, self.group_size)
        if problem:
            return [f"{module}.{SHAPE}: {list(shape)}: {problem}"]
        problems = []
        packed, scale = lookup(f"{module}.{PACKED}"), lookup(f"{module}.{SCALE}")
        if packed.dtype != torch.int32 or tuple(packed.shape) != packed_shape(shape):
            problems.append(
                f"{module}.{PACKED}: {packed.dtype} {list(packed.shape)}, expected int32 {list(packed_shape(shape))} "
                f"for weight_shape {list(shape)}"
            )
        expected = scale_shape(shape, self.group_size)
        if tuple(scale.shape) != expected:
            problems.append(f"{module}.{SCALE}: shape {list(scale.shape)}, expected {list(expected)}")
        elif scale.dtype not in SCALE_DTYPES:
            problems.append(f"{module}.{SCALE}: scale dtype {scale.dtype} is not float32/bfloat16/float16")
        return problems

    def value_problems(self, module: str, read: TensorReader, shape: tuple[int, ...], deep: bool) -> list[str]:
        problems = []
        problem = scale_value_problem(f"{module}.{SCALE}", read(f"{module}.{SCALE}"), MAX_SCALE)
        if problem:
            problems.append(problem)
        if deep:
            words = read(f"{module}.{PACKED}")
            per_group = self.group_size // PACK_FACTOR
            zeroed = (words.view(shape[0], -1, per_group) == _ZERO_WORD).all(dim=-1)
            if zeroed.any():
                row, group = (int(i) for i in zeroed.nonzero()[0])
                problems.append(
                    f"{module}.{PACKED}: {int(zeroed.sum())} group(s) hold only the code {INT4_MIN} (zeroed words, "
                    f"first at row {row}, group {group}): damaged data"
                )
        return problems

    def dequantize(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The weight `dtype` [out, in] the checkpoint means: q * scale in the scale dtype (the model dtype), as
        compressed-tensors decompresses it, transformers loads it and vLLM's Marlin kernels dequantise it in
        registers, then cast to `dtype` (so float32 compute sees those bf16 weights exactly)."""
        scale = tensors[SCALE]
        return dequantize_int4_group(tensors[PACKED], scale, self.group_size, scale.dtype).to(dtype)

    @property
    def rows_per_step(self) -> int:
        return 128

    def encode(self, codes: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes int8 [r, in] in [-8, 7] and their scales [r, in/group] (any quantiser's, e.g. GPTQ's) -> the
        following rows of `weight_packed` and `weight_scale`."""
        return {PACKED: pack_int4(codes), SCALE: scales}

    def quantize_rows(self, rows: torch.Tensor, workspace: Workspace | None = None) -> dict[str, torch.Tensor]:
        """Round-to-nearest of rows [r, in]: scales in the rows' dtype, codes packed, by the fast path, which
        `group_scales` + `quantize_rows` + `pack_int4` define bit for bit."""
        packed, scales = quantize_int4_rows_fast(rows, self.group_size, workspace)
        return {PACKED: packed, SCALE: scales}

    def constant_tensors(self, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {SHAPE: torch.tensor(list(shape), dtype=torch.int64)}

    def config_group(self, targets: list[str]) -> dict:
        """The compressed-tensors config group llm-compressor 0.14 writes for W4A16 (`pack-quantized`)."""
        return {
            "format": "pack-quantized",
            "input_activations": None,
            "output_activations": None,
            "targets": list(targets),
            "weights": {
                "actorder": None,
                "block_structure": None,
                "dynamic": False,
                "group_size": self.group_size,
                "num_bits": 4,
                "observer": self.observer,
                "observer_kwargs": {},
                "scale_dtype": None,
                "strategy": "group",
                "symmetric": True,
                "type": "int",
                "zp_dtype": None,
            },
        }


def int4_layout_from_group(group: dict, default_format: str | None) -> Int4GroupLayout | None:
    """The INT4 layout a compressed-tensors config group describes, None for another kind of group (other bit
    widths, activation quantisation); raises QtoolsError for a W4A16 group qtools cannot read."""
    weights = group.get("weights") or {}
    if (group.get("format") or default_format) != "pack-quantized" or group.get("input_activations"):
        return None
    if weights.get("type", "int") != "int" or weights.get("num_bits") != 4:
        return None
    where = "config.json: W4A16 (pack-quantized)"
    if weights.get("strategy") != "group":
        raise QtoolsError(f"{where} with strategy {weights.get('strategy')!r} is not supported: only 'group'")
    if weights.get("symmetric", True) is not True:
        raise QtoolsError(f"{where} asymmetric weights (weight_zero_point) are not supported: only symmetric")
    if weights.get("actorder") not in _PLAIN_ACTORDERS:
        raise QtoolsError(
            f"{where} with actorder {weights.get('actorder')!r} (a weight_g_idx permutation) is not supported"
        )
    size = weights.get("group_size")
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0 and size % PACK_FACTOR == 0):
        raise QtoolsError(f"{where}: group_size must be a positive multiple of {PACK_FACTOR}, got {size!r}")
    return Int4GroupLayout(size, weights.get("observer"))
