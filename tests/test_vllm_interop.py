"""The real vLLM (CPU build, its own environment from `make vllm-env`) loads the toy and our outputs of it, and its
teacher-forced log-probs match `qtools.runtime`'s on the same held-out code windows.

One vLLM process scores every checkpoint (`vllm_interop/score_in_vllm.py`); the tests assert on its JSON. Bounds
(see docs/serving.md for the measurements behind them): top-1 agreement of the two engines' argmax, and mean
|log p_vLLM(t) - log p_runtime(t)| of the actual next token t.
"""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from vllm_interop.harness import HERE, cpu_kind, needs_shim, run_vllm_python

from qtools.convert import convert_checkpoint
from qtools.recipe import load_recipe
from qtools.runtime import load_model
from qtools.testing.code_windows import code_windows

WINDOWS, LENGTH, TOP_K = 8, 64, 20  # 504 scored positions
QUANTISED = ("fp8-block", "fp8-block-compressed-tensors", "w4a16-rtn", "w4a16-rtn-tp8")
# Measured on this machine (AMD EPYC, AVX2; vLLM in bf16, the runtime in float32): mean |d log p| 0.0076 (max
# 0.23), top-1 496/504; the disagreements are near-ties of the bf16 logits.
BF16_BOUNDS = {"mean_abs_dlogp": 0.02, "top1": 0.95}
# Where vLLM runs them (AVX-512 CPUs, with the shim below AMX): measured by the session that filed issue 12 on
# an AVX-512 CPU: FP8 against the runtime without activation quantisation (vLLM's CPU FP8 kernel is W8A16)
# 0.015; W4A16 (vLLM quantises activations to int8 inside its CPU INT4 MoE) 0.0093, top-1 98.7%.
QUANT_BOUNDS = {"mean_abs_dlogp": 0.05, "top1": 0.95}
# On an AVX2-only CPU vLLM 0.32 has no kernel for either format (its AVX2 library lacks fp8_scaled_mm_cpu and
# the INT4 MoE ops): with the shim answering the capability checks, vLLM still parses each config and, for
# W4A16, reads every tensor through its compressed-tensors loader before the missing op stops it.
AVX2_REFUSALS = {
    "fp8": ("fp8_scaled_mm_cpu op not available", "choose_scaled_mm_linear_kernel"),
    "w4a16": ("convert_weight_packed_scale_zp", "process_weights_after_loading"),
}


@pytest.fixture(scope="session")
def toy_outputs(toy_model_dir, tmp_path_factory) -> dict:
    """The toy and its conversions with the shipped recipes: name -> checkpoint directory."""
    root = tmp_path_factory.mktemp("vllm-toy")
    outputs = {"bf16": toy_model_dir}
    for recipe in QUANTISED:
        outputs[recipe] = root / recipe
        convert_checkpoint(toy_model_dir, outputs[recipe], load_recipe(recipe))
    return outputs


@pytest.fixture(scope="session")
def windows(toy_model_dir) -> torch.Tensor:
    """int64 [WINDOWS, LENGTH] held-out code windows of the toy's tokenizer."""
    tokenizer = Tokenizer.from_file(str(toy_model_dir / "tokenizer.json"))
    return code_windows(tokenizer, heldout=True, samples=WINDOWS, length=LENGTH, seed=0)


@pytest.fixture(scope="session")
def vllm_scores(toy_outputs, windows, toy_model_dir, tmp_path_factory) -> dict:
    """vLLM's scores of every toy output, from one process."""
    work = tmp_path_factory.mktemp("vllm-scores")
    job = {
        "tokenizer": str(toy_model_dir),
        "windows": windows.tolist(),
        "top_k": TOP_K,
        "models": {name: str(path) for name, path in toy_outputs.items()},
    }
    (work / "job.json").write_text(json.dumps(job))
    run_vllm_python([str(HERE / "score_in_vllm.py"), str(work / "job.json"), str(work / "out.json")], timeout=900)
    return json.loads((work / "out.json").read_text())


def runtime_scores(path, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """qtools.runtime in float32, activations unquantised: (log p of each next token, argmax) [WINDOWS, LENGTH-1],
    over every logit column as vLLM does."""
    model = load_model(path, dtype=torch.float32, act_quant=False)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(windows)[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, windows[:, 1:, None])[..., 0], logprobs.argmax(-1)


def compare(record: dict, path, windows: torch.Tensor) -> dict:
    """Mean |d log p| and top-1 agreement between vLLM's `record` and the runtime on `path`."""
    target, top1 = runtime_scores(path, windows)
    vllm_target, vllm_top1 = torch.tensor(record["target_logprobs"]), torch.tensor(record["top1"])
    return {
        "mean_abs_dlogp": (vllm_target - target).abs().mean().item(),
        "top1": (vllm_top1 == top1).float().mean().item(),
    }


def test_vllm_scores_the_bf16_toy_like_the_runtime(vllm_scores, toy_outputs, windows) -> None:
    record = vllm_scores["models"]["bf16"]
    assert record["loaded"], record["error"]
    figures = compare(record, toy_outputs["bf16"], windows)
    print(f"vLLM {vllm_scores['vllm_version']} bf16 vs runtime: {figures}, load {record['load_s']:.0f}s")
    assert figures["mean_abs_dlogp"] <= BF16_BOUNDS["mean_abs_dlogp"], figures
    assert figures["top1"] >= BF16_BOUNDS["top1"], figures


@pytest.mark.parametrize("name", QUANTISED)
def test_vllm_loads_our_quantised_outputs(vllm_scores, toy_outputs, windows, name) -> None:
    record = vllm_scores["models"][name]
    if cpu_kind() == "avx2" and needs_shim():
        message, frame = AVX2_REFUSALS[name.split("-")[0]]
        assert not record["loaded"], "vLLM ran this on an AVX2 CPU: compare it (QUANT_BOUNDS) instead"
        assert message in record["error"] and frame in record["error_frames"], (record["error"], record["error_frames"])
        return
    assert record["loaded"], record["error"]
    figures = compare(record, toy_outputs[name], windows)
    print(f"vLLM {vllm_scores['vllm_version']} {name} vs runtime: {figures}, load {record['load_s']:.0f}s")
    assert figures["mean_abs_dlogp"] <= QUANT_BOUNDS["mean_abs_dlogp"], figures
    assert figures["top1"] >= QUANT_BOUNDS["top1"], figures
