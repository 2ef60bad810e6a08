"""Rotary position embeddings (RoPE), plain or YaRN-scaled.

YaRN follows transformers' `_compute_yarn_parameters`: each frequency pair is blended between the original
frequency (extrapolation, fast-rotating dimensions) and the frequency divided by `factor` (interpolation, slow
dimensions) by a linear ramp between the correction dimensions for `beta_fast` and `beta_slow` rotations over
`original_max_position_embeddings`; cos and sin are multiplied by the attention factor `0.1 ln(factor) + 1`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qtools.runtime.config import ModelConfig, YarnScaling


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _correction_dim(rotations: float, dim: int, base: float, max_positions: int) -> float:
    """The (fractional) dimension index whose wavelength fits `rotations` full turns into `max_positions`."""
    return dim * math.log(max_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(dim: int, base: float, yarn: YarnScaling) -> tuple[torch.Tensor, float]:
    """YaRN inverse frequencies float32 [dim // 2] and the cos/sin attention factor."""
    if yarn.attention_factor is not None:
        attention_factor = float(yarn.attention_factor)
    elif yarn.mscale and yarn.mscale_all_dim:
        attention_factor = _yarn_mscale(yarn.factor, yarn.mscale) / _yarn_mscale(yarn.factor, yarn.mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(yarn.factor)
    original = yarn.original_max_position_embeddings
    low = _correction_dim(yarn.beta_fast, dim, base, original)
    high = _correction_dim(yarn.beta_slow, dim, base, original)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the ramp would divide by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    inv_freq = (1.0 / (yarn.factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, attention_factor


def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies float32 [head_dim // 2] and the factor cos and sin are scaled by (1.0 without YaRN)."""
    dim = config.head_dim
    if config.rope_scaling is not None:
        return yarn_inv_freq(dim, config.rope_theta, config.rope_scaling)
    return 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)), 1.0


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions, computed in float32 and cast to the activations' dtype."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions int [T] or [B, T] -> (cos, sin), each `dtype` [..., T, head_dim]."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_factor).to(dtype), (angles.sin() * self.attention_factor).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, heads, T, head_dim] by cos/sin [T, head_dim] or [B, T, head_dim] (half-split pairing)."""
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return x * cos + _rotate_half(x) * sin
