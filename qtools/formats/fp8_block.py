"""On-disk FP8 block-wise formats: the official `hf-fp8` layout and compressed-tensors FP8_BLOCK.

Both store `X.weight` as float8_e4m3fn [out, in] plus one scale per 128x128 block [ceil(out/128), ceil(in/128)]
with the same multiply-to-dequantise meaning; they differ in the scale's tensor name and in `quantization_config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from qtools.checkpoint.safetensors_io import TensorSpec
from qtools.numerics.fp8 import FP8_DTYPE, scale_shape

SCALE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_ROUTER = re.compile(r"model\.layers\.\d+\.mlp\.gate")


@dataclass(frozen=True)
class Fp8BlockFormat:
    """One FP8 block-wise on-disk format: its name and the suffix of its scale tensors."""

    name: str
    scale_suffix: str

    def planned_tensors(
        self, module: str, shape: tuple[int, int], block: tuple[int, int], scale_dtype: str
    ) -> tuple[TensorSpec, TensorSpec]:
        """The (codes, scale) tensors a converted module `module` with weight `shape` is written as."""
        return (
            TensorSpec(f"{module}.weight", FP8_DTYPE, tuple(shape)),
            TensorSpec(f"{module}.{self.scale_suffix}", SCALE_DTYPES[scale_dtype], scale_shape(shape, block)),
        )

    def cannot_hold(self, module: str) -> str | None:
        """Why this format cannot store linear module `module` quantised (None when it can).

        Both formats keep the router, lm_head and the embedding in BF16. The configs written here list them as
        unconverted (hf-fp8's `modules_to_not_convert` always names lm_head and every router, as the official
        release does; compressed-tensors' `ignore` always names lm_head and the embedding), and loaders build
        them unquantised whatever the config says, so FP8 codes there would contradict the config (verify
        rejects it) and fail to load. Norms are 1-D and refused earlier: only 2-D weights can be quantised.
        """
        if _ROUTER.fullmatch(module):
            return (
                "the MoE router (mlp.gate) stays BF16: vLLM and SGLang build it unquantised, and a quantised "
                "router fails to load"
            )
        if module == "lm_head":
            return (
                "lm_head stays BF16: the written config lists it as not converted and the loaders' LM head "
                "takes no FP8 block scales"
            )
        if module == "model.embed_tokens":
            return "the token embedding is no linear layer: no FP8 block loader quantises it"
        return None

    def quantization_config(
        self, block: tuple[int, int], kept_modules: list[str], num_layers: int, version: str
    ) -> dict:
        """The config.json `quantization_config` for this format.

        `kept_modules`: linear modules (2-D weights) left unconverted, besides the standard ones.
        """
        if self.name == "hf-fp8":
            return hf_fp8_config(block, kept_modules, num_layers)
        return compressed_tensors_fp8_config(block, kept_modules, version)


HF_FP8 = Fp8BlockFormat("hf-fp8", "weight_scale_inv")
COMPRESSED_TENSORS_FP8 = Fp8BlockFormat("compressed-tensors", "weight_scale")
FORMATS = {f.name: f for f in (HF_FP8, COMPRESSED_TENSORS_FP8)}


def hf_fp8_config(block: tuple[int, int], kept_modules: list[str], num_layers: int) -> dict:
    """`quantization_config` of the official Qwen FP8 release (FACTS §2), plus any other unconverted linears."""
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
        "weight_block_size": list(block),
    }


def compressed_tensors_fp8_config(block: tuple[int, int], kept_modules: list[str], version: str) -> dict:
    """compressed-tensors FP8_BLOCK (`float-quantized`) `quantization_config` (FACTS §3)."""
    return {
        "config_groups": {
            "group_0": {
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
                "targets": ["Linear"],
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
        },
        "format": "float-quantized",
        "global_compression_ratio": None,
        # The embedding is no Linear, so loaders skip it anyway; listing it lets name-based tools
        # (compressed-tensors' dequantisers) know it carries no scale.
        "ignore": sorted(set(kept_modules) | {"lm_head", "model.embed_tokens"}),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": version,
    }
