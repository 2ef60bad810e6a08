"""FP8 block-wise weights: the official `hf-fp8` layout and compressed-tensors FP8_BLOCK (`float-quantized`).

Both store `X.weight` float8_e4m3fn [out, in] and one scale per block [ceil(out/bo), ceil(in/bi)] that
dequantises by multiplication; hf-fp8 names it `X.weight_scale_inv`, compressed-tensors `X.weight_scale`.
Modules left in BF16 (router, lm_head, anything the converter skipped) are read as dense linears: which ones
are quantised is decided by the stored dtype, cross-checked against the scale tensor's presence and shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtools.errors import QtoolsError
from qtools.numerics.fp8 import FP8_DTYPE, dequantize_fp8_block, scale_shape
from qtools.runtime.act_quant import fake_quant_fp8_per_token_group
from qtools.runtime.weights.base import LinearBackend, LoadOptions, RuntimeLinear
from qtools.runtime.weights.dense import load_dense_linear
from qtools.runtime.weights.source import WeightSource


class Fp8BlockLinear(RuntimeLinear):
    """A linear layer with FP8 block-wise weights, dequantised on every call by the torch backend.

    Buffers: `weight` float8_e4m3fn [out_features, in_features]; `weight_scale_inv` [ceil(out/bo), ceil(in/bi)]
    float32 or bfloat16 as stored. `act_group_size`: inputs are fake-quantised to FP8 per token and group of
    this many channels before the matmul, as the served model does; None leaves them in the compute dtype.
    `cache_dtype`: keep the weight dequantised to this dtype (the compute dtype) after its first use (the same
    values, computed once); other dtypes (e.g. float32 for SQNR) are computed afresh and not kept.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scale_inv: torch.Tensor,
        block: tuple[int, int],
        act_group_size: int | None,
        backend: LinearBackend,
        cache_dtype: torch.dtype | None = None,
    ):
        super().__init__(codes.shape[0], codes.shape[1], backend)
        self.register_buffer("weight", codes)
        self.register_buffer("weight_scale_inv", scale_inv)
        self.block = block
        self.act_group_size = act_group_size
        self.cache_dtype = cache_dtype
        self._cached: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype != self.cache_dtype:
            return dequantize_fp8_block(self.weight, self.weight_scale_inv, self.block, dtype)
        if self._cached is None:
            self._cached = dequantize_fp8_block(self.weight, self.weight_scale_inv, self.block, dtype)
        return self._cached

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_group_size is None:
            return x
        return fake_quant_fp8_per_token_group(x, self.act_group_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, act_group_size={self.act_group_size}"


@dataclass(frozen=True)
class Fp8BlockFormat:
    """One FP8 block-wise layout: scale tensor suffix, block [bo, bi], activation groups the server uses."""

    name: str
    scale_suffix: str
    block: tuple[int, int]
    act_group_size: int
    dynamic_activations: bool

    def load_linear(
        self, source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions
    ) -> RuntimeLinear:
        name, scale_name = f"{module}.weight", f"{module}.{self.scale_suffix}"
        if source.info(name).dtype != FP8_DTYPE:
            if source.has(scale_name):
                raise QtoolsError(f"{source.checkpoint.root}: {scale_name} exists but {name} is not float8_e4m3fn")
            return load_dense_linear(source, module, shape, options)
        if not source.has(scale_name):
            raise QtoolsError(f"{source.checkpoint.root}: {name} is float8_e4m3fn but {scale_name} is missing")
        codes = source.read_shape_checked(name, shape, options.device)
        scale_inv = source.read_shape_checked(scale_name, scale_shape(shape, self.block), options.device)
        group = self.act_group_size if options.act_quant else None
        cache_dtype = options.dtype if options.cache_dequantized else None
        return Fp8BlockLinear(codes, scale_inv, self.block, group, options.backend, cache_dtype)


def _block(value, where: str) -> tuple[int, int]:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise QtoolsError(f"config.json: {where} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def _hf_fp8(config: dict) -> Fp8BlockFormat:
    if config.get("weight_block_size") is None:
        raise QtoolsError("config.json: quant_method fp8 without weight_block_size (per-tensor FP8) is not supported")
    block = _block(config["weight_block_size"], "quantization_config.weight_block_size")
    scheme = config.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise QtoolsError(f"config.json: block-wise FP8 needs activation_scheme 'dynamic', got {scheme!r}")
    return Fp8BlockFormat("hf-fp8", "weight_scale_inv", block, block[1], dynamic_activations=True)


def _compressed_tensors_fp8(config: dict) -> Fp8BlockFormat | None:
    groups = list((config.get("config_groups") or {}).values())
    if not groups:
        return None
    formats: set[Fp8BlockFormat] = set()
    for group in groups:
        weights = group.get("weights") or {}
        if (group.get("format") or config.get("format")) != "float-quantized" or weights.get("strategy") != "block":
            return None
        if weights.get("type") != "float" or weights.get("num_bits") != 8:
            return None
        block = _block(weights.get("block_structure"), "config_groups.*.weights.block_structure")
        inputs = group.get("input_activations")
        dynamic = bool(inputs) and inputs.get("dynamic") is True and inputs.get("type") == "float"
        if inputs and not dynamic:
            raise QtoolsError("config.json: FP8_BLOCK with static or non-float input activations is not supported")
        group_size = (inputs or {}).get("group_size") or block[1]
        formats.add(Fp8BlockFormat("compressed-tensors", "weight_scale", block, int(group_size), dynamic))
    if len(formats) > 1:
        raise QtoolsError("config.json: config_groups use different FP8 block layouts; one is supported")
    return formats.pop()


def detect(quantization_config: dict | None) -> Fp8BlockFormat | None:
    """The FP8 block-wise format `quantization_config` describes, or None when it describes another one."""
    method = (quantization_config or {}).get("quant_method")
    if method == "fp8":
        return _hf_fp8(quantization_config)
    if method == "compressed-tensors":
        return _compressed_tensors_fp8(quantization_config)
    return None
