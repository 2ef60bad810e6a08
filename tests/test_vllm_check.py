"""`qtools check --engine vllm` for real: the CLI runs in the vLLM environment and both models go through
`vllm.LLM` (scoring with prompt_logprobs, greedy decoding of the tool prompts).

The pair is the toy and a BF16 copy with 5% relative noise on layer 0's experts, the only kind of pair vLLM's CPU
build runs on an AVX2-only CPU (see test_vllm_interop.py); it must pass the default thresholds with figures that
are not those of a model checked against an identical one.
"""

from __future__ import annotations

import json

from vllm_interop.harness import run_vllm_python

from qtools.check.damage import damage_experts


def test_check_engine_vllm_end_to_end(toy_model_dir, tmp_path) -> None:
    noisy, report = tmp_path / "noisy", tmp_path / "report"
    damage_experts(toy_model_dir, noisy, layer=0, noise=0.05)
    args = ["-m", "qtools.cli", "check", str(toy_model_dir), str(noisy), "--engine", "vllm"]
    args += ["--suite", "code,tools", "--code-tokens", "512", "--tool-prompts", "8", "--report", str(report)]
    args += ["--vllm-option", "enforce_eager=true", "--vllm-option", "max_model_len=4096"]
    run_vllm_python(args, timeout=600)
    result = json.loads((report / "report.json").read_text())
    assert result["passed"] and result["meta"]["engine"] == "vllm"
    assert result["meta"]["versions"]["vllm"] == "0.32.0"
    distribution, tools = result["figures"]["distribution"], result["figures"]["tools"]
    assert distribution["tokens"] == 511 and distribution["kl_estimate"].startswith("top-20")
    assert 0 < distribution["kl"]["mean"] < 0.005 and 0.95 <= distribution["top1_agreement"] < 1
    assert tools["count"] == 8 and tools["valid_format_ref"] == 1 and tools["same_name"] == 1
