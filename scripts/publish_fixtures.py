"""Regenerate the check reports the publish tests and the docs' example cards are built from.

Converts the committed toy model with `fp8-block` and `w4a16-rtn`, checks each against the toy at the sizes of
tests/test_check_toy.py (FP8 under the default thresholds, INT4 under the int4 profile) and writes each report.json,
without its per-prompt details, to tests/fixtures/publish/toy-{fp8,int4}/report.json. The toy's conversions are
deterministic, so the identity a report records matches the conversions the tests make. Then, with `--docs`, it runs
`qtools publish --dry-run` on both and writes the rendered cards (Markdown -> HTML) to docs/publish/.

    python scripts/publish_fixtures.py [--docs]
"""

from __future__ import annotations

import argparse
import json
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
from qtools.testing.publish import FIXTURES, TOY_CARDS, render_card_html

SIZES = SuiteSizes(
    code_tokens=8192, continuation_prompts=8, tool_prompts=24, tool_new_tokens=80, fim_prompts=8, fim_new_tokens=40
)
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true", help="also write docs/publish/*.html")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        for name, card in TOY_CARDS.items():
            out = Path(scratch) / name
            convert_checkpoint(TOY_MODEL_DIR, out, load_recipe(card.recipe), workers=1)
            again = Path(scratch) / f"{name}-again"
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
            if args.docs:
                staged = Path(scratch) / f"{name}-card"
                subprocess.run(
                    [sys.executable, "-m", "qtools.cli", "publish", str(out), "--repo", card.repo, "--report",
                     str(target.parent), "--base-model", card.base_model, "--dry-run", "--stage-dir", str(staged)],
                    check=True,
                )  # fmt: skip
                html = REPO / "docs" / "publish" / f"{name}-card.html"
                html.parent.mkdir(parents=True, exist_ok=True)
                html.write_text(render_card_html((staged / "README.md").read_text(), f"{card.repo} (toy, dry run)"))
                for image in (staged / "images").glob("*.svg"):
                    (html.parent / "images" / name).mkdir(parents=True, exist_ok=True)
                    (html.parent / "images" / name / image.name).write_text(image.read_text())
                print(f"{html}")


if __name__ == "__main__":
    main()
