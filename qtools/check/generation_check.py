"""Greedy continuations of held-out code by both models: exact-match rate and where they first diverge."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch


def continuation_prompts(windows: list[torch.Tensor], count: int, prompt_tokens: int) -> list[list[int]]:
    """`count` prompts of `prompt_tokens` ids, spread evenly over the scored windows (int64 [T] each)."""
    starts = [(w, s) for w in windows for s in range(0, w.numel() - prompt_tokens + 1, prompt_tokens)]
    if not starts or count == 0:
        return []
    step = max(1, len(starts) // count)
    return [window[s : s + prompt_tokens].tolist() for window, s in starts[::step][:count]]


def first_divergence(ref: Sequence[int], quant: Sequence[int]) -> int | None:
    """Index of the first differing token (a shorter sequence differs where it ends); None when identical."""
    for index, (a, b) in enumerate(zip(ref, quant, strict=False)):
        if a != b:
            return index
    return None if len(ref) == len(quant) else min(len(ref), len(quant))


def compare_continuations(ref: list[list[int]], quant: list[list[int]]) -> dict:
    """Exact-match rate of greedy continuations, and the first-divergence positions of those that differ
    (median, mean, each prompt's), plus the mean share of tokens generated before a divergence."""
    positions = [first_divergence(a, b) for a, b in zip(ref, quant, strict=True)]
    diverged = [p for p in positions if p is not None]
    shares = [
        1.0 if p is None else p / max(1, max(len(a), len(b))) for p, a, b in zip(positions, ref, quant, strict=True)
    ]
    return {
        "prompts": len(positions),
        "exact_match_rate": (len(positions) - len(diverged)) / len(positions) if positions else None,
        "first_divergence_median": statistics.median(diverged) if diverged else None,
        "first_divergence_mean": statistics.fmean(diverged) if diverged else None,
        "matched_prefix_share": statistics.fmean(shares) if shares else None,
        "first_divergence": positions,
    }
