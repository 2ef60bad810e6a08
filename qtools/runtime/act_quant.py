"""Simulated dynamic FP8 activation quantisation, as FP8 block-wise checkpoints are served (vLLM, SGLang).

`activation_scheme: dynamic` (hf-fp8) and compressed-tensors' dynamic `strategy: group, group_size: 128` input
activations mean: at run time, before every FP8 linear, each token's input is cut into groups of 128 along the
input dimension (the last group may be partial), each group gets `scale = max(amax(|group|), 1e-10) / 448` in
float32 and is rounded to float8_e4m3fn codes `clamp(x / scale, -448, 448)`. The GEMM then sees `codes * scale`;
this module returns exactly that product, so a dequantising matmul reproduces the served numerics.
"""

from __future__ import annotations

import math

import torch

FP8_ACT_DTYPE = torch.float8_e4m3fn
FP8_ACT_MAX = 448.0
# vLLM's per_token_group_quant_fp8 floors the amax so an all-zero group gets a finite scale.
ACT_SCALE_EPS = 1e-10


def fake_quant_fp8_per_token_group(x: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """Quantise x [..., K] per token and group of `group_size` to e4m3 and dequantise: same shape and dtype."""
    in_features = x.shape[-1]
    groups = math.ceil(in_features / group_size)
    flat = x.reshape(-1, in_features).to(torch.float32)
    padded = torch.nn.functional.pad(flat, (0, groups * group_size - in_features)).view(-1, groups, group_size)
    scale = padded.abs().amax(dim=-1, keepdim=True).clamp_min(ACT_SCALE_EPS) / FP8_ACT_MAX
    codes = (padded / scale).clamp(-FP8_ACT_MAX, FP8_ACT_MAX).to(FP8_ACT_DTYPE)
    dequantized = (codes.to(torch.float32) * scale).view(-1, groups * group_size)[:, :in_features]
    return dequantized.reshape(x.shape).to(x.dtype)
