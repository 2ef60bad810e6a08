"""Pure functions comparing a reference model with a quantised one: per-token KL, top-1 agreement, Δp,
perplexity, quantiles and SQNR.

Padded vocabulary: checkpoints carry more logit columns than the tokenizer has entries (Qwen3-Coder: 151936
logits for 151669 tokens). Columns `>= valid_vocab` are never a real token, so both models' logits are
masked to -inf there before the softmax, which is the same as dropping those columns; it is done the same way
for both models so neither gains or loses probability mass the other does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KL_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)


@dataclass
class TokenComparison:
    """Per-token figures of one scored window, all float32 or bool [N] (N predicted tokens).

    kl: KL(P_ref || P_quant) in nats; ref_nll / quant_nll: -log p of the actual next token; top1_same: the
    two argmaxes agree; delta_p: p_quant(next) - p_ref(next).
    """

    kl: torch.Tensor
    ref_nll: torch.Tensor
    quant_nll: torch.Tensor
    top1_same: torch.Tensor
    delta_p: torch.Tensor

    def cpu(self) -> TokenComparison:
        """The same figures on the CPU."""
        return TokenComparison(**{name: getattr(self, name).cpu() for name in self.__dataclass_fields__})

    @classmethod
    def concat(cls, parts: list[TokenComparison]) -> TokenComparison:
        """All windows' tokens in one comparison (empty tensors when `parts` is empty)."""
        if not parts:
            empty = torch.empty(0)
            return cls(empty, empty, empty, torch.empty(0, dtype=torch.bool), empty)
        merged = {name: torch.cat([getattr(part, name) for part in parts]) for name in cls.__dataclass_fields__}
        return cls(**merged)


def mask_padded_vocab(logits: torch.Tensor, valid_vocab: int) -> torch.Tensor:
    """logits [..., V] -> float32 [..., V] with columns >= valid_vocab set to -inf (see module docstring)."""
    masked = logits.float().clone()
    masked[..., valid_vocab:] = float("-inf")
    return masked


def compare_tokens(
    ref_logits: torch.Tensor, quant_logits: torch.Tensor, targets: torch.Tensor, valid_vocab: int
) -> TokenComparison:
    """Compare two models' next-token distributions.

    ref_logits, quant_logits: [N, V] (any float dtype); targets: int64 [N], the actual next tokens
    (< valid_vocab). Columns >= valid_vocab are masked to -inf in both before the softmax; the masked columns
    are dropped rather than carried as -inf so the KL sum has no `0 * (-inf - -inf)` terms.
    """
    if ref_logits.shape != quant_logits.shape:
        raise ValueError(f"logit shapes differ: {tuple(ref_logits.shape)} vs {tuple(quant_logits.shape)}")
    valid = min(valid_vocab, ref_logits.shape[-1])
    ref_log = torch.log_softmax(ref_logits[..., :valid].float(), dim=-1)
    quant_log = torch.log_softmax(quant_logits[..., :valid].float(), dim=-1)
    kl = (ref_log.exp() * (ref_log - quant_log)).sum(dim=-1).clamp_min(0.0)
    ref_target = ref_log.gather(-1, targets[:, None]).squeeze(-1)
    quant_target = quant_log.gather(-1, targets[:, None]).squeeze(-1)
    return TokenComparison(
        kl=kl,
        ref_nll=-ref_target,
        quant_nll=-quant_target,
        top1_same=ref_log.argmax(dim=-1) == quant_log.argmax(dim=-1),
        delta_p=quant_target.exp() - ref_target.exp(),
    )


def difference(a: float | None, b: float | None) -> float | None:
    """a - b, or None ("not measured") when either is None."""
    return None if a is None or b is None else a - b


def quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of values [N] with linear interpolation between order statistics (numpy's default);
    NaN when empty. Sorts instead of `torch.quantile`, which refuses more than 16M elements."""
    if values.numel() == 0:
        return math.nan
    ordered = values.double().flatten().sort().values
    position = q * (ordered.numel() - 1)
    low = math.floor(position)
    high = min(low + 1, ordered.numel() - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def kl_summary(kl: torch.Tensor) -> dict[str, float]:
    """mean, median, p90, p95, p99, p99.9 and max of per-token KL values [N] (nats)."""
    summary = {"mean": float(kl.double().mean()) if kl.numel() else math.nan}
    names = {0.5: "median", 0.9: "p90", 0.95: "p95", 0.99: "p99", 0.999: "p99.9"}
    summary.update({names[q]: quantile(kl, q) for q in KL_QUANTILES})
    summary["max"] = float(kl.max()) if kl.numel() else math.nan
    return summary


def perplexity(nll: torch.Tensor) -> float:
    """exp(mean negative log-likelihood) over nll [N] (nats); NaN when empty, inf past float64's range (a
    broken model's logits of 1e30 give such NLLs)."""
    if not nll.numel():
        return math.nan
    try:
        return math.exp(float(nll.double().mean()))
    except OverflowError:
        return math.inf


def sqnr_db(reference: torch.Tensor, approximation: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio 10 log10(sum ref^2 / sum (ref - approx)^2) in dB, computed in float64.

    reference, approximation: same shape, any float dtype. inf when identical; -inf when the reference is all
    zeros and the approximation is not.
    """
    signal, noise = energies(reference, approximation)
    return sqnr_from_energies(signal, noise)


def energies(reference: torch.Tensor, approximation: torch.Tensor) -> tuple[float, float]:
    """(sum ref^2, sum (ref - approx)^2) in float64, to accumulate an SQNR over many tensors or tokens."""
    ref = reference.double()
    return float(ref.square().sum()), float((ref - approximation.double()).square().sum())


def sqnr_from_energies(signal: float, noise: float) -> float:
    """10 log10(signal / noise) dB; inf for zero noise, -inf for zero signal with noise or for infinite noise
    (an Inf in the approximation); NaN when either energy is NaN or the signal is infinite (a NaN in either
    tensor, an Inf in the reference): no ratio to report, and `worst_first` ranks it below everything."""
    if math.isnan(signal) or math.isnan(noise) or math.isinf(signal):
        return math.nan
    if noise == 0.0:
        return math.inf
    if signal == 0.0 or math.isinf(noise):
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def worst_first(value: float) -> tuple[int, float]:
    """Sort key that orders figures lowest first with NaN before everything, -inf included: a NaN figure is
    a measurement that went wrong (a NaN weight or logit), never one that a minimum may silently drop."""
    return (0, 0.0) if math.isnan(value) else (1, value)


def lowest(values: list[float]) -> float:
    """The lowest of `values`, NaN when any is NaN (Python's `min` drops NaN unless it comes first); inf when
    empty."""
    return min(values, key=worst_first, default=math.inf)


def lowest_index(values: list[float]) -> int:
    """Index of the first lowest of `values` (non-empty), NaN counting as the lowest."""
    return min(range(len(values)), key=lambda index: worst_first(values[index]))


def log_histogram(values: torch.Tensor, low: float = 1e-6, high: float = 10.0, bins_per_decade: int = 4) -> dict:
    """Counts of values [N] in log-spaced bins from `low` to `high`; values below `low` (including exact
    zeros) go to an underflow count, values above `high` to the last bin. Returns {"edges", "counts",
    "underflow"}, edges of length len(counts) + 1."""
    decades = math.log10(high) - math.log10(low)
    count = max(1, round(decades * bins_per_decade))
    edges = [low * 10 ** (index / bins_per_decade) for index in range(count + 1)]
    flat = values.double().flatten()
    underflow = int((flat < low).sum())
    kept = flat[flat >= low].clamp_max(high * (1 - 1e-12))
    counts = torch.histc(kept.log10(), bins=count, min=math.log10(low), max=math.log10(high)) if kept.numel() else None
    counts_list = [int(c) for c in counts.tolist()] if counts is not None else [0] * count
    return {"edges": edges, "counts": counts_list, "underflow": underflow}


def compare_topk(
    ref: list[dict[int, float]], quant: list[dict[int, float]], targets: list[int], vocab: int
) -> TokenComparison:
    """`compare_tokens` from top-k log-probabilities only (what vLLM's `prompt_logprobs` returns).

    ref, quant: per position {token id: log-prob} holding each model's top-k and the actual next token;
    targets: the actual next tokens. Exact: NLLs, Δp, top-1 agreement (both argmaxes are in the top-k).
    Approximate: KL is computed over the reference's listed tokens plus one bucket for the rest of the
    vocabulary (by the data-processing inequality a lower bound on the full KL when the quantised model's
    probabilities are known); a listed reference token missing from the quantised model's list gets that
    model's remaining mass spread evenly over its unlisted tokens (`vocab` in all).
    """
    kl, ref_nll, quant_nll, same, delta = [], [], [], [], []
    floor = 1e-12
    for ref_lp, quant_lp, target in zip(ref, quant, targets, strict=True):
        quant_p = {token: math.exp(lp) for token, lp in quant_lp.items()}
        spread = max(1.0 - sum(quant_p.values()), 0.0) / max(1, vocab - len(quant_p))
        total, mass_ref, mass_quant = 0.0, 0.0, 0.0
        for token, lp in ref_lp.items():
            p, q = math.exp(lp), max(quant_p.get(token, spread), floor)
            total += p * (lp - math.log(q))
            mass_ref, mass_quant = mass_ref + p, mass_quant + q
        rest_ref, rest_quant = max(1.0 - mass_ref, 0.0), max(1.0 - mass_quant, floor)
        if rest_ref > 0:
            total += rest_ref * math.log(rest_ref / rest_quant)
        kl.append(max(total, 0.0))
        ref_nll.append(-ref_lp[target])
        quant_nll.append(-quant_lp[target])
        same.append(max(ref_lp, key=ref_lp.__getitem__) == max(quant_lp, key=quant_lp.__getitem__))
        delta.append(math.exp(quant_lp[target]) - math.exp(ref_lp[target]))
    return TokenComparison(
        kl=torch.tensor(kl, dtype=torch.float32),
        ref_nll=torch.tensor(ref_nll, dtype=torch.float32),
        quant_nll=torch.tensor(quant_nll, dtype=torch.float32),
        top1_same=torch.tensor(same, dtype=torch.bool),
        delta_p=torch.tensor(delta, dtype=torch.float32),
    )
