"""FP8 block-wise linear layers (hf-fp8 and compressed-tensors FP8_BLOCK), read as `qtools.formats.fp8_block`
describes them."""

from __future__ import annotations

import torch

from qtools.formats.fp8_block import Fp8BlockLayout
from qtools.numerics.fp8 import scale_shape
from qtools.runtime.act_quant import fake_quant_fp8_per_token_group
from qtools.runtime.weights.base import DequantizedCache, LinearBackend, LoadOptions, RuntimeLinear
from qtools.runtime.weights.source import WeightSource


class Fp8BlockLinear(RuntimeLinear):
    """A linear layer with FP8 block-wise weights, dequantised on every call by the torch backend.

    Buffers: `weight` float8_e4m3fn [out_features, in_features]; `weight_scale_inv` [ceil(out/bo), ceil(in/bi)]
    float32 or bfloat16 as stored (whatever the checkpoint calls it). `act_group_size`: inputs are
    fake-quantised to FP8 per token and group of this many channels before the matmul, as the served model
    does; None leaves them in the compute dtype. `cache_dtype`: keep the weight dequantised to this dtype (the
    compute dtype) after its first use (see `DequantizedCache`).
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scale_inv: torch.Tensor,
        layout: Fp8BlockLayout,
        act_group_size: int | None,
        backend: LinearBackend,
        cache_dtype: torch.dtype | None = None,
    ):
        super().__init__(codes.shape[0], codes.shape[1], backend)
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale_inv", scale_inv)
        self.layout = layout
        self.block = layout.block
        self.act_group_size = act_group_size
        self._cache = DequantizedCache(cache_dtype)

    def _dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.layout.dequantize({"weight": self.weight, self.layout.scale_suffix: self.weight_scale_inv}, dtype)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self._cache.get(dtype, self._dequantize)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_group_size is None:
            return x
        return fake_quant_fp8_per_token_group(x, self.act_group_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, act_group_size={self.act_group_size}"


def load_fp8_block_linear(
    layout: Fp8BlockLayout, source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions
) -> Fp8BlockLinear:
    """`module`'s FP8 codes and block scales, shape-checked against `shape` [out, in]."""
    codes = source.read_shape_checked(f"{module}.weight", shape, options.device)
    scale_name = f"{module}.{layout.scale_suffix}"
    scale_inv = source.read_shape_checked(scale_name, scale_shape(shape, layout.block), options.device)
    group = layout.act_group_size if options.act_quant else None
    cache_dtype = options.dtype if options.cache_dequantized else None
    return Fp8BlockLinear(codes, scale_inv, layout, group, options.backend, cache_dtype)
