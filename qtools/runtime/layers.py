"""The Qwen3-MoE decoder layer: pre-norm attention (GQA, per-head q/k RMSNorm, RoPE) and a routed-expert MoE.

Every module is built from already-loaded tensors and linear layers (see `loading.py`), and attribute names
follow the checkpoint's, so `layer.named_modules()` gives `self_attn.q_proj`, `mlp.experts.3.down_proj`, ...
A `DecoderLayer` runs on its own over captured hidden states: layer-by-layer calibration uses this same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qtools.runtime.cache import KVCache
from qtools.runtime.config import ModelConfig
from qtools.runtime.rope import RotaryEmbedding, apply_rope
from qtools.runtime.weights import RuntimeLinear


class RMSNorm(nn.Module):
    """x / rms(x) * weight over the last dimension, normalised in float32. Buffer: `weight` [dim]."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.register_buffer("weight", weight)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., dim] -> same shape and dtype."""
        wide = x.to(torch.float32)
        wide = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * wide.to(x.dtype)


class Attention(nn.Module):
    """Causal grouped-query self-attention with RMSNorm on each query and key head before RoPE."""

    def __init__(
        self,
        config: ModelConfig,
        q_proj: RuntimeLinear,
        k_proj: RuntimeLinear,
        v_proj: RuntimeLinear,
        o_proj: RuntimeLinear,
        q_norm: RMSNorm,
        k_norm: RMSNorm,
    ):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = q_proj, k_proj, v_proj, o_proj
        self.q_norm, self.k_norm = q_norm, k_norm

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """x [B, T, hidden] -> [B, T, hidden]; with a cache, the T tokens follow the `cache.length` cached ones."""
        batch, length, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(batch, length, self.num_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(k, v)
        mask = None
        if past and length > 1:
            # Query i sits at position past + i and sees keys 0..past + i.
            mask = torch.arange(past + length, device=x.device) <= past + torch.arange(length, device=x.device)[:, None]
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=not past and length > 1, scale=self.head_dim**-0.5, enable_gqa=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim))


class Expert(nn.Module):
    """One routed expert: down(silu(gate(x)) * up(x))."""

    def __init__(self, gate_proj: RuntimeLinear, up_proj: RuntimeLinear, down_proj: RuntimeLinear):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = gate_proj, up_proj, down_proj

    def intermediate(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, hidden] -> silu(gate(x)) * up(x) [N, width]: what down_proj sees."""
        return F.silu(self.gate_proj(x)) * self.up_proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, hidden] -> [N, hidden]."""
        return self.down_proj(self.intermediate(x))


class MoeBlock(nn.Module):
    """Router softmax (float32) -> top-k -> renormalise (norm_topk_prob) -> weighted sum of the chosen experts.

    Only experts that receive tokens run; their outputs are accumulated in float32 in ascending expert order.
    """

    def __init__(self, config: ModelConfig, gate: RuntimeLinear, experts: list[Expert]):
        super().__init__()
        self.top_k, self.norm_topk_prob = config.top_k, config.norm_topk_prob
        self.gate = gate
        self.experts = nn.ModuleList(experts)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, hidden] -> (weights float32 [N, top_k], expert ids int64 [N, top_k])."""
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)
        weights, ids = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden] -> same shape and dtype. The gate's backend computes the experts."""
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = self.route(flat)
        return self.gate.backend.moe(self, flat, weights, ids).to(x.dtype).view_as(x)

    def reference_experts(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """x [N, hidden], routing [N, top_k] -> float32 [N, hidden]: each expert that receives tokens runs once
        through its linears; outputs are weighted and accumulated in float32 in ascending expert order."""
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for expert in ids.unique().tolist():
            tokens, slots = (ids == expert).nonzero(as_tuple=True)
            routed = self.experts[expert](x[tokens]).to(torch.float32) * weights[tokens, slots, None]
            out.index_add_(0, tokens, routed)
        return out


class DecoderLayer(nn.Module):
    """hidden + attention(norm(hidden)), then + moe(norm(...)). Holds its own RoPE tables so it runs alone."""

    def __init__(
        self,
        self_attn: Attention,
        mlp: MoeBlock,
        input_layernorm: RMSNorm,
        post_attention_layernorm: RMSNorm,
        rotary: RotaryEmbedding,
    ):
        super().__init__()
        self.self_attn, self.mlp = self_attn, mlp
        self.input_layernorm, self.post_attention_layernorm = input_layernorm, post_attention_layernorm
        self.rotary = rotary

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """hidden [B, T, hidden] (compute dtype), positions int64 [T] or [B, T] -> hidden [B, T, hidden].

        With a cache, the T tokens continue the sequence it holds and their keys/values are appended to it.
        """
        hidden = self.attend(hidden, positions, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))

    def attend(self, hidden: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The attention half of `forward`: hidden + attention(norm(hidden)), same shapes; the MoE input is
        `post_attention_layernorm` of it."""
        cos, sin = self.rotary(positions.to(hidden.device), hidden.dtype)
        return hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, cache)
