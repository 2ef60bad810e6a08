"""Teacher-forced comparison of two models on held-out text, layer by layer: both models' hidden states are
pushed through decoder layer i before layer i + 1 is read, so a streamed model is read once per check.

At layer i, for every sequence, with h the reference's input to the layer:
- the reference output ref_i(h) and the quantised layer's output quant_i(h) on the *same* input give the
  layer's own error: `output_sqnr_db` (whole output, residual included) and `update_sqnr_db` (the residual
  update ref_i(h) - h against quant_i(h) - h, the part the layer computes; more sensitive);
- the quantised model's own hidden state (after its layers 0..i) against the reference's gives the error
  accumulated so far: `cumulative_sqnr_db`.
At the end each sequence's logits from both models are compared token by token (`metrics.compare_tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qtools.check.metrics import (
    TokenComparison,
    compare_tokens,
    energies,
    kl_summary,
    log_histogram,
    perplexity,
    quantile,
    sqnr_from_energies,
)
from qtools.runtime import DecoderLayer, Qwen3MoeModel

ENERGY_KEYS = ("output", "update", "cumulative")


@dataclass
class PairedForward:
    """State of a layer-by-layer walk over `sequences` (int64 [T_i] each) through two models on one device;
    holds both models' hidden states [1, T_i, hidden] (compute dtype) of every sequence meanwhile."""

    ref: Qwen3MoeModel
    quant: Qwen3MoeModel
    sequences: list[torch.Tensor]
    ref_hidden: list[torch.Tensor] = field(default_factory=list)
    quant_hidden: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.ref_hidden = [self.ref.embed(s.reshape(1, -1)) for s in self.sequences]
            self.quant_hidden = [self.quant.embed(s.reshape(1, -1)) for s in self.sequences]

    @torch.no_grad()
    def step(self, index: int, ref_layer: DecoderLayer, quant_layer: DecoderLayer) -> dict:
        """Push every sequence through decoder layer `index` of both models; returns the layer's
        SQNR figures (see module docstring), accumulated in float64 over all tokens."""
        sums = {key: [0.0, 0.0] for key in ENERGY_KEYS}
        for i, sequence in enumerate(self.sequences):
            positions = torch.arange(sequence.numel(), device=self.ref.device)
            given = self.ref_hidden[i]
            ref_out = ref_layer(given, positions)
            local = quant_layer(given, positions)
            self.quant_hidden[i] = quant_layer(self.quant_hidden[i], positions)
            pairs = {
                "output": (ref_out, local),
                "update": (ref_out.float() - given.float(), local.float() - given.float()),
                "cumulative": (ref_out, self.quant_hidden[i]),
            }
            for key, (reference, approximation) in pairs.items():
                signal, noise = energies(reference, approximation)
                sums[key][0] += signal
                sums[key][1] += noise
            self.ref_hidden[i] = ref_out
        figures = {"layer": index, **{f"{key}_sqnr_db": sqnr_from_energies(*sums[key]) for key in ENERGY_KEYS}}
        return figures

    @torch.no_grad()
    def finish(self, valid_vocab: int) -> TokenComparison:
        """Logits of both models for every sequence, compared position by position (the last position of each
        window predicts nothing and is dropped); frees the hidden states."""
        parts = []
        for i, sequence in enumerate(self.sequences):
            ref_logits = self.ref.logits(self.ref_hidden[i])[0, :-1]
            quant_logits = self.quant.logits(self.quant_hidden[i])[0, :-1]
            targets = sequence[1:].to(ref_logits.device)
            parts.append(compare_tokens(ref_logits, quant_logits, targets, valid_vocab).cpu())
        self.ref_hidden, self.quant_hidden = [], []
        return TokenComparison.concat(parts)


def summarize(tokens: TokenComparison, windows: int) -> dict:
    """The distribution figures of the report: KL statistics and histogram, top-1 agreement, Δp, perplexities,
    and how many tokens have a non-finite KL (a NaN or Inf logit; their NaN then fails every KL bound).
    With no token scored every figure is None ("not measured"), never NaN."""
    count = int(tokens.kl.numel())
    kl = kl_summary(tokens.kl)
    figures = {
        "tokens": count,
        "windows": windows,
        "non_finite_tokens": int((~torch.isfinite(tokens.kl)).sum()),
        "kl": kl if count else dict.fromkeys(kl),
        "kl_histogram": log_histogram(tokens.kl),
    }
    if not count:
        delta = dict.fromkeys(("mean", "p1", "median", "p99"))
        return {
            **figures,
            "top1_agreement": None,
            "delta_p": delta,
            "ppl_ref": None,
            "ppl_quant": None,
            "ppl_ratio": None,
        }
    ppl_ref, ppl_quant = perplexity(tokens.ref_nll), perplexity(tokens.quant_nll)
    return {
        **figures,
        "top1_agreement": float(tokens.top1_same.float().mean()),
        "delta_p": {
            "mean": float(tokens.delta_p.double().mean()),
            "p1": quantile(tokens.delta_p, 0.01),
            "median": quantile(tokens.delta_p, 0.5),
            "p99": quantile(tokens.delta_p, 0.99),
        },
        "ppl_ref": ppl_ref,
        "ppl_quant": ppl_quant,
        "ppl_ratio": ppl_quant / ppl_ref,
    }
