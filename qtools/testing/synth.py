"""Small Qwen3-MoE checkpoints in the real on-disk layout, with random weights, for tests and benchmarks.

Per-expert tensor names, several shards and an index, config.json, generation_config.json and a few of the
non-weight files real releases carry. Dimensions need not be multiples of 128.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qtools.checkpoint.qwen3_moe import expected_shapes
from qtools.checkpoint.safetensors_io import TensorSpec, write_atomic
from qtools.checkpoint.writer import write_json, write_sharded_checkpoint


@dataclass(frozen=True)
class SynthSpec:
    """Dimensions of a synthetic checkpoint (defaults: small, with sizes that are not multiples of 128)."""

    num_layers: int = 2
    hidden_size: int = 320
    moe_intermediate_size: int = 200
    num_experts: int = 4
    num_experts_per_tok: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 96
    vocab_size: int = 500
    shard_bytes: int = 2_000_000
    dtype: str = "bfloat16"

    def config(self) -> dict:
        """config.json contents in the shape of Qwen3-Coder-480B-A35B-Instruct's."""
        return {
            "architectures": ["Qwen3MoeForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "decoder_sparse_step": 1,
            "eos_token_id": 151645,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.moe_intermediate_size * 3,
            "max_position_embeddings": 4096,
            "max_window_layers": self.num_layers,
            "mlp_only_layers": [],
            "model_type": "qwen3_moe",
            "moe_intermediate_size": self.moe_intermediate_size,
            "norm_topk_prob": True,
            "num_attention_heads": self.num_attention_heads,
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_hidden_layers": self.num_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "output_router_logits": False,
            "rms_norm_eps": 1e-6,
            "rope_scaling": None,
            "rope_theta": 10000000,
            "router_aux_loss_coef": 0.0,
            "shared_expert_intermediate_size": 0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": self.dtype,
            "use_cache": True,
            "use_qk_norm": True,
            "use_sliding_window": False,
            "vocab_size": self.vocab_size,
        }

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor name and shape, in the order real checkpoints are sharded (by layer)."""
        return expected_shapes(self.config())


# Every dimension a multiple of 128, so INT4 groups of 32, 64 or 128 tile every weight's input dimension (the
# default's 320 and 200 do not); still two shards.
GROUP_ALIGNED_SPEC = SynthSpec(hidden_size=256, moe_intermediate_size=128, head_dim=64, shard_bytes=1_500_000)


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype):
    if len(shape) == 1:
        return (1.0 + 0.05 * torch.randn(shape, generator=generator)).to(dtype)
    # Heavy-ish tails, like trained weights, so block scales vary.
    values = torch.randn(shape, generator=generator) * (shape[1] ** -0.5)
    values *= 1 + 3 * (torch.rand(shape[0], 1, generator=generator) ** 4)
    return values.to(dtype)


def make_checkpoint(path: str | Path, spec: SynthSpec | None = None, seed: int = 0) -> Path:
    """Write a synthetic Qwen3-MoE checkpoint to `path` (created) through the writer convert uses; returns the
    path. One tensor at a time is held, so benchmark-sized checkpoints fit in memory."""
    spec = spec or SynthSpec()
    path = Path(path)
    dtype = getattr(torch, spec.dtype)
    generator = torch.Generator().manual_seed(seed)
    specs = [TensorSpec(name, dtype, shape) for name, shape in spec.tensor_shapes().items()]
    tensors = ((s.name, _random_tensor(s.name, s.shape, generator, dtype)) for s in specs)
    write_sharded_checkpoint(path, specs, tensors, spec.shard_bytes)
    write_json(path / "config.json", spec.config())
    generation = {
        "bos_token_id": 151643,
        "do_sample": True,
        "eos_token_id": [151645, 151643],
        "pad_token_id": 151643,
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    write_json(path / "generation_config.json", generation)
    write_atomic(
        path / "README.md", b"# Synthetic Qwen3-MoE checkpoint\n\nRandom weights, built by qtools for tests.\n"
    )
    write_atomic(path / "LICENSE", b"Apache-2.0 (synthetic test data)\n")
    write_json(path / "tokenizer_config.json", {"model_max_length": 4096, "synth_spec": asdict(spec)})
    return path
