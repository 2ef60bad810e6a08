"""Figures behind docs/check.md's threshold profiles: `qtools check` (CLI default suite sizes) of the toy model
against its conversions under one profile (fp8: the FP8 block-wise conversion; int4: the W4A16 round-to-nearest
and GPTQ conversions at groups 128 and 64), against a copy with one layer's experts re-quantised to 2 bits, and
against a copy with noise on one expert. Prints a Markdown table of every gated figure and the run times.

    python scripts/calibrate_check.py [--profile fp8|int4] [--out out/calibrate]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from qtools.calibration import load_calibration
from qtools.check.damage import damage_experts
from qtools.check.pipeline import run_check
from qtools.check.thresholds import PROFILES
from qtools.convert import convert_checkpoint
from qtools.gptq import convert_gptq
from qtools.recipe import load_recipe
from qtools.testing.files import TOY_MODEL_DIR
from qtools.toy.cache import cached_toy_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/calibrate"))
    parser.add_argument("--profile", choices=sorted(PROFILES), default="fp8")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    toy = cached_toy_model(prebuilt=TOY_MODEL_DIR)
    conversions = {
        "fp8": {"FP8 (hf-fp8)": ("fp8-block", "fp8")},
        "int4": {
            "W4A16 RTN g128": ("w4a16-rtn", "rtn-g128"),
            "W4A16 RTN g64": ("w4a16-rtn-tp8", "rtn-g64"),
            "W4A16 GPTQ g128": ("w4a16-gptq", "gptq-g128"),
            "W4A16 GPTQ g64": ("w4a16-gptq-tp8", "gptq-g64"),
        },
    }[args.profile]
    candidates = {}
    for label, (name, directory) in conversions.items():
        candidates[label] = args.out / directory
        recipe = load_recipe(name)
        if recipe.calibrated:  # the CLI's defaults: the built-in data, 128 x 2048 tokens, seed 0
            convert_gptq(toy, candidates[label], recipe, load_calibration(None, toy, 128, 2048, 0))
        else:
            convert_checkpoint(toy, candidates[label], recipe, workers=1)
    candidates["2-bit experts, layer 0"] = args.out / "2bit-layer0"
    damage_experts(toy, candidates["2-bit experts, layer 0"], layer=0)
    candidates["noise 0.3 on expert 3, layer 1"] = args.out / "noise-l1e3"
    damage_experts(toy, candidates["noise 0.3 on expert 3, layer 1"], layer=1, expert=3, noise=0.3)

    columns: dict[str, dict[str, str]] = {}
    keys: list[str] = []
    for label, path in candidates.items():
        started = time.perf_counter()
        result = run_check(toy, path, report_dir=args.out / f"report-{path.name}", thresholds=PROFILES[args.profile])
        seconds = time.perf_counter() - started
        cells = {}
        for verdict in result.verdicts:
            if verdict["status"] == "off":
                continue
            keys += [verdict["key"]] if verdict["key"] not in keys else []
            value = "n/a" if verdict["value"] is None else f"{verdict['value']:.4g}"
            cells[verdict["key"]] = value + (" **fail**" if verdict["status"] == "fail" else "")
        cells["verdict"] = "passed" if result.passed else "FAILED"
        cells["check seconds"] = f"{seconds:.0f}"
        columns[label] = cells
    keys += ["verdict", "check seconds"]
    print("| figure | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for key in keys:
        print(f"| `{key}` | " + " | ".join(cells.get(key, "") for cells in columns.values()) + " |")


if __name__ == "__main__":
    main()
