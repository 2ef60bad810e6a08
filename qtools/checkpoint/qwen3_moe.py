"""What a Qwen3-MoE checkpoint holds on disk: tensor names, their families and the shapes config.json implies.

The config is read by `qtools.checkpoint.config` (every function here also takes the raw config.json dict).
"""

from __future__ import annotations

import re

from qtools.checkpoint.config import ModelConfig

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")
# An expert's module or any of its tensors (`weight`, and the scales and codes quantised formats add).
_EXPERT_ANY = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj(\.weight\w*)?")


def module_of(name: str) -> str:
    """The module a tensor name belongs to: the name without its last part when that is a `weight*` tensor
    (`weight`, or what quantised formats store beside or instead of it: `weight_scale`, `weight_packed`, ...)."""
    module, _, last = name.rpartition(".")
    return module if module and last.startswith("weight") else name


def layer_and_expert(name: str) -> tuple[int | None, int | None]:
    """(layer index, expert index) a tensor or module name carries, None where it carries none."""
    layer_match = _LAYER.fullmatch(name)
    if not layer_match:
        return None, None
    expert_match = _EXPERT_ANY.fullmatch(layer_match.group(2))
    return int(layer_match.group(1)), int(expert_match.group(1)) if expert_match else None


def family(name: str) -> str:
    """A tensor's module family, e.g. `experts.gate_proj`, `self_attn.q_proj`, `router`, `norm`, `embed_tokens`."""
    module = module_of(name)
    if module == "model.embed_tokens":
        return "embed_tokens"
    if module == "lm_head":
        return "lm_head"
    if module.endswith("norm"):
        return "norm"
    layer_match = _LAYER.fullmatch(module)
    rest = layer_match.group(2) if layer_match else module
    if rest == "mlp.gate":
        return "router"
    expert = re.fullmatch(r"mlp\.experts\.\d+\.(\w+)", rest)
    if expert:
        return f"experts.{expert.group(1)}"
    return rest


def model_config(config: dict | ModelConfig) -> ModelConfig:
    """`config` parsed (a config.json dict) or as given (already a `ModelConfig`); raises QtoolsError."""
    return config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)


def _layer_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's non-expert tensors, by name suffix."""
    q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return {
        "input_layernorm.weight": (c.hidden_size,),
        "post_attention_layernorm.weight": (c.hidden_size,),
        "self_attn.q_proj.weight": (q_width, c.hidden_size),
        "self_attn.k_proj.weight": (kv_width, c.hidden_size),
        "self_attn.v_proj.weight": (kv_width, c.hidden_size),
        "self_attn.o_proj.weight": (c.hidden_size, q_width),
        "self_attn.q_norm.weight": (c.head_dim,),
        "self_attn.k_norm.weight": (c.head_dim,),
        "mlp.gate.weight": (c.num_experts, c.hidden_size),
    }


def _expert_shapes(c: ModelConfig) -> dict[str, tuple[int, int]]:
    return {
        "gate_proj": (c.moe_intermediate_size, c.hidden_size),
        "up_proj": (c.moe_intermediate_size, c.hidden_size),
        "down_proj": (c.hidden_size, c.moe_intermediate_size),
    }


def expected_shapes(config: dict | ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a BF16 Qwen3-MoE checkpoint with this config must hold, name -> shape, in on-disk order.

    With tied embeddings (`tie_word_embeddings`) `lm_head.weight` is optional and left out (transformers does
    not save it). Raises QtoolsError when `config` is not a usable Qwen3-MoE config.
    """
    c = model_config(config)
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.hidden_size)}
    layer_shapes, expert_shapes = _layer_shapes(c), _expert_shapes(c)
    for layer in range(c.num_layers):
        prefix = f"model.layers.{layer}."
        shapes.update({prefix + suffix: shape for suffix, shape in layer_shapes.items()})
        for expert in range(c.num_experts):
            for proj, shape in expert_shapes.items():
                shapes[f"{prefix}mlp.experts.{expert}.{proj}.weight"] = shape
    shapes["model.norm.weight"] = (c.hidden_size,)
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, c.hidden_size)
    return shapes


def expected_shape(name: str, config: dict | ModelConfig) -> tuple[int, ...] | None:
    """The BF16 shape config.json implies for a weight tensor name, or None for names it says nothing about."""
    c = model_config(config)
    fixed = {
        "model.embed_tokens.weight": (c.vocab_size, c.hidden_size),
        "lm_head.weight": (c.vocab_size, c.hidden_size),
        "model.norm.weight": (c.hidden_size,),
    }
    if name in fixed:
        return fixed[name]
    layer_match = _LAYER.fullmatch(name)
    if not layer_match:
        return None
    rest = layer_match.group(2)
    expert_match = _EXPERT.fullmatch(rest)
    if expert_match:
        return _expert_shapes(c)[f"{expert_match.group(2)}_proj"]
    return _layer_shapes(c).get(rest)


def check_against_config(
    name: str, shape: tuple[int, ...], config: dict | ModelConfig, shown: str | None = None
) -> str | None:
    """A message when a tensor's name or shape disagrees with config.json, else None. `shown` names the tensor
    in the message instead of `name` (a quantised module whose dense `name` is stored as other tensors)."""
    c = model_config(config)
    name_shown = shown or name
    layer, expert = layer_and_expert(name)
    if layer is not None and layer >= c.num_layers:
        return f"{name_shown}: layer {layer} but config.json has num_hidden_layers={c.num_layers}"
    if expert is not None and expert >= c.num_experts:
        return f"{name_shown}: expert {expert} but config.json has num_experts={c.num_experts}"
    expected = expected_shape(name, c)
    if expected is not None and tuple(shape) != expected:
        return f"{name_shown}: shape {tuple(shape)} but config.json implies {expected}"
    return None
