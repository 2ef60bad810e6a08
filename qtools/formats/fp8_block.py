"""FP8 block-wise weights: the official `hf-fp8` layout, and the compressed-tensors FP8_BLOCK config group.

Both store `X.weight` as float8_e4m3fn [out, in] plus one scale per block [ceil(out/bo), ceil(in/bi)] with the
same multiply-to-dequantise meaning (`W = q * scale` per block); hf-fp8 names the scale `X.weight_scale_inv`,
compressed-tensors `X.weight_scale`. The served model quantises activations dynamically, per token and group of
`act_group_size` channels. This module owns the layout (`Fp8BlockLayout`), the hf-fp8 format (`HfFp8Format`,
its config written and detected) and the compressed-tensors group's config (`fp8_block_config_group`, read by
`fp8_block_layout_from_group`); the compressed-tensors container is `qtools.formats.compressed_tensors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from qtools.checkpoint.safetensors_io import TensorSpec
from qtools.errors import QtoolsError
from qtools.formats.base import (
    FLOAT16_MAX,
    SCALE_DTYPES,
    LinearLayout,
    TensorLookup,
    TensorReader,
    kept_by_every_loader,
    listed,
    scale_value_problem,
)
from qtools.numerics.fp8 import FP8_DTYPE, FP8_MAX, dequantize_fp8_block
from qtools.numerics.fp8 import scale_shape as block_scale_shape
from qtools.numerics.fp8_fast import quantize_block_row_fast
from qtools.numerics.workspace import Workspace

SCALE_DTYPES_BY_NAME = {"float32": torch.float32, "bfloat16": torch.bfloat16}
HF_FP8_SCALE = "weight_scale_inv"
COMPRESSED_TENSORS_SCALE = "weight_scale"
# Largest plausible block scale: its codes (|q| <= 448) then dequantise to at most 65504, float16's largest finite
# value. Trained weights are far below 1 in magnitude (scales of order 1e-4). An all-zero block's scale is 1.0.
MAX_SCALE = FLOAT16_MAX / FP8_MAX
_FP8_NAN_CODES = (0x7F, 0xFF)


@dataclass(frozen=True)
class Fp8BlockLayout:
    """FP8 e4m3 codes `weight` [out, in] and a block scale `scale_suffix` [ceil(out/bo), ceil(in/bi)].

    `scale_dtype` is what convert writes (readers take the stored dtype); `act_group_size` the activation groups
    the served model quantises inputs in, when `dynamic_activations` (W8A8) says it does.
    """

    scale_suffix: str
    block: tuple[int, int] = (128, 128)
    act_group_size: int | None = 128
    scale_dtype: torch.dtype = torch.float32
    dynamic_activations: bool = True
    scheme = "fp8-block"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return ("weight", self.scale_suffix)

    @property
    def codes_suffix(self) -> str:
        return "weight"

    @property
    def scale_suffixes(self) -> tuple[str, ...]:
        return (self.scale_suffix,)

    def describe(self) -> str:
        return f"FP8 e4m3, {self.block[0]}x{self.block[1]} blocks"

    def codes_label(self) -> str:
        return "float8_e4m3fn"

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        return None if len(shape) == 2 else f"FP8 block quantisation takes 2-D weights, got shape {list(shape)}"

    def tensor_specs(self, module: str, shape: tuple[int, int], dtype: torch.dtype) -> tuple[TensorSpec, ...]:
        """(codes float8_e4m3fn [out, in], scale `scale_dtype` [ceil(out/bo), ceil(in/bi)])."""
        return (
            TensorSpec(f"{module}.weight", FP8_DTYPE, tuple(shape)),
            TensorSpec(f"{module}.{self.scale_suffix}", self.scale_dtype, block_scale_shape(shape, self.block)),
        )

    def stores(self, module: str, lookup: TensorLookup) -> bool:
        info = lookup(f"{module}.weight")
        return info is not None and info.dtype == FP8_DTYPE

    def storage_problems(self, module: str, lookup: TensorLookup) -> list[str]:
        name, scale_name = f"{module}.weight", f"{module}.{self.scale_suffix}"
        weight, scale = lookup(name), lookup(scale_name)
        if weight is None and lookup(f"{module}.weight_packed") is not None:
            return []  # an INT4 module: its `weight_scale` has the same name, and its own layout checks it
        if scale is not None and weight is None:
            return [f"{scale_name}: scale without a weight"]
        if scale is not None and weight.dtype != FP8_DTYPE:
            return [f"{name}: has a scale but is {weight.dtype}, not float8_e4m3fn"]
        if scale is None and weight is not None and weight.dtype == FP8_DTYPE:
            return [f"{name}: FP8 weight without its {self.scale_suffix} tensor"]
        return []

    def logical_shape(self, module: str, lookup: TensorLookup, read: TensorReader) -> tuple[int, ...]:
        return tuple(lookup(f"{module}.weight").shape)

    def layout_problems(self, module: str, lookup: TensorLookup, shape: tuple[int, ...]) -> list[str]:
        name = f"{module}.{self.scale_suffix}"
        info = lookup(name)
        expected = block_scale_shape(shape, self.block) if len(shape) == 2 else None
        if tuple(info.shape) != expected:
            return [f"{name}: shape {list(info.shape)}, expected {list(expected or ())}"]
        if info.dtype not in SCALE_DTYPES:
            return [f"{name}: scale dtype {info.dtype} is not float32/bfloat16/float16"]
        return []

    def value_problems(self, module: str, read: TensorReader, shape: tuple[int, ...], deep: bool) -> list[str]:
        problems = []
        scale_name = f"{module}.{self.scale_suffix}"
        problem = scale_value_problem(scale_name, read(scale_name), MAX_SCALE)
        if problem:
            problems.append(problem)
        if deep:
            codes = read(f"{module}.weight").view(torch.uint8)
            if torch.isin(codes, torch.tensor(_FP8_NAN_CODES, dtype=torch.uint8)).any():
                problems.append(f"{module}.weight: holds NaN codes")
        return problems

    def dequantize(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """codes * per-block scale in float32, cast once to `dtype` [out, in]."""
        return dequantize_fp8_block(tensors["weight"], tensors[self.scale_suffix], self.block, dtype)

    @property
    def rows_per_step(self) -> int:
        return self.block[0]

    def quantize_rows(self, rows: torch.Tensor, workspace: Workspace | None = None) -> dict[str, torch.Tensor]:
        """One row of blocks [<=bo, in] -> its codes and its row of scales [1, ceil(in/bi)].

        Codes are computed with the scale exactly as stored (a bf16 scale is rounded first), by the fast path,
        which `block_row_scales` + `quantize_block_row` define bit for bit."""
        scales, codes = quantize_block_row_fast(rows, self.scale_dtype, self.block[1], workspace)
        return {"weight": codes, self.scale_suffix: scales[None]}

    def constant_tensors(self, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        return {}

    def config_group(self, targets: list[str]) -> dict:
        """This layout as a compressed-tensors config group for `targets`."""
        return fp8_block_config_group(self.block, targets)


@dataclass(frozen=True)
class HfFp8Format:
    """The official Qwen FP8 layout (`quant_method: fp8`, FACTS §2): one FP8 block layout for every converted
    linear, `modules_to_not_convert` for the rest. `not_converted` is the detected config's list."""

    block: tuple[int, int] = (128, 128)
    scale_dtype: torch.dtype = torch.float32
    not_converted: tuple[str, ...] = ()
    name = "hf-fp8"
    dynamic_activations = True

    @property
    def layout(self) -> Fp8BlockLayout:
        return Fp8BlockLayout(HF_FP8_SCALE, self.block, self.block[1], self.scale_dtype, dynamic_activations=True)

    @property
    def layouts(self) -> tuple[LinearLayout, ...]:
        return (self.layout,)

    @property
    def label(self) -> str:
        return self.name

    def lists_unconverted(self, module: str) -> bool:
        return listed(module, self.not_converted)

    def layout_of(self, module: str, lookup: TensorLookup) -> LinearLayout | None:
        return self.layout if self.layout.stores(module, lookup) else None

    def layout_for(self, module: str) -> LinearLayout:
        return self.layout

    def cannot_hold(self, module: str) -> str | None:
        return kept_by_every_loader(module)

    def quantization_config(self, kept_modules: list[str], num_layers: int, version: str) -> dict:
        """`quantization_config` of the official Qwen FP8 release, plus any other unconverted linears."""
        skip = ["lm_head"]
        for layer in range(num_layers):
            skip += [
                f"model.layers.{layer}.input_layernorm",
                f"model.layers.{layer}.mlp.gate",
                f"model.layers.{layer}.post_attention_layernorm",
            ]
        skip += [m for m in kept_modules if m not in skip]
        return {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "modules_to_not_convert": skip,
            "quant_method": "fp8",
            "weight_block_size": list(self.block),
        }


