"""report.md: verdicts, headline figures, per-layer table, worst modules and every mismatching prompt."""

from __future__ import annotations

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

if TYPE_CHECKING:
    from qtools.check.result import CheckResult


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + [
        "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows
    ]


def _fence(text: str, language: str = "") -> list[str]:
    return [f"````{language}", text, "````"]


def render_markdown(result: CheckResult) -> str:
    """The Markdown report."""
    meta, figures = result.meta, result.figures
    lines = [
        f"# qtools check: {verdict_title(result)}",
        "",
        f"- reference: `{meta['reference']}` ({meta['reference_format']})",
        f"- quantised: `{meta['quantised']}` ({meta['quantised_format']}, activation quantisation "
        f"{'on' if meta['quantised_act_quant'] else 'off'})",
        f"- engine {meta['engine']} on {meta['device']}, {meta['dtype']}, suites {', '.join(meta['suites'])}, "
        f"seed {meta['seed']}, chat template sha256 `{meta['chat_template_sha256'][:16]}…`",
        f"- padded vocabulary: {meta['padded_vocab_columns_masked']} logit columns >= {meta['valid_vocab']} "
        "(the tokenizer's size) masked to -inf in both models before the softmax",
        f"- run time {fmt(result.timings_s.get('total'))} s",
        "",
        *(f"> **Warning:** {warning}\n" for warning in result.warnings),
        "## Thresholds",
        "",
    ]
    lines += _table(VERDICT_HEADER, [verdict_row(v) for v in shown_verdicts(result)])
    lines += ["", "## Figures", ""]
    lines += _table(["figure", "value"], [[label, value] for label, value in headline(figures)])
    per_layer = figures.get("layers", {}).get("per_layer", [])
    if per_layer:
        columns = [
            key
            for key in (
                "output_sqnr_db",
                "update_sqnr_db",
                "cumulative_sqnr_db",
                "weight_sqnr_min_db",
                "weight_sqnr_db",
            )
            if key in per_layer[0]
        ]
        lines += ["", "## Per layer (SQNR, dB)", ""]
        lines += _table(
            ["layer", *columns], [[str(row["layer"]), *(fmt(row[c]) for c in columns)] for row in per_layer]
        )
    worst = worst_rows(figures)
    if worst:
        lines += ["", "## Worst modules (weight SQNR)", ""]
        lines += _table(WORST_HEADER, worst)
    mismatches = tool_mismatches(result)
    if mismatches:
        lines += ["", f"## Tool prompts where the replies differ ({len(mismatches)})", ""]
        for record in mismatches:
            flip = f", flip {record['flip']}" if record["flip"] else ""
            lines += [
                f"### {record['id']}{flip}",
                "",
                f"Request: {record['request']}",
                f"Expected: `{record['expected_calls']}`",
                f"Reference calls: `{record['reference']['calls']}`; quantised calls: `{record['quantised']['calls']}`",
                "",
                *_fence(record["diff"], "diff"),
                "",
            ]
    differing = fim_diffs(result)
    if differing:
        lines += ["", f"## FIM middles that differ ({len(differing)})", ""]
        for record in differing:
            lines += [f"### {record['id']}", "", *_fence(record["diff"], "diff"), ""]
    return "\n".join(lines).rstrip() + "\n"
