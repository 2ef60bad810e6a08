"""The one reader of a Qwen3-MoE config.json: `ModelConfig.from_dict(config)`.

It accepts every layout a Qwen3-MoE config is found in (fixtures in tests/fixtures/configs/):
- the Qwen3-Coder release's (transformers 4 era): `num_experts`, `rope_theta`, `rope_scaling`, `torch_dtype`;
- what transformers 5.15 to 5.24 write with `save_pretrained`: `num_local_experts` (`num_experts` is only an
  alias there), `rope_parameters` ({rope_type, rope_theta, ...}), `dtype`; `head_dim` only when it was given.
Keys that may be left out get transformers' defaults; the dimensions are required (every release writes them, and
where transformers has a default it is not the one a reader would guess: a missing `num_key_value_heads` means 4).
Anything else is refused with a `QtoolsError` naming the key: wrong types (`"2"`, `2.0`, `true` for an integer),
non-positive or implausible sizes, contradictory keys, and Qwen3-MoE variants qtools does not implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qtools.errors import QtoolsError

ARCHITECTURE = "Qwen3MoeForCausalLM"
MODEL_TYPE = "qwen3_moe"
# Generous bounds that only a corrupt or hostile config crosses: they keep the tensor-name enumeration of
# `expected_shapes` (num_hidden_layers x (9 + 3 x experts) names; 30,321 for the 480B model) and every size
# computed from the config finite and small.
MAX_DIMENSION = 1 << 24
MAX_IMPLIED_TENSORS = 1_000_000
_DEFAULT_ROPE_THETA = 10_000.0

Size = Annotated[int, Field(gt=0, le=MAX_DIMENSION)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
WeightDtype = Literal["bfloat16", "float16", "float32"]


@dataclass(frozen=True)
class YarnScaling:
    """YaRN RoPE scaling parameters (`rope_type`/`type` "yarn"), with transformers' defaults."""

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
    """A Qwen3-MoE decoder: every layer is attention (GQA, per-head q/k RMSNorm, RoPE) plus a routed-expert MoE.

    `dtype` is the checkpoint's declared weight dtype ("bfloat16", "float16", "float32"), None when undeclared.
    """

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
    dtype: str | None = None

    @classmethod
    def from_dict(cls, config: Any, source: str = "config.json") -> ModelConfig:
        """Parse a config.json object; raises QtoolsError `"{source}: <key>: <what is wrong>"`."""
        if not isinstance(config, dict):
            raise QtoolsError(f"{source}: expected a JSON object, got {type(config).__name__}")
        _check_identity(config, source)
        experts_key = _experts_key(config, source)
        if "head_dim" in config and config["head_dim"] is None:
            raise QtoolsError(f"{source}: head_dim: null; give the per-head width or leave the key out")
        fields = {**config, "num_experts": config[experts_key]} if experts_key else config
        experts_name = experts_key or "num_local_experts (or num_experts)"
        parsed = _validate(_ConfigFile, fields, source, rename={"num_experts": experts_name})
        rope_key, rope = _rope_dict(config, source)
        inherited = {} if rope_key and "rope_theta" in config[rope_key] else {"rope_theta": "rope_theta"}
        rope_file = _validate(_RopeFile, rope, source, prefix=f"{rope_key}." if rope_key else "", rename=inherited)
        return parsed.to_model_config(rope_file, rope_key or "rope_parameters", source)


def _validate(model: type[BaseModel], fields: dict, source: str, prefix: str = "", rename: dict | None = None):
    """`model.model_validate(fields)`, its first error turned into `QtoolsError("{source}: <key>: <what>")`;
    the key is `rename[field]`, else `prefix + field`."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        key = (rename or {}).get(key, prefix + key)
        if first["type"] == "missing":
            raise QtoolsError(f"{source}: {key}: missing; a Qwen3-MoE config.json needs it") from error
        message = first["msg"][0].lower() + first["msg"][1:]
        got = repr(first["input"])
        got = got if len(got) <= 60 else got[:57] + "..."
        raise QtoolsError(f"{source}: {key}: {message} (got {got})") from error


def _check_identity(config: dict, source: str) -> None:
    """Refuse configs that are not a plain Qwen3-MoE causal LM before looking at any dimension."""
    nested = [key for key in ("text_config", "llm_config", "language_config") if isinstance(config.get(key), dict)]
    if nested and "hidden_size" not in config:
        raise QtoolsError(
            f"{source}: the model's dimensions are nested under {nested[0]!r} (a composite or multimodal config); "
            f"qtools handles {ARCHITECTURE} checkpoints whose config.json holds them at the top level"
        )
    model_type = config.get("model_type")
    if model_type != MODEL_TYPE:
        what = "missing" if model_type is None else repr(model_type)
        raise QtoolsError(
            f"{source}: model_type: {what}; qtools handles Qwen3-MoE checkpoints (model_type {MODEL_TYPE!r}), "
            "and transformers needs the key to load the model"
        )
    architectures = config.get("architectures")
    if architectures is not None and (not isinstance(architectures, list) or ARCHITECTURE not in architectures):
        raise QtoolsError(f"{source}: architectures: {architectures!r}; qtools handles {ARCHITECTURE} only")


def _experts_key(config: dict, source: str) -> str | None:
    """Which key holds the expert count: transformers 5 writes `num_local_experts`, the release `num_experts`."""
    present = [key for key in ("num_local_experts", "num_experts") if key in config]
    if len(present) == 2 and config["num_local_experts"] != config["num_experts"]:
        raise QtoolsError(
            f"{source}: num_experts {config['num_experts']!r} and num_local_experts "
            f"{config['num_local_experts']!r} disagree (they name the same count); keep one"
        )
    return present[0] if present else None


def _rope_dict(config: dict, source: str) -> tuple[str | None, dict]:
    """(key it came from, RoPE parameters), as transformers reads them: a non-empty `rope_scaling` replaces
    `rope_parameters`, and a top-level `rope_theta` (else 10000) fills in a missing `rope_theta`."""
    key = next((k for k in ("rope_scaling", "rope_parameters") if config.get(k)), None)
    rope = config[key] if key else {}
    if not isinstance(rope, dict):
        raise QtoolsError(f"{source}: {key}: expected an object (got {rope!r})")
    rope = dict(rope)
    if "rope_theta" not in rope:
        rope["rope_theta"] = config.get("rope_theta", _DEFAULT_ROPE_THETA)
    return key, rope


class _RopeFile(BaseModel):
    """`rope_parameters` / `rope_scaling` as written; None for an optional float means transformers' default."""

    model_config = ConfigDict(strict=True, extra="ignore")

    rope_theta: PositiveFloat
    rope_type: str | None = None
    type: str | None = None
    factor: PositiveFloat | None = None
    original_max_position_embeddings: Size | None = None
    beta_fast: FiniteFloat | None = None
    beta_slow: FiniteFloat | None = None
    attention_factor: PositiveFloat | None = None
    mscale: FiniteFloat | None = None
    mscale_all_dim: FiniteFloat | None = None
    truncate: bool = True
    partial_rotary_factor: PositiveFloat | None = None


