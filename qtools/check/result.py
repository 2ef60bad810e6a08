"""`CheckResult`: what a check found. Its own module so the pipeline and the report writers both import it
(the pipeline writes the reports; the reports only read results)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CheckResult:
    """Everything a check found: `figures` (summary numbers by section), `details` (per-prompt and per-module
    records), threshold `verdicts`, `meta` (versions, seeds, template hash, settings, `warnings`) and
    `timings_s`."""

    figures: dict[str, Any]
    details: dict[str, Any]
    verdicts: list[dict]
    meta: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    report_files: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when no threshold failed."""
        return not any(verdict["status"] == "fail" for verdict in self.verdicts)

    @property
    def failures(self) -> list[dict]:
        """The verdicts that failed."""
        return [verdict for verdict in self.verdicts if verdict["status"] == "fail"]

    @property
    def warnings(self) -> list[str]:
        """Warnings about the comparison itself (e.g. swapped arguments), from `meta`."""
        return list(self.meta.get("warnings", []))

    def to_dict(self) -> dict[str, Any]:
        """The report.json content (floats not yet made JSON-safe)."""
        return {
            "passed": self.passed,
            "verdicts": self.verdicts,
            "figures": self.figures,
            "meta": self.meta,
            "timings_s": self.timings_s,
            "details": self.details,
        }
