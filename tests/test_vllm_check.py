"""`qtools check` against the real vLLM: `--engine vllm` (the CLI runs in the vLLM environment and both models go
through `vllm.LLM`) and `--engine openai` (both models served by vLLM's OpenAI API server on 127.0.0.1, the check
run here as a client).

The pair is the toy and a BF16 copy with 5% relative noise on layer 0's experts, the only kind of pair vLLM's CPU
build runs on an AVX2-only CPU (see test_vllm_interop.py); it must pass the default thresholds with figures that
are not those of a model checked against an identical one, and the served figures must be the offline ones.
"""

from __future__ import annotations

import json

import pytest
from vllm_interop.harness import run_vllm_python, vllm_servers

from qtools.check.damage import damage_experts
from qtools.check.pipeline import run_check
from qtools.check.suites import SuiteSizes

SIZES = {"code_tokens": 512, "tool_prompts": 8}


@pytest.fixture(scope="module")
def noisy(toy_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("noisy") / "toy-noisy"
    damage_experts(toy_model_dir, path, layer=0, noise=0.05)
    return path


@pytest.fixture(scope="module")
def vllm_engine_report(toy_model_dir, noisy, tmp_path_factory) -> dict:
    report = tmp_path_factory.mktemp("vllm-check") / "report"
    args = ["-m", "qtools.cli", "check", str(toy_model_dir), str(noisy), "--engine", "vllm", "--suite", "code,tools"]
    args += ["--code-tokens", str(SIZES["code_tokens"]), "--tool-prompts", str(SIZES["tool_prompts"])]
    args += ["--report", str(report), "--vllm-option", "enforce_eager=true", "--vllm-option", "max_model_len=4096"]
    run_vllm_python(args, timeout=600)
    return json.loads((report / "report.json").read_text())


def test_check_engine_vllm_end_to_end(vllm_engine_report) -> None:
    result = vllm_engine_report
    assert result["passed"] and result["meta"]["engine"] == "vllm"
    assert result["meta"]["versions"]["vllm"] == "0.32.0"
    distribution, tools = result["figures"]["distribution"], result["figures"]["tools"]
    assert distribution["tokens"] == 511 and distribution["kl_estimate"].startswith("top-20")
    assert 0 < distribution["kl"]["mean"] < 0.005 and 0.95 <= distribution["top1_agreement"] < 1
    assert tools["count"] == 8 and tools["valid_format_ref"] == 1 and tools["same_name"] == 1


def test_check_engine_openai_against_vllm_servers(toy_model_dir, noisy, vllm_engine_report, tmp_path) -> None:
    with vllm_servers([toy_model_dir, noisy], toy_model_dir, tmp_path) as urls:
        result = run_check(
            toy_model_dir, noisy, suites=("code", "tools"), engine="openai", urls=tuple(urls), sizes=SuiteSizes(**SIZES)
        )
    (tmp_path / "figures.json").write_text(json.dumps({"figures": result.figures, "failures": result.failures}))
    assert result.meta["engine"] == "openai" and result.meta["urls"] == urls
    served, offline = result.figures["distribution"], vllm_engine_report["figures"]["distribution"]
    assert served["tokens"] == offline["tokens"] == 511
    # the same vLLM build, weights and token ids: the served figures are the offline ones up to bf16 batching noise
    assert abs(served["top1_agreement"] - offline["top1_agreement"]) <= 0.01
    assert served["ppl_ratio"] == pytest.approx(offline["ppl_ratio"], abs=0.005)
    assert served["kl"]["mean"] == pytest.approx(offline["kl"]["mean"], rel=0.1)
    # greedy replies decoded by the servers are well-formed calls; which of 8 near-ties flip between the two
    # bf16 models is batching noise, so agreement rates are not pinned here
    assert result.figures["tools"]["count"] == 8 and result.figures["tools"]["valid_format_ref"] == 1
    calls = result.figures["served_tools"]
    assert calls["count"] == 8 and calls["with_call_ref"] >= 0.75 and calls["same_name"] >= 0.75, calls
