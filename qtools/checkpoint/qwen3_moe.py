"""What a Qwen3-MoE checkpoint holds on disk: tensor names, their families and the shapes config.json implies."""

from __future__ import annotations

import re

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")


def layer_and_expert(name: str) -> tuple[int | None, int | None]:
    """(layer index, expert index) a tensor name carries, None where it carries none."""
    layer_match = _LAYER.fullmatch(name)
    if not layer_match:
        return None, None
    expert_match = _EXPERT.fullmatch(layer_match.group(2))
    return int(layer_match.group(1)), int(expert_match.group(1)) if expert_match else None


def family(name: str) -> str:
    """A tensor's module family, e.g. `experts.gate_proj`, `self_attn.q_proj`, `router`, `norm`, `embed_tokens`."""
    module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".weight_scale_inv", ".weight_scale")) else name
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


def _dims(config: dict) -> dict[str, int] | None:
    try:
        heads = config["num_attention_heads"]
        return {
            "hidden": config["hidden_size"],
            "vocab": config["vocab_size"],
            "heads": heads,
            "kv_heads": config.get("num_key_value_heads", heads),
            "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
            "moe_width": config["moe_intermediate_size"],
            "experts": config["num_experts"],
            "layers": config["num_hidden_layers"],
        }
    except KeyError:
        return None


def _layer_shapes(d: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's non-expert tensors, by name suffix."""
    return {
        "input_layernorm.weight": (d["hidden"],),
        "post_attention_layernorm.weight": (d["hidden"],),
        "self_attn.q_proj.weight": (d["heads"] * d["head_dim"], d["hidden"]),
        "self_attn.k_proj.weight": (d["kv_heads"] * d["head_dim"], d["hidden"]),
        "self_attn.v_proj.weight": (d["kv_heads"] * d["head_dim"], d["hidden"]),
        "self_attn.o_proj.weight": (d["hidden"], d["heads"] * d["head_dim"]),
        "self_attn.q_norm.weight": (d["head_dim"],),
        "self_attn.k_norm.weight": (d["head_dim"],),
        "mlp.gate.weight": (d["experts"], d["hidden"]),
    }


def _expert_shapes(d: dict[str, int]) -> dict[str, tuple[int, int]]:
    return {
        "gate_proj": (d["moe_width"], d["hidden"]),
        "up_proj": (d["moe_width"], d["hidden"]),
        "down_proj": (d["hidden"], d["moe_width"]),
    }


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a BF16 Qwen3-MoE checkpoint with this config holds, name -> shape, in on-disk order."""
    d = _dims(config)
    if d is None:
        return {}
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (d["vocab"], d["hidden"])}
    for layer in range(d["layers"]):
        prefix = f"model.layers.{layer}."
        shapes.update({prefix + suffix: shape for suffix, shape in _layer_shapes(d).items()})
        for expert in range(d["experts"]):
            for proj, shape in _expert_shapes(d).items():
                shapes[f"{prefix}mlp.experts.{expert}.{proj}.weight"] = shape
    shapes["model.norm.weight"] = (d["hidden"],)
    shapes["lm_head.weight"] = (d["vocab"], d["hidden"])
    return shapes


def expected_shape(name: str, config: dict) -> tuple[int, ...] | None:
    """The BF16 shape config.json implies for a weight tensor name, or None for names it says nothing about."""
    d = _dims(config)
    if d is None:
        return None
    fixed = {
        "model.embed_tokens.weight": (d["vocab"], d["hidden"]),
        "lm_head.weight": (d["vocab"], d["hidden"]),
        "model.norm.weight": (d["hidden"],),
    }
    if name in fixed:
        return fixed[name]
    layer_match = _LAYER.fullmatch(name)
    if not layer_match:
        return None
    rest = layer_match.group(2)
    expert_match = _EXPERT.fullmatch(rest)
    if expert_match:
        return _expert_shapes(d)[f"{expert_match.group(2)}_proj"]
    return _layer_shapes(d).get(rest)


def check_against_config(name: str, shape: tuple[int, ...], config: dict) -> str | None:
    """A message when a tensor's name or shape disagrees with config.json, else None."""
    layer, expert = layer_and_expert(name)
    layers = config.get("num_hidden_layers")
    if layer is not None and layers is not None and layer >= layers:
        return f"{name}: layer {layer} but config.json has num_hidden_layers={layers}"
    experts = config.get("num_experts")
    if expert is not None and experts is not None and expert >= experts:
        return f"{name}: expert {expert} but config.json has num_experts={experts}"
    expected = expected_shape(name, config)
    if expected is not None and tuple(shape) != expected:
        return f"{name}: shape {tuple(shape)} but config.json implies {expected}"
    return None
