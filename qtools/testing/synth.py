"""Small Qwen3-MoE checkpoints in the real on-disk layout, with random weights, for tests and benchmarks.

Per-expert tensor names, several shards and an index, config.json, generation_config.json and a few of the
non-weight files real releases carry. Dimensions need not be multiples of 128.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from qtools.checkpoint.qwen3_moe import expected_shapes


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


def _random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype):
    if len(shape) == 1:
        return (1.0 + 0.05 * torch.randn(shape, generator=generator)).to(dtype)
    # Heavy-ish tails, like trained weights, so block scales vary.
    values = torch.randn(shape, generator=generator) * (shape[1] ** -0.5)
    values *= 1 + 3 * (torch.rand(shape[0], 1, generator=generator) ** 4)
    return values.to(dtype)


def make_checkpoint(path: str | Path, spec: SynthSpec | None = None, seed: int = 0) -> Path:
    """Write a synthetic Qwen3-MoE checkpoint to `path` (created); returns the path."""
    spec = spec or SynthSpec()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, spec.dtype)
    generator = torch.Generator().manual_seed(seed)
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    sizes = [0]
    itemsize = torch.empty((), dtype=dtype).element_size()
    for name, shape in spec.tensor_shapes().items():
        nbytes = itemsize * torch.Size(shape).numel()
        if sizes[-1] and sizes[-1] + nbytes > spec.shard_bytes:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = shape
        sizes[-1] += nbytes
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: _random_tensor(n, s, generator, dtype) for n, s in names.items()}
        save_file(tensors, path / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
        del tensors
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(spec.config(), indent=2))
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
    (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
    (path / "README.md").write_text("# Synthetic Qwen3-MoE checkpoint\n\nRandom weights, built by qtools for tests.\n")
    (path / "LICENSE").write_text("Apache-2.0 (synthetic test data)\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 4096, "synth_spec": asdict(spec)}))
    return path
