"""The project's own Qwen3-MoE runtime: loads BF16, hf-fp8, compressed-tensors FP8_BLOCK and W4A16 checkpoints
straight from safetensors and runs them with a pure-torch dequantising reference (see docs/runtime.md).

`load_model(path)(input_ids [B, T])` gives float32 logits [B, T, vocab]; `load_layer(path, i)` one decoder
layer that runs alone over captured hidden states; `generate` decodes with a KV cache.
"""

from qtools.runtime.cache import KVCache
from qtools.runtime.config import ModelConfig, YarnScaling
from qtools.runtime.generate import GenerationSettings, generate
from qtools.runtime.layers import DecoderLayer
from qtools.runtime.loading import CheckpointLoader, load_layer, load_model
from qtools.runtime.model import Qwen3MoeModel, RuntimeInfo

__all__ = [
    "CheckpointLoader",
    "DecoderLayer",
    "GenerationSettings",
    "KVCache",
    "ModelConfig",
    "Qwen3MoeModel",
    "RuntimeInfo",
    "YarnScaling",
    "generate",
    "load_layer",
    "load_model",
]
