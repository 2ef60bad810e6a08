"""Linear layers the runtime builds from a checkpoint, one module per weight format: dense, FP8 block-wise
(`fp8_block`) and INT4 W4A16 (`int4`). What each format stores is `qtools.formats`'s; `load_linear` asks the
checkpoint's format which layout holds a module (by its tensors) and builds that layout's layer."""

from __future__ import annotations

from collections.abc import Callable

from qtools.errors import QtoolsError
from qtools.formats import SUPPORTED, Format, Fp8BlockLayout, Int4GroupLayout, LinearLayout, detect
from qtools.runtime.weights.base import LinearBackend, LoadOptions, RuntimeLinear
from qtools.runtime.weights.dense import DenseLinear, load_dense_linear
from qtools.runtime.weights.fp8_block import Fp8BlockLinear, load_fp8_block_linear
from qtools.runtime.weights.int4 import Int4GroupLinear, load_int4_linear
from qtools.runtime.weights.source import WeightSource

_LOADERS: dict[type, Callable[..., RuntimeLinear]] = {
    Fp8BlockLayout: load_fp8_block_linear,
    Int4GroupLayout: load_int4_linear,
}


def detect_format(config: dict) -> Format:
    """The weight format of a checkpoint from its config.json; raises QtoolsError for an unsupported one."""
    return detect(config)


def load_linear(
    fmt: Format, source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions
) -> RuntimeLinear:
    """The linear layer `module` (e.g. `model.layers.0.self_attn.q_proj`) with weight `shape` [out, in], in
    the layout its tensors say (dense when none of `fmt`'s does); raises QtoolsError when the stored tensors
    disagree with `shape` or with each other."""
    for layout in fmt.layouts:
        problems = layout.storage_problems(module, source.lookup)
        if problems:
            raise QtoolsError(f"{source.checkpoint.root}: {problems[0]}")
    layout: LinearLayout | None = fmt.layout_of(module, source.lookup)
    if layout is None:
        return load_dense_linear(source, module, shape, options)
    return _LOADERS[type(layout)](layout, source, module, shape, options)


__all__ = [
    "DenseLinear",
    "Fp8BlockLinear",
    "Int4GroupLinear",
    "LinearBackend",
    "LoadOptions",
    "RuntimeLinear",
    "SUPPORTED",
    "WeightSource",
    "detect_format",
    "load_linear",
]
