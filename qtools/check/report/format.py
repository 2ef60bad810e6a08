"""Number formatting, headline figures and the table contents shared by the Markdown and HTML reports."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qtools.check.result import CheckResult

VERDICT_HEADER = ["key", "bound", "threshold", "value", "status"]
WORST_HEADER = ["module", "format", "SQNR dB"]


def fmt(value: Any, digits: int = 4) -> str:
    """A figure as text: `digits` significant digits; 'nan' / 'inf' / '-inf' for non-finite figures, 'n/a' for
    missing ones (not measured)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


def pct(value: Any) -> str:
    """A rate in [0, 1] as a percentage with one decimal ('nan' for NaN, 'n/a' when not measured)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "n/a"
    if math.isnan(value):
        return "nan"
    return f"{100 * value:.1f}%"


def headline(figures: dict) -> list[tuple[str, str]]:
    """(label, value) rows of the most important figures that were measured, in report order."""
    rows: list[tuple[str, str]] = []
    distribution = figures.get("distribution")
    if distribution:
        kl = distribution["kl"]
        rows += [
            ("tokens scored", fmt(distribution["tokens"])),
            *(
                [("tokens with a non-finite KL (NaN/Inf logits)", fmt(distribution["non_finite_tokens"]))]
                if distribution.get("non_finite_tokens")
                else []
            ),
            ("KL mean / median (nats)", f"{fmt(kl['mean'])} / {fmt(kl['median'])}"),
            ("KL p99 / p99.9 / max", f"{fmt(kl['p99'])} / {fmt(kl['p99.9'])} / {fmt(kl['max'])}"),
            ("top-1 agreement", pct(distribution["top1_agreement"])),
            ("Δp on reference token (mean)", fmt(distribution["delta_p"]["mean"])),
            (
                "perplexity ref / quant (ratio)",
                f"{fmt(distribution['ppl_ref'])} / {fmt(distribution['ppl_quant'])} ({fmt(distribution['ppl_ratio'])})",
            ),
        ]
    generation = figures.get("generation")
    if generation:
        rows.append(("greedy continuations identical", pct(generation["exact_match_rate"])))
        rows.append(("first divergence (median token)", fmt(generation["first_divergence_median"])))
    tools = figures.get("tools")
    if tools:
        rows += [
            ("tool prompts", fmt(tools["count"])),
            ("valid format ref / quant", f"{pct(tools['valid_format_ref'])} / {pct(tools['valid_format_quant'])}"),
            (
                "same name / arguments / calls",
                " / ".join(pct(tools[k]) for k in ("same_name", "same_arguments", "same_calls")),
            ),
            ("correct ref / quant", f"{pct(tools['correct_ref'])} / {pct(tools['correct_quant'])}"),
            (
                "flips (correct→wrong, wrong→correct)",
                f"{tools['flips']} ({tools['flips_correct_to_wrong']}, {tools['flips_wrong_to_correct']})",
            ),
        ]
    fim = figures.get("fim")
    if fim:
        rows += [
            ("FIM middles identical to reference", pct(fim["same_as_reference"])),
            ("FIM exact vs truth ref / quant", f"{pct(fim['exact_ref'])} / {pct(fim['exact_quant'])}"),
        ]
    weights = figures.get("weights")
    if weights:
        rows.append(
            ("weight SQNR min / median (dB)", f"{fmt(weights['sqnr_min_db'])} / {fmt(weights['sqnr_median_db'])}")
        )
    layers = figures.get("layers", {})
    if "update_sqnr_min_db" in layers:
        rows.append(
            (
                "lowest layer-update SQNR (dB)",
                f"{fmt(layers['update_sqnr_min_db'])} (layer {layers['worst_layer_by_update']})",
            )
        )
    return rows


def verdict_title(result: CheckResult) -> str:
    return "PASSED" if result.passed else f"FAILED ({len(result.failures)} threshold(s) missed)"


def shown_verdicts(result: CheckResult) -> list[dict]:
    """The thresholds that were evaluated (not switched off)."""
    return [v for v in result.verdicts if v["status"] != "off"]


def verdict_row(verdict: dict) -> list[str]:
    return [
        verdict["key"],
        verdict["direction"],
        fmt(verdict["threshold"]),
        fmt(verdict["value"]),
        verdict["status"].upper(),
    ]


def worst_rows(figures: dict) -> list[list[str]]:
    """Rows of the worst-modules table (empty when the weights suite did not run)."""
    return [[w["module"], w["format"], fmt(w["sqnr_db"])] for w in (figures.get("weights") or {}).get("worst", [])]


def tool_mismatches(result: CheckResult) -> list[dict]:
    """Tool prompts whose two replies differ."""
    return [record for record in result.details.get("tools", []) if not record["same_text"]]


def fim_diffs(result: CheckResult) -> list[dict]:
    """FIM prompts whose two middles differ."""
    return [record for record in result.details.get("fim", []) if "diff" in record]
