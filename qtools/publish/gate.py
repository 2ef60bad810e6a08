"""What `qtools publish` refuses, before anything is staged or sent: a checkpoint `qtools verify` rejects, and a
check report that failed or that measured other files than the ones being published."""

from __future__ import annotations

import json
import re
from pathlib import Path

from qtools.checkpoint.identity import identity_difference
from qtools.errors import QtoolsError, some_names
from qtools.verify import verify_checkpoint

# The Hub's rule for names: ORG/NAME, letters, digits, '-', '_', '.', not starting or ending with '-' or '.'.
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?")
REPORT_NAME = "report.json"


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is a Hub model id ORG/NAME; QtoolsError saying how to write one otherwise."""
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id:
        raise QtoolsError(
            f"--repo {repo_id!r}: give the Hub repository as ORG/NAME (letters, digits, '-', '_', '.'; no '--' or "
            "'..'), e.g. my-org/Qwen3-Coder-480B-A35B-Instruct-FP8"
        )
    return repo_id


def require_verified(checkpoint: Path) -> None:
    """QtoolsError unless `qtools verify` passes on `checkpoint` (naming its problems)."""
    report = verify_checkpoint(checkpoint)
    if report.error is not None:
        raise QtoolsError(f"refusing to publish {checkpoint}: it cannot be verified: {report.error}")
    if report.problems:
        raise QtoolsError(
            f"refusing to publish {checkpoint}: `qtools verify` found {len(report.problems)} problem(s): "
            f"{'; '.join(report.problems[:3])}{' ...' if len(report.problems) > 3 else ''}"
        )


def load_report(path: Path) -> dict:
    """report.json of a `qtools check` run: `path` is the report directory or the file itself."""
    file = path / REPORT_NAME if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except OSError as error:
        raise QtoolsError(
            f"--report {file}: cannot read ({error.strerror}); give the directory `qtools check --report` wrote"
        ) from error
    except ValueError as error:
        raise QtoolsError(f"--report {file}: not valid JSON ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("meta"), dict) or "passed" not in report:
        raise QtoolsError(f"--report {file}: not a `qtools check` report (no passed / meta)")
    return report


def require_passed_for(report: dict, identity: dict, source: Path) -> None:
    """QtoolsError unless `report` passed and measured exactly the files `identity` describes."""
    if report["passed"] is not True:
        failed = [v.get("key", "?") for v in report.get("verdicts", []) if v.get("status") == "fail"]
        raise QtoolsError(
            f"refusing to publish: the check report {source} FAILED (thresholds missed: "
            f"{some_names(failed) or 'none listed'}); "
            "a card would vouch for a checkpoint its own check rejected"
        )
    recorded = report["meta"].get("quantised_identity")
    if not isinstance(recorded, dict):
        raise QtoolsError(
            f"refusing to publish: the check report {source} records no identity of the checkpoint it measured "
            "(written by an older qtools); rerun `qtools check` on this checkpoint"
        )
    difference = identity_difference(recorded, identity)
    if difference:
        raise QtoolsError(
            f"refusing to publish: the check report {source} measured other files than this checkpoint's "
            f"({difference}); rerun `qtools check` on this checkpoint, or give its own report"
        )
