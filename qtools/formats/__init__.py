"""On-disk formats, one module each, in one registry that convert, verify, inspect and the runtime use.

- `dense`: no `quantization_config` (BF16 / FP16 / FP32).
- `hf-fp8`: the official Qwen FP8 block-wise layout (`qtools.formats.fp8_block`).
- `compressed-tensors`: llm-compressor's container (`qtools.formats.compressed_tensors`), holding FP8_BLOCK
  (`float-quantized`, `qtools.formats.fp8_block`) and W4A16 (`pack-quantized`, `qtools.formats.pack_quantized`)
  config groups.

`detect(config)` reads a checkpoint's format from config.json; `format_for_recipe(recipe)` is the format a
conversion writes. Each `Format` names the `LinearLayout`s its quantised modules use (tensor specs, detection from
headers, reference dequantisation, verify checks, streaming quantiser); see `qtools.formats.base`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtools.errors import QtoolsError
from qtools.formats.base import Format, LinearLayout, TensorLookup, listed
from qtools.formats.compressed_tensors import CompressedTensorsFormat, ConfigGroup, detect_compressed_tensors
from qtools.formats.dense import DenseFormat, detect_dense
from qtools.formats.fp8_block import (
    COMPRESSED_TENSORS_SCALE,
    SCALE_DTYPES_BY_NAME,
    Fp8BlockLayout,
    HfFp8Format,
    detect_hf_fp8,
)
from qtools.formats.pack_quantized import Int4GroupLayout

if TYPE_CHECKING:
    from qtools.recipe import Recipe

FORMATS: dict[str, type] = {
    DenseFormat.name: DenseFormat,
    HfFp8Format.name: HfFp8Format,
    CompressedTensorsFormat.name: CompressedTensorsFormat,
}
SUPPORTED = (
    "dense BF16/FP16/FP32, hf-fp8 block-wise, compressed-tensors FP8_BLOCK (float-quantized) and W4A16 "
    "(pack-quantized, symmetric, group-wise)"
)
_DETECTORS = (detect_dense, detect_hf_fp8, detect_compressed_tensors)


def detect(config: dict) -> Format:
    """The format of a checkpoint from its config.json; raises QtoolsError for an unsupported one."""
    quantization_config = config.get("quantization_config")
    if quantization_config is not None and not isinstance(quantization_config, dict):
        kind = type(quantization_config).__name__
        raise QtoolsError(f"config.json: quantization_config must be an object, got {kind}")
    for detector in _DETECTORS:
        found = detector(quantization_config)
        if found is not None:
            return found
    method = quantization_config.get("quant_method")
    layout = quantization_config.get("format")
    raise QtoolsError(
        f"config.json: quantization_config quant_method={method!r} format={layout!r} is not supported by the "
        f"runtime yet (supported: {SUPPORTED})"
    )


def format_for_recipe(recipe: Recipe) -> Format:
    """The format a conversion following `recipe` writes (its scheme in its container format)."""
    scale_dtype = SCALE_DTYPES_BY_NAME[recipe.scale_dtype]
    fp8 = Fp8BlockLayout(COMPRESSED_TENSORS_SCALE, recipe.block_size, recipe.block_size[1], scale_dtype)
    if recipe.scheme == "w4a16":
        int4 = Int4GroupLayout(recipe.group_size)
        if not recipe.fp8_targets:
            return CompressedTensorsFormat((ConfigGroup(int4),))
        # Two groups can only target modules by name: vLLM keys its schemes by target, so two "Linear" collide.
        return CompressedTensorsFormat(
            (ConfigGroup(fp8, tuple(recipe.fp8_targets)), ConfigGroup(int4, tuple(recipe.targets)))
        )
    if recipe.format == "hf-fp8":
        return HfFp8Format(recipe.block_size, scale_dtype)
    return CompressedTensorsFormat((ConfigGroup(fp8),))


__all__ = [
    "FORMATS",
    "SUPPORTED",
    "CompressedTensorsFormat",
    "ConfigGroup",
    "DenseFormat",
    "Format",
    "Fp8BlockLayout",
    "HfFp8Format",
    "Int4GroupLayout",
    "LinearLayout",
    "TensorLookup",
    "detect",
    "format_for_recipe",
    "listed",
]
