"""report.md: verdicts, headline figures, per-layer table, worst modules and every mismatching prompt."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtools.check.report.format import fmt, headline

if TYPE_CHECKING:
    from qtools.check.pipeline import CheckResult


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
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failures)} threshold(s) missed)"
    lines = [
        f"# qtools check: {verdict}",
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
        "## Thresholds",
        "",
    ]
    rows = [
        [v["key"], v["direction"], fmt(v["threshold"]), fmt(v["value"]), v["status"].upper()]
        for v in result.verdicts
        if v["status"] != "off"
    ]
    lines += _table(["key", "bound", "threshold", "value", "status"], rows)
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
    weights = figures.get("weights")
    if weights and weights["worst"]:
        lines += ["", "## Worst modules (weight SQNR)", ""]
        lines += _table(
            ["module", "format", "SQNR dB"], [[w["module"], w["format"], fmt(w["sqnr_db"])] for w in weights["worst"]]
        )
    mismatches = [record for record in result.details.get("tools", []) if not record["same_text"]]
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
    fim_diffs = [record for record in result.details.get("fim", []) if "diff" in record]
    if fim_diffs:
        lines += ["", f"## FIM middles that differ ({len(fim_diffs)})", ""]
        for record in fim_diffs:
            lines += [f"### {record['id']}", "", *_fence(record["diff"], "diff"), ""]
    return "\n".join(lines).rstrip() + "\n"