def _block(value, where: str) -> tuple[int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise QtoolsError(f"config.json: {where} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def detect_hf_fp8(config: dict) -> HfFp8Format | None:
    """The hf-fp8 format a `quantization_config` describes, None when it describes another one."""
    if config.get("quant_method") != "fp8":
        return None
    if config.get("weight_block_size") is None:
        raise QtoolsError("config.json: quant_method fp8 without weight_block_size (per-tensor FP8) is not supported")
    block = _block(config["weight_block_size"], "quantization_config.weight_block_size")
    scheme = config.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise QtoolsError(f"config.json: block-wise FP8 needs activation_scheme 'dynamic', got {scheme!r}")
    # vLLM reads `ignored_layers` and, in newer versions, `modules_to_not_convert`; either lists kept modules.
    skip = list(config.get("modules_to_not_convert") or []) + list(config.get("ignored_layers") or [])
    return HfFp8Format(block, not_converted=tuple(skip))


def fp8_block_config_group(block: tuple[int, int], targets: list[str] | None = None) -> dict:
    """The compressed-tensors FP8_BLOCK (`float-quantized`) config group (FACTS §3), for `targets` (default:
    every Linear)."""
    return {
        "format": "float-quantized",
        "input_activations": {
            "actorder": None,
            "block_structure": None,
            "dynamic": True,
            "group_size": block[1],
            "num_bits": 8,
            "observer": None,
            "observer_kwargs": {},
            "strategy": "group",
            "symmetric": True,
            "type": "float",
        },
        "output_activations": None,
        "targets": list(targets or ["Linear"]),
        "weights": {
            "actorder": None,
            "block_structure": list(block),
            "dynamic": False,
            "group_size": None,
            "num_bits": 8,
            "observer": "minmax",
            "observer_kwargs": {},
            "strategy": "block",
            "symmetric": True,
            "type": "float",
        },
    }


def fp8_block_layout_from_group(group: dict, default_format: str | None) -> Fp8BlockLayout | None:
    """The FP8 block layout a compressed-tensors config group describes, None for another kind of group;
    raises QtoolsError for an FP8_BLOCK group qtools cannot run (static or non-float activations)."""
    weights = group.get("weights") or {}
    if (group.get("format") or default_format) != "float-quantized" or weights.get("strategy") != "block":
        return None
    if weights.get("type") != "float" or weights.get("num_bits") != 8:
        return None
    block = _block(weights.get("block_structure"), "config_groups.*.weights.block_structure")
    inputs = group.get("input_activations")
    dynamic = bool(inputs) and inputs.get("dynamic") is True and inputs.get("type") == "float"
    if inputs and not dynamic:
        raise QtoolsError("config.json: FP8_BLOCK with static or non-float input activations is not supported")
    group_size = (inputs or {}).get("group_size") or block[1]
    return Fp8BlockLayout(COMPRESSED_TENSORS_SCALE, block, int(group_size), dynamic_activations=dynamic)
