"""Building the runtime's modules straight from a checkpoint's safetensors shards, tensor by tensor.

Each tensor is read once into memory of its final dtype and device: dense weights and norms are cast to the
compute dtype, quantised weights stay in their on-disk format (see `qtools.runtime.weights`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from qtools.checkpoint.hf import Checkpoint
from qtools.runtime.backend import resolve_backend
from qtools.runtime.layers import Attention, DecoderLayer, Expert, MoeBlock, RMSNorm
from qtools.runtime.model import Qwen3MoeModel, RuntimeInfo
from qtools.runtime.rope import RotaryEmbedding
from qtools.runtime.weights import DenseLinear, LoadOptions, RuntimeLinear, WeightSource, detect_format, load_linear


class CheckpointLoader:
    """Reads a Qwen3-MoE checkpoint's modules: decoder layers one at a time, and the embedding/norm/lm_head.

    `act_quant=None` follows the checkpoint: FP8 linears fake-quantise their inputs exactly when the served
    model quantises activations dynamically (FP8 block-wise: yes; dense and W4A16: nothing to quantise).
    """

    def __init__(
        self,
        checkpoint: Checkpoint | str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        backend: str = "torch",
        act_quant: bool | None = None,
        cache_dequantized: bool = False,
    ):
        checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
        device = torch.device(device)
        self.source = WeightSource(checkpoint)
        self.config = checkpoint.model_config
        self.format = detect_format(checkpoint.config)
        act_quant = self.format.dynamic_activations if act_quant is None else act_quant
        self.options = LoadOptions(device, dtype, resolve_backend(backend, device), act_quant, cache_dequantized)
        self.rotary = RotaryEmbedding(self.config).to(device)

    @property
    def info(self) -> RuntimeInfo:
        """How the model is loaded (format, backend, act_quant), known before any tensor is read."""
        return RuntimeInfo(self.format.label, self.options.backend.name, self.options.act_quant)

    def linear(self, module: str, shape: tuple[int, int]) -> RuntimeLinear:
        return load_linear(self.format, self.source, module, shape, self.options)

    def norm(self, module: str, dim: int) -> RMSNorm:
        weight = self.source.read_shape_checked(f"{module}.weight", (dim,), self.options.device, self.options.dtype)
        return RMSNorm(weight, self.config.rms_norm_eps)

    def expert(self, index: int, expert: int) -> Expert:
        """Expert `expert` of decoder layer `index`."""
        c, prefix = self.config, f"model.layers.{index}.mlp.experts.{expert}"
        width, hidden = c.moe_intermediate_size, c.hidden_size
        return Expert(
            gate_proj=self.linear(f"{prefix}.gate_proj", (width, hidden)),
            up_proj=self.linear(f"{prefix}.up_proj", (width, hidden)),
            down_proj=self.linear(f"{prefix}.down_proj", (hidden, width)),
        )

    def layer(self, index: int, experts: bool = True) -> DecoderLayer:
        """Decoder layer `index` with all its experts, or (`experts=False`) with none: its attention, norms and
        router, for a caller that reads the experts one at a time (`expert`)."""
        c, prefix = self.config, f"model.layers.{index}"
        hidden, q_width, kv_width = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        attention = Attention(
            c,
            q_proj=self.linear(f"{prefix}.self_attn.q_proj", (q_width, hidden)),
            k_proj=self.linear(f"{prefix}.self_attn.k_proj", (kv_width, hidden)),
            v_proj=self.linear(f"{prefix}.self_attn.v_proj", (kv_width, hidden)),
            o_proj=self.linear(f"{prefix}.self_attn.o_proj", (hidden, q_width)),
            q_norm=self.norm(f"{prefix}.self_attn.q_norm", c.head_dim),
            k_norm=self.norm(f"{prefix}.self_attn.k_norm", c.head_dim),
        )
        modules = [self.expert(index, e) for e in range(c.num_experts)] if experts else []
        moe = MoeBlock(c, self.linear(f"{prefix}.mlp.gate", (c.num_experts, hidden)), modules)
        return DecoderLayer(
            attention,
            moe,
            self.norm(f"{prefix}.input_layernorm", hidden),
            self.norm(f"{prefix}.post_attention_layernorm", hidden),
            self.rotary,
        )

    def model(self, stream_layers: bool = False) -> Qwen3MoeModel:
        """The whole model, layers resident or (`stream_layers`) read on demand by `self.layer`."""
        c, device, dtype = self.config, self.options.device, self.options.dtype
        embed = self.source.read_shape_checked(
            "model.embed_tokens.weight", (c.vocab_size, c.hidden_size), device, dtype
        )
        if c.tie_word_embeddings and not self.source.has("lm_head.weight"):
            lm_head: RuntimeLinear = DenseLinear(embed, self.options.backend)
        else:
            lm_head = self.linear("lm_head", (c.vocab_size, c.hidden_size))
        norm = self.norm("model.norm", c.hidden_size)
        info = self.info
        if stream_layers:
            return Qwen3MoeModel(c, embed, norm, lm_head, layer_loader=self.layer, info=info)
        layers = [self.layer(index) for index in range(c.num_layers)]
        return Qwen3MoeModel(c, embed, norm, lm_head, layers=layers, info=info)


def load_layer(
    checkpoint: Checkpoint | str | Path,
    layer_idx: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    backend: str = "torch",
    act_quant: bool | None = None,
) -> DecoderLayer:
    """Decoder layer `layer_idx` of a checkpoint, runnable on its own: `layer(hidden [B, T, H], positions)`."""
    return CheckpointLoader(checkpoint, device, dtype, backend, act_quant).layer(layer_idx)


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    backend: str = "torch",
    stream_layers: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    act_quant: bool | None = None,
    cache_dequantized: bool = False,
) -> Qwen3MoeModel:
    """Load a BF16, hf-fp8, compressed-tensors FP8_BLOCK or W4A16 (pack-quantized) Qwen3-MoE checkpoint;
    `model(ids [B, T])` gives float32 logits [B, T, vocab].

    dtype: compute dtype of activations and dense weights (quantised weights are dequantised to it per call).
    backend: "torch" (dequantising reference) or "triton" (needs qtools_kernels, Triton and CUDA).
    stream_layers: keep one decoder layer in memory at a time (see `Qwen3MoeModel.forward_streamed`).
    act_quant: simulate the served model's dynamic per-token-group FP8 activation quantisation in FP8 linears;
        None (default) follows the checkpoint's quantization_config, i.e. on for FP8 block-wise checkpoints.
    cache_dequantized: keep every quantised weight's dequantised copy after its first use: the same results,
        decoding several times faster on the torch backend, memory of a compute-dtype copy of the model.
    `model.info` records the resolved format, backend and act_quant. Raises QtoolsError for an unreadable or
    unsupported checkpoint, naming the file or key.
    """
    return CheckpointLoader(path, device, dtype, backend, act_quant, cache_dequantized).model(stream_layers)
