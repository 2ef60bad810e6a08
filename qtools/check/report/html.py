"""report.html: one self-contained page (inline CSS and SVG plots, no scripts or external assets)."""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING

from qtools.check.report.format import (
    VERDICT_HEADER,
    WORST_HEADER,
    fim_diffs,
    fmt,
    headline,
    shown_verdicts,
    tool_mismatches,
    verdict_row,
    verdict_title,
    worst_rows,
)
from qtools.check.report.svg import bar_chart, histogram

if TYPE_CHECKING:
    from qtools.check.result import CheckResult

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1000px; }
h1.pass { color: #1f7a3a; } h1.fail { color: #b3261e; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
tr.fail td { background: #fde7e6; } tr.pass td { background: #eaf6ec; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
.meta { color: #555; font-size: 13px; }
.warning { background: #fff4d6; border-left: 4px solid #c98a00; padding: 6px 10px; }
"""
LAYER_SERIES = {
    "update_sqnr_db": "layer update (same input)",
    "output_sqnr_db": "layer output (same input)",
    "cumulative_sqnr_db": "hidden state (cumulative)",
    "weight_sqnr_min_db": "min weight SQNR",
}


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def report_plots(figures: dict) -> dict[str, str]:
    """The report's plots as standalone SVG documents, by file stem: `kl_histogram`, `layer_sqnr` and
    `tool_fim_agreement`, each only when its suite ran (the model card of `qtools publish` copies them)."""
    out = {}
    distribution = figures.get("distribution")
    if distribution:
        hist = distribution["kl_histogram"]
        out["kl_histogram"] = histogram(
            "Per-token KL(P_ref || P_quant), nats", hist["edges"], hist["counts"], hist["underflow"], "tokens"
        )
    per_layer = figures.get("layers", {}).get("per_layer", [])
    series = {
        label: [row.get(key) for row in per_layer]
        for key, label in LAYER_SERIES.items()
        if per_layer and key in per_layer[0]
    }
    if series:
        finite = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
        cap = max(finite, default=60.0) + 10.0
        out["layer_sqnr"] = bar_chart(
            "Per-layer SQNR (dB)", [str(row["layer"]) for row in per_layer], series, "dB", cap=cap
        )
    tools, fim = figures.get("tools"), figures.get("fim")
    if tools or fim:
        categories, values = [], []
        if tools:
            for key, label in (
                ("valid_format_ref", "valid format (ref)"),
                ("valid_format_quant", "valid format (quant)"),
                ("same_name", "same name"),
                ("same_arguments", "same arguments"),
                ("same_calls", "same calls"),
                ("correct_ref", "correct (ref)"),
                ("correct_quant", "correct (quant)"),
            ):
                categories.append(label)
                values.append(tools[key])
        if fim:
            for key, label in (
                ("same_as_reference", "FIM same"),
                ("exact_ref", "FIM exact (ref)"),
                ("exact_quant", "FIM exact (quant)"),
            ):
                categories.append(label)
                values.append(fim[key])
        out["tool_fim_agreement"] = bar_chart(
            "Tool-call and FIM agreement", categories, {"rate": values}, "share", y_max=1.0
        )
    return out


def _details(result: CheckResult) -> str:
    parts = []
    per_layer = result.figures.get("layers", {}).get("per_layer", [])
    columns = [key for key in (*LAYER_SERIES, "weight_sqnr_db") if per_layer and key in per_layer[0]]
    if columns:
        rows = [[str(row["layer"]), *(fmt(row[key]) for key in columns)] for row in per_layer]
        parts.append("<h2>Per layer (SQNR, dB)</h2>" + _table(["layer", *columns], rows))
    worst = worst_rows(result.figures)
    if worst:
        parts.append("<h2>Worst modules (weight SQNR)</h2>" + _table(WORST_HEADER, worst))
    mismatches = tool_mismatches(result)
    if mismatches:
        parts.append(f"<h2>Tool prompts where the replies differ ({len(mismatches)})</h2>")
        for record in mismatches:
            flip = f" — flip {record['flip']}" if record["flip"] else ""
            parts.append(
                f"<h3>{escape(record['id'])}{escape(flip)}</h3><p>{escape(record['request'])}</p>"
                f"<p class=meta>expected {escape(str(record['expected_calls']))}<br>"
                f"reference {escape(str(record['reference']['calls']))}<br>"
                f"quantised {escape(str(record['quantised']['calls']))}</p>"
                f"<pre>{escape(record['diff'])}</pre>"
            )
    differing = fim_diffs(result)
    if differing:
        parts.append(f"<h2>FIM middles that differ ({len(differing)})</h2>")
        parts += [f"<h3>{escape(r['id'])}</h3><pre>{escape(r['diff'])}</pre>" for r in differing]
    return "".join(parts)


def render_html(result: CheckResult) -> str:
    """The HTML report."""
    meta = result.meta
    verdict = verdict_title(result)
    shown = shown_verdicts(result)
    verdicts = _table(VERDICT_HEADER, [verdict_row(v) for v in shown], [v["status"] for v in shown])
    figures = _table(["figure", "value"], [[label, value] for label, value in headline(result.figures)])
    info = (
        f"reference {meta['reference']} ({meta['reference_format']}) — quantised {meta['quantised']} "
        f"({meta['quantised_format']}); engine {meta['engine']} on {meta['device']} ({meta['dtype']}); suites "
        f"{', '.join(meta['suites'])}; seed {meta['seed']}; chat template sha256 {meta['chat_template_sha256']}; "
        f"{meta['padded_vocab_columns_masked']} padded logit columns masked; qtools {meta['versions']['qtools']}, "
        f"torch {meta['versions']['torch']}; {fmt(result.timings_s.get('total'))} s"
    )
    body = "".join(
        [
            f"<h1 class={'pass' if result.passed else 'fail'}>qtools check: {escape(verdict)}</h1>",
            f"<p class=meta>{escape(info)}</p>",
            *(f"<p class=warning><b>Warning:</b> {escape(warning)}</p>" for warning in result.warnings),
            "<h2>Thresholds</h2>",
            verdicts,
            "<h2>Figures</h2>",
            figures,
            "<h2>Plots</h2>",
            *(f"<div>{svg}</div>" for svg in report_plots(result.figures).values()),
            _details(result),
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>qtools check report</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
