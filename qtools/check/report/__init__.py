"""The three report files of a check: report.json (every figure), report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtools.check.report.html import render_html
from qtools.check.report.json_report import render_json
from qtools.check.report.markdown import render_markdown

if TYPE_CHECKING:
    from qtools.check.result import CheckResult


REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "report.html"}


def write_reports(result: CheckResult, directory: Path) -> dict[str, str]:
    """Write report.json, report.md and report.html into `directory` (created); returns {kind: path}."""
    directory.mkdir(parents=True, exist_ok=True)
    renderers = {"json": render_json, "markdown": render_markdown, "html": render_html}
    for kind, name in REPORT_FILES.items():
        (directory / name).write_text(renderers[kind](result), encoding="utf-8")
    return {kind: str(directory / name) for kind, name in REPORT_FILES.items()}