class _ConfigFile(BaseModel):
    """config.json's keys, strictly typed (the expert count under `num_experts` whichever key held it)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    vocab_size: Size
    hidden_size: Size
    num_hidden_layers: Size
    num_attention_heads: Size
    num_key_value_heads: Size
    head_dim: Size | None = None
    moe_intermediate_size: Size
    num_experts: Size
    num_experts_per_tok: Size
    norm_topk_prob: bool = False
    rms_norm_eps: PositiveFloat = 1e-6
    max_position_embeddings: Size = 32768
    tie_word_embeddings: bool = False
    dtype: WeightDtype | None = None
    torch_dtype: WeightDtype | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    use_sliding_window: bool = False
    decoder_sparse_step: Size = 1
    mlp_only_layers: list[int] | None = None

    def to_model_config(self, rope: _RopeFile, rope_key: str, source: str) -> ModelConfig:
        """The model these keys describe; raises QtoolsError for contradictions and unsupported variants."""
        self._check(source)
        return ModelConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_hidden_layers,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads,
            # as transformers' attention: getattr(config, "head_dim", hidden_size // num_attention_heads)
            head_dim=self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads,
            num_experts=self.num_experts,
            top_k=self.num_experts_per_tok,
            moe_intermediate_size=self.moe_intermediate_size,
            norm_topk_prob=self.norm_topk_prob,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=rope.rope_theta,
            max_position_embeddings=self.max_position_embeddings,
            rope_scaling=_yarn(rope, self.max_position_embeddings, rope_key, source),
            tie_word_embeddings=self.tie_word_embeddings,
            dtype=self.dtype or self.torch_dtype,  # transformers keeps `dtype` when both are given
        )

    def _check(self, source: str) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise QtoolsError(
                f"{source}: num_attention_heads: {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_size // self.num_attention_heads == 0 and self.head_dim is None:
            raise QtoolsError(
                f"{source}: head_dim: missing, and hidden_size {self.hidden_size} // num_attention_heads "
                f"{self.num_attention_heads} is 0"
            )
        if self.num_experts_per_tok > self.num_experts:
            raise QtoolsError(
                f"{source}: num_experts_per_tok: {self.num_experts_per_tok} exceeds the {self.num_experts} experts"
            )
        implied = self.num_hidden_layers * (9 + 3 * self.num_experts) + 3
        if implied > MAX_IMPLIED_TENSORS:
            raise QtoolsError(
                f"{source}: num_hidden_layers: {self.num_hidden_layers} layers of {self.num_experts} experts imply "
                f"{implied} tensors, more than any real checkpoint (limit {MAX_IMPLIED_TENSORS})"
            )
        if self.mlp_only_layers or self.decoder_sparse_step != 1:
            raise QtoolsError(
                f"{source}: mlp_only_layers / decoder_sparse_step: dense-MLP layers are not supported "
                "(every layer must be MoE)"
            )
        unsupported = {"attention_bias": self.attention_bias, "use_sliding_window": self.use_sliding_window}
        for key, value in unsupported.items():
            if value:
                raise QtoolsError(f"{source}: {key}: true is not supported")
        if self.hidden_act != "silu":
            raise QtoolsError(f"{source}: hidden_act: {self.hidden_act!r}; only silu is supported")


def _yarn(rope: _RopeFile, max_positions: int, key: str, source: str) -> YarnScaling | None:
    """YaRN scaling from the RoPE parameters, None for plain RoPE; refuses the RoPE types the runtime lacks."""
    if rope.partial_rotary_factor not in (None, 1.0):
        raise QtoolsError(f"{source}: {key}.partial_rotary_factor: {rope.partial_rotary_factor}; only 1.0 is supported")
    rope_type = rope.rope_type or rope.type or "default"
    if rope_type == "default":
        return None
    if rope_type != "yarn":
        raise QtoolsError(f"{source}: {key}: rope type {rope_type!r} is not supported (default or yarn)")
    original = rope.original_max_position_embeddings or max_positions
    return YarnScaling(
        factor=rope.factor if rope.factor is not None else max_positions / original,
        original_max_position_embeddings=original,
        beta_fast=rope.beta_fast or 32.0,
        beta_slow=rope.beta_slow or 1.0,
        attention_factor=rope.attention_factor,
        mscale=rope.mscale,
        mscale_all_dim=rope.mscale_all_dim,
        truncate=rope.truncate,
    )
