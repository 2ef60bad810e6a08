"""The toy model's configuration: Qwen3-Coder's architecture (FACTS §1) at a size a laptop CPU can train.

`config_dict` is what lands in `config.json`, in the key layout of the Qwen3-Coder release (`num_experts`,
`rope_theta`, `torch_dtype`), plus transformers 5's `dtype`; `hf_config` turns it into a `Qwen3MoeConfig`.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen3MoeConfig

from qtools.toy.recipe import ToyArchitecture


def padded_vocab_size(tokenizer_size: int, multiple: int) -> int:
    """Smallest multiple of `multiple` strictly above `tokenizer_size`, so the logits carry padded columns that
    are never valid targets, as the real model's 151936 logits over 151669 tokens do."""
    return (tokenizer_size // multiple + 1) * multiple


def config_dict(arch: ToyArchitecture, vocab_size: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """`config.json` content for a toy model with `vocab_size` logits."""
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": pad_id,
        "decoder_sparse_step": 1,
        "dtype": "bfloat16",
        "eos_token_id": eos_id,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "hidden_size": arch.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": 4 * arch.hidden_size,
        "max_position_embeddings": arch.max_position_embeddings,
        "max_window_layers": arch.num_hidden_layers,
        "mlp_only_layers": [],
        "model_type": "qwen3_moe",
        "moe_intermediate_size": arch.moe_intermediate_size,
        "norm_topk_prob": True,
        "num_attention_heads": arch.num_attention_heads,
        "num_experts": arch.num_experts,
        "num_experts_per_tok": arch.num_experts_per_tok,
        "num_hidden_layers": arch.num_hidden_layers,
        "num_key_value_heads": arch.num_key_value_heads,
        "output_router_logits": False,
        "pad_token_id": pad_id,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": arch.rope_theta,
        "router_aux_loss_coef": 0.001,
        "shared_expert_intermediate_size": 0,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_qk_norm": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }


def hf_config(config: dict[str, Any]) -> Qwen3MoeConfig:
    """A transformers `Qwen3MoeConfig` from `config_dict` output (eager attention-free defaults untouched)."""
    return Qwen3MoeConfig.from_dict(config)
