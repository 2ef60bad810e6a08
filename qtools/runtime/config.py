"""The model dimensions the runtime needs, read from a Qwen3-MoE config.json and checked."""

from __future__ import annotations

from dataclasses import dataclass

from qtools.errors import QtoolsError


@dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling parameters (`rope_scaling` with `rope_type`/`type` "yarn"), with transformers' defaults."""

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """A Qwen3-MoE decoder: every layer is attention (GQA, per-head q/k RMSNorm, RoPE) plus a routed-expert MoE."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    moe_intermediate_size: int
    norm_topk_prob: bool
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    rope_scaling: YarnScaling | None = None
    tie_word_embeddings: bool = False

    @classmethod
    def from_dict(cls, config: dict) -> ModelConfig:
        """Parse config.json; raises QtoolsError naming the key for a missing field or an unsupported variant."""
        _check_supported(config)
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            max_positions = int(config.get("max_position_embeddings", 32768))
            rope_theta, scaling = _rope(config, max_positions)
            parsed = cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                num_layers=int(config["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                num_experts=int(config["num_experts"]),
                top_k=int(config["num_experts_per_tok"]),
                moe_intermediate_size=int(config["moe_intermediate_size"]),
                norm_topk_prob=bool(config.get("norm_topk_prob", False)),
                rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=rope_theta,
                max_position_embeddings=max_positions,
                rope_scaling=scaling,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except KeyError as error:
            raise QtoolsError(f"config.json: missing {error.args[0]!r}, which a Qwen3-MoE model needs") from error
        if parsed.num_heads % parsed.num_kv_heads:
            raise QtoolsError(
                f"config.json: num_attention_heads {parsed.num_heads} is not a multiple of "
                f"num_key_value_heads {parsed.num_kv_heads}"
            )
        if not 0 < parsed.top_k <= parsed.num_experts:
            raise QtoolsError(f"config.json: num_experts_per_tok {parsed.top_k} must be in 1..{parsed.num_experts}")
        return parsed


def _check_supported(config: dict) -> None:
    """Refuse Qwen3-MoE variants this runtime does not implement rather than compute something else."""
    if config.get("model_type", "qwen3_moe") != "qwen3_moe":
        raise QtoolsError(f"config.json: model_type {config['model_type']!r}; the runtime implements qwen3_moe only")
    if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step", 1)) != 1:
        raise QtoolsError("config.json: dense-MLP layers (mlp_only_layers / decoder_sparse_step) are not supported")
    if config.get("attention_bias"):
        raise QtoolsError("config.json: attention_bias=true is not supported")
    if config.get("use_sliding_window"):
        raise QtoolsError("config.json: use_sliding_window=true is not supported")
    if config.get("hidden_act", "silu") != "silu":
        raise QtoolsError(f"config.json: hidden_act {config['hidden_act']!r}; only silu is supported")


def _rope(config: dict, max_positions: int) -> tuple[float, YarnScaling | None]:
    """(rope_theta, YaRN scaling or None) from `rope_scaling` (transformers 4) or `rope_parameters` (5)."""
    scaling = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = float(scaling.get("rope_theta") or config.get("rope_theta") or 10000.0)
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type == "default":
        return theta, None
    if rope_type != "yarn":
        raise QtoolsError(f"config.json: rope type {rope_type!r} is not supported (default or yarn)")
    original = int(scaling.get("original_max_position_embeddings") or max_positions)
    factor = scaling.get("factor")
    yarn = YarnScaling(
        factor=float(factor) if factor is not None else max_positions / original,
        original_max_position_embeddings=original,
        beta_fast=float(scaling.get("beta_fast") or 32.0),
        beta_slow=float(scaling.get("beta_slow") or 1.0),
        attention_factor=scaling.get("attention_factor"),
        mscale=scaling.get("mscale"),
        mscale_all_dim=scaling.get("mscale_all_dim"),
        truncate=bool(scaling.get("truncate", True)),
    )
    return theta, yarn
