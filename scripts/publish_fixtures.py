"""Regenerate the check reports behind the publish tests and the docs' example cards, and the rendered cards.

Without options: converts the committed toy model with `fp8-block` and `w4a16-rtn`, checks each against the toy at
the sizes of tests/test_check_toy.py (FP8 under the default thresholds, INT4 under the int4 profile) and writes
each report.json, without its per-prompt details, to tests/fixtures/publish/toy-{fp8,int4}/report.json (about 10
minutes each on 2 busy cores). The toy's conversions are deterministic (checked here), so the identity a report
records matches the conversions the tests make. Then, as with `--docs-only`, it runs `qtools publish --dry-run`
on both conversions with those reports and writes docs/publish/toy-{fp8,int4}/: the card (README.md), its plots
and the card rendered Markdown -> HTML (card.html).

    python scripts/publish_fixtures.py [--docs-only]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qtools.check.pipeline import run_check
from qtools.check.report.json_report import json_safe
from qtools.check.suites import SuiteSizes
from qtools.check.thresholds import PROFILES, Thresholds
from qtools.checkpoint.identity import checkpoint_identity
from qtools.convert import convert_checkpoint
from qtools.recipe import load_recipe
from qtools.testing.files import TOY_MODEL_DIR
from qtools.testing.publish import DOCS, FIXTURES, TOY_CARDS, ToyCard, render_card_html

SIZES = SuiteSizes(
    code_tokens=8192, continuation_prompts=8, tool_prompts=24, tool_new_tokens=80, fim_prompts=8, fim_new_tokens=40
)


def write_report(name: str, card: ToyCard, out: Path, scratch: Path) -> None:
    """Check conversion `out` against the toy and write its report (details dropped) into the fixtures."""
    again = scratch / f"{name}-again"
    convert_checkpoint(TOY_MODEL_DIR, again, load_recipe(card.recipe), workers=1)
    assert checkpoint_identity(out) == checkpoint_identity(again), "the toy's conversion is not deterministic"
    thresholds = PROFILES[card.profile] if card.profile != "default" else Thresholds()
    result = run_check(TOY_MODEL_DIR, out, sizes=SIZES, thresholds=thresholds, log=print)
    report = json_safe(result.to_dict())
    report["details"] = {}
    target = FIXTURES / name / "report.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"{target}: passed={result.passed}")


def write_docs(name: str, card: ToyCard, out: Path, scratch: Path) -> None:
    """`qtools publish --dry-run` of `out` with its fixture report; the card, plots and HTML into docs/publish/."""
    staged = scratch / f"{name}-card"
    subprocess.run(
        [sys.executable, "-m", "qtools.cli", "publish", str(out), "--repo", card.repo, "--report",
         str(FIXTURES / name), "--base-model", card.base_model, "--dry-run", "--stage-dir", str(staged)],
        check=True,
    )  # fmt: skip
    target = DOCS / name
    shutil.rmtree(target, ignore_errors=True)
    (target / "images").mkdir(parents=True)
    markdown = (staged / "README.md").read_text()
    (target / "README.md").write_text(markdown)
    for image in (staged / "images").glob("*.svg"):
        shutil.copyfile(image, target / "images" / image.name)
    (target / "card.html").write_text(render_card_html(markdown, f"{card.repo} (toy model, qtools publish --dry-run)"))
    print(target / "card.html")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs-only", action="store_true", help="keep the fixture reports; only write docs/publish/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        for name, card in TOY_CARDS.items():
            out = scratch / name
            convert_checkpoint(TOY_MODEL_DIR, out, load_recipe(card.recipe), workers=1)
            if not args.docs_only:
                write_report(name, card, out, scratch)
            write_docs(name, card, out, scratch)


if __name__ == "__main__":
    main()
