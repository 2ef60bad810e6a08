"""`qtools check` has teeth, on the trained toy model: its FP8 conversion passes the default thresholds and its INT4
round-to-nearest conversion the int4 profile (and not the FP8 one: its weight SQNR is INT4's); a copy
with one layer's experts re-quantised to 2 bits fails them and the report names that layer; noise on a single
expert is pinned to that expert.

The suites are trimmed (fewer tokens and prompts than the CLI defaults) to keep the run near a minute; the
default thresholds keep their margins at this size (see docs/check.md, "Calibration on the toy model").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qtools.check.damage import damage_experts
from qtools.check.pipeline import run_check
from qtools.check.suites import SuiteSizes
from qtools.check.thresholds import PROFILES, Thresholds
from qtools.convert import convert_checkpoint
from qtools.recipe import load_recipe

DAMAGED_LAYER = 0
NOISY_LAYER, NOISY_EXPERT = 1, 3
SIZES = SuiteSizes(
    code_tokens=8192, continuation_prompts=8, tool_prompts=24, tool_new_tokens=80, fim_prompts=8, fim_new_tokens=40
)
BEHAVIOUR = {"kl_mean", "kl_p99", "top1_agreement", "ppl_ratio", "tool_valid_format_drop", "tool_same_name"} | {
    "tool_same_arguments",
    "tool_same_calls",
    "tool_flip_rate",
    "fim_exact_drop",
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_fp8(toy_model_dir: Path, tmp_path_factory) -> Path:
    destination = tmp_path_factory.mktemp("toy-check") / "fp8"
    convert_checkpoint(toy_model_dir, destination, load_recipe("fp8-block"), workers=1)
    return destination


def test_fp8_conversion_passes_default_thresholds(toy_model_dir: Path, toy_fp8: Path, tmp_path: Path) -> None:
    result = run_check(toy_model_dir, toy_fp8, sizes=SIZES, report_dir=tmp_path)
    assert result.passed, [(v["key"], v["value"], v["threshold"]) for v in result.failures]
    statuses = {v["key"]: v["status"] for v in result.verdicts}
    assert all(statuses[key] == "pass" for key in BEHAVIOUR | {"weight_sqnr_min_db", "layer_update_sqnr_min_db"})
    figures = result.figures
    assert result.meta["quantised_format"] == "hf-fp8" and result.meta["quantised_act_quant"]
    assert result.meta["suite_sources"]["tools"] == "qtools.toy held-out tool requests"
    assert result.meta["padded_vocab_columns_masked"] > 0
    assert figures["tools"]["valid_format_ref"] >= 0.8  # the toy does call its tools
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["figures"]["distribution"]["kl"]["mean"] == figures["distribution"]["kl"]["mean"]


def test_int4_conversion_passes_the_int4_profile_only(toy_model_dir: Path, tmp_path: Path) -> None:
    rtn = tmp_path / "rtn"
    convert_checkpoint(toy_model_dir, rtn, load_recipe("w4a16-rtn"), workers=1)
    result = run_check(toy_model_dir, rtn, sizes=SIZES, thresholds=PROFILES["int4"])
    print({v["key"]: v["value"] for v in result.verdicts if v["value"] is not None})
    assert result.passed, [(v["key"], v["value"], v["threshold"]) for v in result.failures]
    failed_as_fp8 = {
        verdict["key"] for verdict in run_check(toy_model_dir, rtn, sizes=SIZES, suites=("weights",)).failures
    }
    assert failed_as_fp8 == {"weight_sqnr_min_db"}


def test_damaged_layer_fails_and_report_points_at_it(toy_model_dir: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damage_experts(toy_model_dir, damaged, DAMAGED_LAYER)
    result = run_check(toy_model_dir, damaged, sizes=SIZES, report_dir=tmp_path / "report")
    failed = {v["key"] for v in result.failures}
    assert "weight_sqnr_min_db" in failed and "layer_update_sqnr_min_db" in failed
    assert failed & BEHAVIOUR, "the damage shows in the weights but not in the model's behaviour"
    layers = result.figures["layers"]
    assert layers["worst_layer_by_weights"] == layers["worst_layer_by_update"] == DAMAGED_LAYER
    worst = result.figures["weights"]["worst"]
    assert worst and all(w["module"].startswith(f"model.layers.{DAMAGED_LAYER}.mlp.experts.") for w in worst)
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"lowest layer-update SQNR (dB) | {_fmt(layers['update_sqnr_min_db'])} (layer {DAMAGED_LAYER})" in markdown


def test_noise_on_one_expert_is_pinned_to_it(toy_model_dir: Path, tmp_path: Path) -> None:
    noisy = tmp_path / "noisy"
    damage_experts(toy_model_dir, noisy, NOISY_LAYER, expert=NOISY_EXPERT, noise=0.3)
    thresholds = Thresholds()
    result = run_check(toy_model_dir, noisy, suites=("weights",), thresholds=thresholds)
    assert [v["key"] for v in result.failures] == ["weight_sqnr_min_db"]
    weights = result.figures["weights"]
    assert weights["modules_changed"] == 3  # gate, up and down of one expert
    prefix = f"model.layers.{NOISY_LAYER}.mlp.experts.{NOISY_EXPERT}."
    assert {w["module"] for w in weights["worst"]} == {prefix + name for name in ("gate_proj", "up_proj", "down_proj")}
    assert all(w["sqnr_db"] == pytest.approx(10.46, abs=0.3) for w in weights["worst"])  # -20 log10(0.3)


def _fmt(value: float) -> str:
    from qtools.check.report.format import fmt

    return fmt(value)
