"""qtools.check metrics against hand-computed values: KL, top-1, Δp, perplexity, quantiles, SQNR, histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qtools.check.metrics import (
    compare_tokens,
    compare_topk,
    kl_summary,
    log_histogram,
    lowest,
    lowest_index,
    mask_padded_vocab,
    perplexity,
    quantile,
    sqnr_db,
    sqnr_from_energies,
)
from qtools.check.sqnr import layer_weight_summary, weights_section, worst_modules


def _logits(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_identical_distributions_have_zero_kl_full_agreement_and_no_delta() -> None:
    logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 3, 5, 10, 2, 2, 9])
    result = compare_tokens(logits, logits.clone(), targets, valid_vocab=11)
    assert torch.equal(result.kl, torch.zeros(7))
    assert result.top1_same.all()
    assert torch.equal(result.delta_p, torch.zeros(7))
    assert torch.equal(result.ref_nll, result.quant_nll)


def test_kl_nll_delta_p_and_top1_of_known_distributions() -> None:
    ref = _logits([0.5, 0.5, 0.0 + 1e-30], [0.7, 0.2, 0.1])
    quant = _logits([0.9, 0.1, 1e-30], [0.2, 0.7, 0.1])
    result = compare_tokens(ref, quant, torch.tensor([1, 0]), valid_vocab=3)
    first = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    second = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.7)
    assert result.kl.tolist() == pytest.approx([first, second], rel=1e-5)
    assert result.ref_nll.tolist() == pytest.approx([-math.log(0.5), -math.log(0.7)], rel=1e-6)
    assert result.quant_nll.tolist() == pytest.approx([-math.log(0.1), -math.log(0.2)], rel=1e-6)
    assert result.delta_p.tolist() == pytest.approx([0.1 - 0.5, 0.2 - 0.7], abs=1e-6)
    # Row 0: both argmaxes are token 0 (0.5 vs 0.5 ties resolve to the first index); row 1: 0 vs 1.
    assert result.top1_same.tolist() == [True, False]


def test_padded_columns_are_masked_identically_for_both_models() -> None:
    """Columns >= valid_vocab never count: garbage there (even a huge logit in one model only) changes
    nothing, and the result equals the one computed on -inf-masked logits."""
    generator = torch.Generator().manual_seed(1)
    ref, quant = torch.randn(5, 8, generator=generator), torch.randn(5, 8, generator=generator)
    targets = torch.tensor([0, 1, 2, 3, 4])
    clean = compare_tokens(ref[:, :6], quant[:, :6], targets, valid_vocab=6)
    ref_padded, quant_padded = ref.clone(), quant.clone()
    quant_padded[:, 6:] = 50.0
    padded = compare_tokens(ref_padded, quant_padded, targets, valid_vocab=6)
    masked = compare_tokens(mask_padded_vocab(ref, 6)[:, :6], mask_padded_vocab(quant, 6)[:, :6], targets, 6)
    for name in ("kl", "ref_nll", "quant_nll", "delta_p"):
        assert torch.allclose(getattr(padded, name), getattr(clean, name))
        assert torch.allclose(getattr(masked, name), getattr(clean, name))
    assert torch.equal(padded.top1_same, clean.top1_same)
    assert torch.isinf(mask_padded_vocab(ref, 6)[:, 6:]).all()


def test_topk_estimate_is_exact_for_nll_and_top1_and_close_for_kl() -> None:
    generator = torch.Generator().manual_seed(2)
    ref = torch.randn(6, 40, generator=generator) * 3
    quant = ref + 0.3 * torch.randn(6, 40, generator=generator)
    targets = torch.tensor([1, 5, 7, 30, 39, 0])
    exact = compare_tokens(ref, quant, targets, valid_vocab=40)

    def top(logits: torch.Tensor, k: int) -> list[dict[int, float]]:
        logp = torch.log_softmax(logits.double(), -1)
        rows = []
        for row, target in zip(logp, targets.tolist(), strict=True):
            keep = {int(i): float(row[i]) for i in row.topk(k).indices}
            keep[target] = float(row[target])
            rows.append(keep)
        return rows

    full = compare_topk(top(ref, 40), top(quant, 40), targets.tolist(), vocab=40)
    assert torch.allclose(full.kl, exact.kl, atol=1e-5)
    approx = compare_topk(top(ref, 10), top(quant, 10), targets.tolist(), vocab=40)
    assert torch.allclose(approx.ref_nll, exact.ref_nll, atol=1e-5)
    assert torch.allclose(approx.delta_p, exact.delta_p, atol=1e-6)
    assert torch.equal(approx.top1_same, exact.top1_same)
    assert (approx.kl >= 0).all() and (approx.kl <= exact.kl * 1.5 + 1e-4).all()


def test_quantile_matches_numpy_and_kl_summary_keys() -> None:
    values = torch.rand(1001, generator=torch.Generator().manual_seed(3))
    for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values.double().numpy(), q)), rel=1e-12)
    summary = kl_summary(values)
    assert list(summary) == ["mean", "median", "p90", "p95", "p99", "p99.9", "max"]
    assert summary["max"] == pytest.approx(float(values.max()))
    assert math.isnan(quantile(torch.empty(0), 0.5)) and math.isnan(kl_summary(torch.empty(0))["mean"])


def test_perplexity_of_uniform_predictions_is_the_vocabulary_size() -> None:
    assert perplexity(torch.full((10,), math.log(50.0))) == pytest.approx(50.0)


def test_sqnr_known_values() -> None:
    signal = torch.ones(100)
    assert sqnr_db(signal, signal + 0.1) == pytest.approx(20.0)
    assert sqnr_db(signal, signal * 0.99) == pytest.approx(40.0)
    assert sqnr_db(signal, signal.clone()) == math.inf
    assert sqnr_db(torch.zeros(4), torch.ones(4)) == -math.inf
    bf16 = torch.randn(64, 64, generator=torch.Generator().manual_seed(4))
    # bfloat16 keeps 8 significant bits: about 6 dB per bit, ~52 dB.
    assert 48 < sqnr_db(bf16, bf16.to(torch.bfloat16)) < 56


def test_log_histogram_counts_every_value_once() -> None:
    values = torch.tensor([0.0, 5e-7, 1e-6, 2e-6, 0.5, 9.9, 1e3], dtype=torch.float64)
    hist = log_histogram(values, low=1e-6, high=10.0, bins_per_decade=1)
    assert hist["underflow"] == 2
    assert len(hist["edges"]) == len(hist["counts"]) + 1 == 8
    assert sum(hist["counts"]) + hist["underflow"] == values.numel()
    assert hist["counts"][0] == 2 and hist["counts"][-1] == 2  # [1e-6, 1e-5) and the clamped top bin


def test_sqnr_of_non_finite_noise() -> None:
    """NaN noise gives a NaN SQNR and infinite noise -inf dB (not a math domain error)."""
    assert math.isnan(sqnr_from_energies(1.0, math.nan)) and math.isnan(sqnr_from_energies(math.nan, 1.0))
    assert sqnr_from_energies(1.0, math.inf) == -math.inf
    weights = torch.ones(8)
    assert math.isnan(sqnr_db(weights, torch.where(torch.arange(8) == 3, math.nan, 1.0)))
    assert sqnr_db(weights, torch.where(torch.arange(8) == 3, math.inf, 1.0)) == -math.inf


def test_lowest_counts_nan_as_the_lowest() -> None:
    assert math.isnan(lowest([31.0, math.nan, 5.0])) and lowest([31.0, 5.0, math.inf]) == 5.0
    assert lowest_index([31.0, 5.0, math.nan, math.nan]) == 2 and lowest_index([3.0, -math.inf, 1.0]) == 1
    assert lowest([]) == math.inf


def test_a_module_with_non_finite_noise_is_the_worst() -> None:
    """A NaN (or Inf) in a dequantised weight makes its module the worst one, counted as changed, and the
    minimum SQNR of its layer and of the checkpoint NaN (-inf), so no bound can pass it."""

    def record(module: str, signal: float, noise: float) -> dict:
        return {
            "module": module,
            "format": "Fp8BlockLinear",
            "sqnr_db": sqnr_from_energies(signal, noise),
            "signal": signal,
            "noise": noise,
        }

    records = [record("a", 100.0, 0.1), record("b", 100.0, math.nan), record("c", 100.0, 0.0), record("d", 1.0, 0.5)]
    summary = layer_weight_summary(records)
    assert math.isnan(summary["weight_sqnr_min_db"]) and summary["modules_changed"] == 3
    section = weights_section(records)
    assert math.isnan(section["sqnr_min_db"]) and section["modules_changed"] == 3
    assert [w["module"] for w in section["worst"]] == ["b", "d", "a"]
    assert [w["module"] for w in worst_modules([record("x", 1.0, math.inf), *records])][:2] == ["b", "x"]


def test_perplexity_past_float_range_is_inf() -> None:
    assert perplexity(torch.full((4,), 1e30)) == math.inf and math.isnan(perplexity(torch.tensor([math.nan])))
