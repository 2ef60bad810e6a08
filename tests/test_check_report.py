"""qtools check reports: strict JSON, Markdown and a self-contained HTML page that headless Chromium renders."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qtools.check.report import write_reports
from qtools.check.result import CheckResult
from qtools.check.thresholds import Thresholds, evaluate

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _result() -> CheckResult:
    kl = {"mean": 0.0123, "median": 0.004, "p90": 0.02, "p95": 0.03, "p99": 0.2, "p99.9": 0.9, "max": 2.5}
    per_layer = [
        {"layer": 0, "output_sqnr_db": 35.0, "update_sqnr_db": 31.0, "cumulative_sqnr_db": 35.0},
        {"layer": 1, "output_sqnr_db": 12.5, "update_sqnr_db": 7.25, "cumulative_sqnr_db": 11.0},
        {"layer": 2, "output_sqnr_db": math.inf, "update_sqnr_db": math.inf, "cumulative_sqnr_db": 11.0},
    ]
    for row, weight in zip(per_layer, (31.5, 5.75, math.inf), strict=True):
        row.update(weight_sqnr_min_db=weight, weight_sqnr_db=weight, modules=3, modules_changed=3)
    worst = {"module": "model.layers.1.mlp.experts.3.down_proj", "format": "DenseLinear", "sqnr_db": 5.75}
    figures = {
        "distribution": {
            "tokens": 4096,
            "windows": 4,
            "kl": kl,
            "kl_histogram": {
                "edges": [1e-6 * 10 ** (i / 4) for i in range(29)],
                "counts": list(range(28)),
                "underflow": 3,
            },
            "top1_agreement": 0.9312,
            "delta_p": {"mean": -0.001, "p1": -0.2, "median": 0.0, "p99": 0.1},
            "ppl_ref": 3.5,
            "ppl_quant": 3.61,
            "ppl_ratio": 1.0314,
        },
        "layers": {
            "per_layer": per_layer,
            "update_sqnr_min_db": 7.25,
            "worst_layer_by_update": 1,
            "worst_layer_by_weights": 1,
        },
        "weights": {"modules": 9, "modules_changed": 6, "sqnr_min_db": 5.75, "sqnr_median_db": 31.5, "worst": [worst]},
        "generation": {
            "prompts": 4,
            "exact_match_rate": 0.5,
            "first_divergence_median": 7,
            "first_divergence_mean": 7.5,
            "matched_prefix_share": 0.7,
        },
        "tools": {
            "count": 2,
            "graded": 2,
            "valid_format_ref": 1.0,
            "valid_format_quant": 0.5,
            "valid_format_drop": 0.5,
            "same_text": 0.5,
            "same_name": 1.0,
            "same_arguments": 0.5,
            "same_calls": 0.5,
            "correct_ref": 1.0,
            "correct_quant": 0.5,
            "flips": 1,
            "flips_correct_to_wrong": 1,
            "flips_wrong_to_correct": 0,
            "flip_rate": 0.5,
            "mismatches": ["t-1"],
        },
        "fim": {
            "count": 1,
            "graded": 1,
            "same_as_reference": 1.0,
            "exact_ref": 0.0,
            "exact_quant": 0.0,
            "exact_drop": 0.0,
            "similarity_ref": 0.5,
            "similarity_quant": 0.5,
            "flips": 0,
        },
    }
    mismatch = {
        "id": "t-1",
        "request": "Weather in <Oslo> & Bergen?",
        "expected_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}],
        "reference": {"calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
        "quantised": {"calls": []},
        "same_text": False,
        "flip": "correct_to_wrong",
        "diff": "--- reference\n+++ quantised\n-<function=get_weather>\n+<function=get_weathe",
    }
    meta = {
        "reference": "/models/ref",
        "quantised": "/models/fp8",
        "reference_format": "dense",
        "quantised_format": "hf-fp8",
        "quantised_act_quant": True,
        "engine": "qtools",
        "device": "cpu",
        "dtype": "bfloat16",
        "suites": ["code", "tools", "fim", "weights"],
        "seed": 0,
        "valid_vocab": 3013,
        "vocab_size": 3072,
        "padded_vocab_columns_masked": 59,
        "chat_template_sha256": "ab" * 32,
        "versions": {"qtools": "0.1.0", "torch": "2.13.0"},
    }
    limits = ["kl_mean=0.01", "top1_agreement=0.95", "ppl_ratio=1.02", "tool_valid_format_drop=0.05"]
    verdicts = evaluate(Thresholds().with_overrides([*limits, "weight_sqnr_min_db=25"]), figures)
    details = {"tools": [mismatch], "weights": [{**worst, "signal": 1.0, "noise": float("nan")}]}
    return CheckResult(figures, details, verdicts, meta, {"total": 12.5})


def test_reports_hold_every_headline_figure(tmp_path: Path) -> None:
    result = _result()
    files = write_reports(result, tmp_path / "out")
    assert set(files) == {"json", "markdown", "html"} and all(Path(path).is_file() for path in files.values())
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # strict JSON: NaN/inf as strings
    assert report["passed"] is False
    assert report["figures"]["distribution"]["kl"]["p99.9"] == 0.9
    assert report["figures"]["layers"]["per_layer"][2]["update_sqnr_db"] == "inf"
    assert report["details"]["weights"][0]["noise"] == "nan"  # measured and broken; null means not measured
    assert report["meta"]["chat_template_sha256"] == "ab" * 32
    failed = {v["key"] for v in report["verdicts"] if v["status"] == "fail"}
    assert {"kl_mean", "top1_agreement", "ppl_ratio", "tool_valid_format_drop", "weight_sqnr_min_db"} <= failed
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert markdown.startswith("# qtools check: FAILED")
    for text in (
        "0.0123",
        "93.1%",
        "1.031",
        "model.layers.1.mlp.experts.3.down_proj",
        "7.25 (layer 1)",
        "flip correct_to_wrong",
    ):
        assert text in markdown
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<svg") == 3 and "Weather in &lt;Oslo&gt; &amp; Bergen?" in html
    assert "0.0123" in html and "model.layers.1.mlp.experts.3.down_proj" in html
    # Self-contained: no scripts, no external stylesheets, images or fonts.
    assert "<script" not in html and not re.search(r"(src|href)\s*=", html) and "url(" not in html


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("headless Chromium not found (apt-get install -y chromium, or `make setup-browser`)")
    pytest.importorskip("PIL", reason="Pillow reads the screenshot")
    from PIL import Image

    write_reports(_result(), tmp_path)
    shot = tmp_path / "report.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        (tmp_path / "report.html").as_uri(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot; chromium said:\n{completed.stderr[-2000:]}"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 2000)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, tables and plots drawn, not a blank page
    # The failed verdict heading is red (#b3261e) and the bars of the plots are the palette's blue (#3b6fb6).
    pixels = {colour for _, colour in colours}
    assert any(abs(r - 0xB3) < 24 and abs(g - 0x26) < 24 and abs(b - 0x1E) < 24 for r, g, b in pixels)
    assert (0x3B, 0x6F, 0xB6) in pixels
