"""Every knob of the toy-model build, as one validated pydantic model, and a content hash of it."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ToyArchitecture(BaseModel):
    """The Qwen3-MoE shape: every layer MoE, GQA with q/k norms, untied head, padded vocabulary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_hidden_layers: int = Field(2, ge=1, le=8)
    hidden_size: int = Field(256, ge=128)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    head_dim: int = Field(64, ge=16)
    num_experts: int = Field(8, ge=2)
    num_experts_per_tok: int = Field(2, ge=1)
    moe_intermediate_size: int = Field(256, ge=16)
    vocab_multiple: int = Field(128, ge=1, description="padded vocab: next multiple above the tokenizer size")
    rope_theta: float = 10_000_000.0
    max_position_embeddings: int = 32768

    @model_validator(mode="after")
    def _check(self) -> ToyArchitecture:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads (GQA groups)")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError("num_experts_per_tok cannot exceed num_experts")
        return self


class ToyRecipe(BaseModel):
    """Data, tokenizer, training and gate settings. The defaults are the CI build; tests shrink `steps`,
    sizes and gate prompts for a fast build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    threads: int = Field(1, ge=1, description="torch threads; one is fastest on a shared 2-core machine")
    architecture: ToyArchitecture = ToyArchitecture()
    code_files: int | None = Field(None, ge=1, description="use only the first N training files (tiny builds)")
    vocab_size: int = Field(3000, ge=300, description="learned BPE entries, 256 byte tokens included")
    tokenizer_chats: int = Field(1500, ge=10, description="rendered chats added to the BPE training text")
    seq_len: int = Field(1024, ge=64)
    batch_rows: int = Field(1, ge=1)
    code_rows_per_step: float = Field(0.25, ge=0.0, description="average rows of plain code per batch")
    steps: int = Field(1300, ge=1)
    learning_rate: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    name_loss_weight: float = Field(5.0, ge=0.0, description="loss weight of the function-name tokens of a call")
    code_loss_weight: float = Field(0.5, ge=0.0, description="weight of the code LM loss against the chat loss")
    router_aux_loss_coef: float = 0.01
    chat_mix: dict[str, float] = Field(
        default_factory=lambda: {
            "tool_session": 0.55,
            "bare_call": 0.2,
            "plain_answer": 0.1,
            "coding": 0.05,
            "fim": 0.1,
        }
    )
    max_tools: int = Field(4, ge=1, le=12, description="most tools offered in one conversation")
    max_turns: int = Field(4, ge=1, description="most user requests in one tool conversation")
    gate_tool_prompts: int = Field(48, ge=1)
    gate_plain_prompts: int = Field(8, ge=0)
    gate_fim_prompts: int = Field(8, ge=0)
    gate_max_new_tokens: int = 80
    gate_ppl_tokens: int = Field(16384, ge=64, description="held-out code tokens scored for perplexity")
    gate_min_parseable: float = 0.9
    gate_min_right_name: float = 0.8
    gate_max_ppl_ratio: float = Field(0.5, description="model perplexity / unigram perplexity must stay below")
    enforce_gate: bool = True
    shard_bytes: int = Field(4_000_000, ge=1024, description="largest safetensors shard")

    @model_validator(mode="after")
    def _check(self) -> ToyRecipe:
        unknown = set(self.chat_mix) - {"tool_session", "bare_call", "plain_answer", "coding", "fim"}
        if unknown or not self.chat_mix or min(self.chat_mix.values()) < 0:
            raise ValueError(f"chat_mix takes non-negative weights for known kinds only; unknown: {sorted(unknown)}")
        if self.code_rows_per_step > self.batch_rows:
            raise ValueError("code_rows_per_step cannot exceed batch_rows")
        return self

    def sha256(self) -> str:
        """Hex SHA-256 of the recipe's canonical JSON."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()
