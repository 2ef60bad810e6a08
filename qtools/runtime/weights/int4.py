"""INT4 W4A16 linear layers (compressed-tensors pack-quantized), read as `qtools.formats.pack_quantized`
describes them."""

from __future__ import annotations

import torch

from qtools.errors import QtoolsError
from qtools.formats.pack_quantized import PACKED, SCALE, Int4GroupLayout
from qtools.runtime.weights.base import DequantizedCache, LinearBackend, LoadOptions, RuntimeLinear
from qtools.runtime.weights.source import WeightSource


class Int4GroupLinear(RuntimeLinear):
    """A linear layer with INT4 weights (symmetric, group-wise), dequantised on every call by the torch backend;
    inputs stay in the compute dtype (weight-only quantisation).

    Buffers: `weight_packed` int32 [out_features, in_features / 8]; `weight_scale` [out_features,
    in_features / group_size] as stored (the model dtype). `cache_dtype`: see `DequantizedCache`.
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        layout: Int4GroupLayout,
        backend: LinearBackend,
        cache_dtype: torch.dtype | None = None,
    ):
        super().__init__(packed.shape[0], packed.shape[1] * 8, backend)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", scale)
        self.layout = layout
        self.group_size = layout.group_size
        self._cache = DequantizedCache(cache_dtype)

    def _dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.layout.dequantize({PACKED: self.weight_packed, SCALE: self.weight_scale}, dtype)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self._cache.get(dtype, self._dequantize)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def load_int4_linear(
    layout: Int4GroupLayout, source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions
) -> Int4GroupLinear:
    """`module`'s packed codes and group scales; refuses a `weight_shape` other than `shape` [out, in] and
    tensors whose shapes or dtypes disagree with it."""
    root = source.checkpoint.root
    try:
        stored = layout.logical_shape(module, source.lookup, source.read)
    except QtoolsError as error:
        raise QtoolsError(f"{root}: {error}") from None
    if tuple(stored) != tuple(shape):
        raise QtoolsError(f"{root}: {module}.weight_shape is {list(stored)}, expected {list(shape)}")
    problems = layout.layout_problems(module, source.lookup, shape)
    if problems:
        raise QtoolsError(f"{root}: {problems[0]}")
    packed = source.read(f"{module}.{PACKED}", options.device)
    scale = source.read(f"{module}.{SCALE}", options.device)
    cache_dtype = options.dtype if options.cache_dequantized else None
    return Int4GroupLinear(packed, scale, layout, options.backend, cache_dtype)
