"""`qtools check` end to end on small synthetic checkpoints (random weights, a tiny BPE tokenizer): the layer
walk, streaming, decoding suites, the CLI's exit codes and the vLLM engine's glue (against a stand-in vLLM).

Random-weight models amplify quantisation error (FP8 gives a mean KL near 0.2 here, against under 0.001 on
the trained toy model), so these tests gate on weight and per-layer SQNR only; tests/test_check_toy.py holds
the default-threshold tests on the trained toy model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from qtools.chat import load_chat_template
from qtools.check import pipeline
from qtools.check.damage import damage_experts
from qtools.check.decode import greedy_decode
from qtools.check.pipeline import run_check
from qtools.check.preflight import check_dtype, check_profile
from qtools.check.suites import SuiteSizes, heldout_code
from qtools.check.thresholds import PROFILES, Thresholds
from qtools.checkpoint.identity import checkpoint_identity
from qtools.cli import app
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.recipe import load_recipe
from qtools.runtime import load_model
from qtools.testing.files import edit_shard
from qtools.testing.synth import SynthSpec, make_checkpoint
from qtools.toy.tokenizer import save_tokenizer, train_tokenizer

DAMAGED_LAYER = 1
SIZES = SuiteSizes(
    code_tokens=384,
    window=128,
    continuation_prompts=2,
    continuation_prompt_tokens=16,
    continuation_new_tokens=5,
    tool_prompts=2,
    tool_new_tokens=5,
    fim_prompts=1,
    fim_new_tokens=5,
)
# Structural gates only (see module docstring): FP8 e4m3 blocks give ~31.5 dB per weight and ~15 dB per layer
# update on random weights; 2-bit experts give ~6 dB per weight.
STRUCTURAL = [f"{key}=off" for key in Thresholds.model_fields] + [
    "weight_sqnr_min_db=25",
    "layer_update_sqnr_min_db=10",
]


@pytest.fixture(scope="module")
def synth_trio(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(BF16 reference with a 313-entry tokenizer over 500 logits, its FP8 conversion, a copy whose layer-1
    experts are re-quantised to 2 bits)."""
    root = tmp_path_factory.mktemp("check")
    ref = make_checkpoint(root / "bf16", SynthSpec(num_layers=3, hidden_size=256, head_dim=64), seed=0)
    tokenizer = train_tokenizer([item.text for item in heldout_code()[:2]], 300)
    save_tokenizer(tokenizer, ref, load_chat_template())
    convert_checkpoint(ref, root / "fp8", load_recipe("fp8-block"), workers=1)
    damage_experts(ref, root / "damaged", DAMAGED_LAYER)
    return ref, root / "fp8", root / "damaged"


def _check(ref: Path, quant: Path, suites: tuple[str, ...] = ("code", "weights"), fail_under_extra=(), **options):
    thresholds = Thresholds().with_overrides([*STRUCTURAL, *fail_under_extra])
    return run_check(ref, quant, suites=suites, thresholds=thresholds, sizes=SIZES, **options)


def test_fp8_passes_and_damaged_layer_fails_and_is_named(synth_trio, tmp_path: Path) -> None:
    ref, fp8, damaged = synth_trio
    good = _check(ref, fp8)
    assert good.passed, good.failures
    assert 28 < good.figures["weights"]["sqnr_min_db"] < 35
    assert good.meta["padded_vocab_columns_masked"] == 500 - good.meta["valid_vocab"] > 0
    assert good.figures["distribution"]["tokens"] == SIZES.code_tokens - 3  # 3 windows, first token of each
    identity = good.meta["quantised_identity"]  # what `qtools publish --report` compares
    assert identity == checkpoint_identity(fp8) and "config.json" in identity["files"]
    assert {name for name in identity["files"] if name.endswith(".safetensors")} == {
        path.name for path in fp8.glob("*.safetensors")
    }
    assert not any(name.startswith(".qtools") for name in identity["files"])

    bad = _check(ref, damaged, report_dir=tmp_path)
    assert not bad.passed
    assert {v["key"] for v in bad.failures} == {"weight_sqnr_min_db", "layer_update_sqnr_min_db"}
    layers = bad.figures["layers"]
    assert layers["worst_layer_by_weights"] == layers["worst_layer_by_update"] == DAMAGED_LAYER
    per_layer = layers["per_layer"]
    assert per_layer[0]["update_sqnr_db"] == per_layer[0]["weight_sqnr_min_db"] == float("inf")  # untouched
    assert all(f"model.layers.{DAMAGED_LAYER}.mlp.experts." in w["module"] for w in bad.figures["weights"]["worst"])
    assert bad.figures["distribution"]["kl"]["mean"] > 0
    markdown = (tmp_path / "report.md").read_text()
    assert f"model.layers.{DAMAGED_LAYER}.mlp.experts." in markdown and "FAILED" in markdown
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["figures"]["layers"]["worst_layer_by_update"] == DAMAGED_LAYER
    assert len(report["details"]["weights"]) == 3 * (4 + 4 * 3 + 1) + 2  # per layer: attention, experts, router


def _nan_scale(tensor: torch.Tensor) -> torch.Tensor:
    tensor[0, 0] = float("nan")
    return tensor


@pytest.fixture(scope="module")
def nan_scale_copy(synth_trio, tmp_path_factory) -> tuple[Path, str]:
    """A copy of the FP8 conversion with one NaN block scale in a layer-1 expert (verify rejects it), and the
    module that holds it."""
    _, fp8, _ = synth_trio
    copy = tmp_path_factory.mktemp("nan") / "fp8"
    shutil.copytree(fp8, copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())["weight_map"]
    scale = f"model.layers.{DAMAGED_LAYER}.mlp.experts.0.down_proj.weight_scale_inv"
    edit_shard(copy / index[scale], lambda name: name == scale, _nan_scale)
    return copy, scale.removesuffix(".weight_scale_inv")


def test_a_nan_block_scale_fails_the_check_and_is_named(synth_trio, nan_scale_copy, tmp_path: Path) -> None:
    ref, _, _ = synth_trio
    quant, module = nan_scale_copy
    weights = _check(ref, quant, suites=("weights",), report_dir=tmp_path / "weights")
    assert not weights.passed and [v["key"] for v in weights.failures] == ["weight_sqnr_min_db"]
    assert weights.figures["weights"]["worst"][0]["module"] == module
    assert weights.figures["layers"]["worst_layer_by_weights"] == DAMAGED_LAYER
    report = json.loads((tmp_path / "weights" / "report.json").read_text())
    assert report["figures"]["weights"]["sqnr_min_db"] == "nan"
    assert report["figures"]["weights"]["worst"][0]["module"] == module
    for name in ("report.md", "report.html"):
        text = (tmp_path / "weights" / name).read_text()
        assert module in text and "nan" in text, name
    # The code suite: NaN KL and perplexity ratio fail (a loose bound is still a bound), as does the layer SQNR.
    code = _check(ref, quant, suites=("code",), fail_under_extra=["kl_mean=1e9", "ppl_ratio=1e9"])
    statuses = {v["key"]: v["status"] for v in code.verdicts}
    assert statuses["kl_mean"] == statuses["ppl_ratio"] == statuses["layer_update_sqnr_min_db"] == "fail"
    assert code.figures["layers"]["worst_layer_by_update"] == DAMAGED_LAYER


def test_streamed_check_equals_resident(synth_trio) -> None:
    ref, fp8, _ = synth_trio
    resident = _check(ref, fp8)
    streamed = _check(ref, fp8, stream_layers=True)
    for section in ("distribution", "layers", "weights"):
        assert streamed.figures[section] == resident.figures[section]
    with pytest.raises(QtoolsError, match="--stream-layers runs the teacher-forced suites only"):
        _check(ref, fp8, suites=("code", "tools"), stream_layers=True)


def test_decoding_suites_run_and_identical_models_agree(synth_trio, tmp_path: Path) -> None:
    ref, _, _ = synth_trio
    copy = tmp_path / "copy"
    shutil.copytree(ref, copy)
    result = _check(ref, copy, suites=("code", "tools", "fim"))
    assert any("identical" in warning for warning in result.warnings), result.warnings
    figures = result.figures
    assert figures["distribution"]["kl"]["max"] == 0.0 and figures["distribution"]["top1_agreement"] == 1.0
    assert figures["generation"]["exact_match_rate"] == 1.0 and figures["generation"]["prompts"] == 2
    assert figures["tools"]["count"] == 2 and figures["tools"]["same_calls"] == 1.0
    assert figures["fim"]["count"] == 1 and figures["fim"]["same_as_reference"] == 1.0
    assert len(result.details["tools"]) == 2 and result.details["generation"][0]["first_divergence"] is None
    assert result.meta["suite_sources"]["tools"] == "qtools.check built-in tool prompts"
    assert len(result.meta["chat_template_sha256"]) == 64


def test_cli_exit_codes(synth_trio, tmp_path: Path) -> None:
    ref, fp8, damaged = synth_trio
    runner = CliRunner()
    base = ["check", "--suite", "weights", *(f"--fail-under={item}" for item in STRUCTURAL)]
    passed = runner.invoke(app, [*base, str(ref), str(fp8), "--report", str(tmp_path / "ok")])
    assert passed.exit_code == 0, passed.output
    assert (tmp_path / "ok" / "report.html").is_file()
    failed = runner.invoke(app, [*base, str(ref), str(damaged)])
    assert failed.exit_code == 1 and "weight_sqnr_min_db" in failed.output
    unknown = runner.invoke(app, ["check", str(ref), str(fp8), "--fail-under", "kl_men=1"])
    assert unknown.exit_code == 2 and "did you mean 'kl_mean'" in unknown.output
    no_tokenizer = runner.invoke(app, ["check", str(fp8.parent / "nowhere"), str(fp8)])
    assert no_tokenizer.exit_code == 2


def _hard_linked_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (os.link if path.suffix == ".safetensors" else shutil.copy)(path, target / path.name)
    return target


def test_a_checkpoint_against_itself_is_refused(synth_trio, tmp_path: Path) -> None:
    """`qtools check REF REF` used to pass without a word: refused (exit 2) for the same directory, a symlink
    to it, or a directory whose weight files are the same files (hard links)."""
    ref, _, _ = synth_trio
    link = tmp_path / "link"
    link.symlink_to(ref)
    runner = CliRunner()
    for other in (ref, link, _hard_linked_copy(ref, tmp_path / "linked")):
        result = runner.invoke(app, ["check", str(ref), str(other), "--suite", "weights"])
        assert result.exit_code == 2 and "against itself" in result.output, (other, result.output)


def test_swapped_arguments_are_warned_about_and_recorded(synth_trio, tmp_path: Path) -> None:
    """A quantised reference against a BF16 "quantised" checkpoint is almost always swapped arguments: said
    loudly on the terminal and in every report, recorded in meta.warnings (the figures are still computed)."""
    ref, fp8, _ = synth_trio
    args = ["check", str(fp8), str(ref), "--suite", "weights", "--report", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, *(f"--fail-under={item}" for item in STRUCTURAL)])
    assert result.exit_code == 0, result.output
    assert "warning" in result.output and "swapped" in " ".join(result.output.split())
    report = json.loads((tmp_path / "report.json").read_text())
    assert any("swapped" in warning for warning in report["meta"]["warnings"])
    for name in ("report.md", "report.html"):
        assert "swapped" in (tmp_path / name).read_text(), name


def _no_models(*args, **kwargs):
    raise AssertionError("a model was loaded before the check's inputs were validated")


@pytest.mark.parametrize(
    "case",
    [
        "report is a file",
        "report under a file",
        "report.json is a folder",
        "device tpu",
        "device meta",
        "device malformed",
        "cuda",
        "dtype",
        "negative size",
        "suite file not utf-8",
        "suite file bad record",
    ],
)
def test_bad_check_inputs_are_refused_before_any_model_is_loaded(synth_trio, tmp_path, monkeypatch, case) -> None:
    """Each of these used to fail only after both models ran (hours at 480B) or with a traceback."""
    ref, fp8, _ = synth_trio
    monkeypatch.setattr(pipeline, "run_qtools", _no_models)
    existing = tmp_path / "existing.txt"
    existing.write_text("not a directory")
    (tmp_path / "reports" / "report.json").mkdir(parents=True)
    suite = tmp_path / "suite.jsonl"
    cuda = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    args, message = {
        "report is a file": (["--report", str(existing)], "not a directory"),
        "report under a file": (["--report", str(existing / "out")], "cannot create"),
        "report.json is a folder": (["--report", str(tmp_path / "reports")], "report.json"),
        "device tpu": (["--device", "tpu"], "cpu or cuda"),
        "device meta": (["--device", "meta"], "cpu or cuda"),
        "device malformed": (["--device", "cuda:x"], "cpu or cuda"),
        "cuda": (["--device", cuda], "CUDA"),
        "dtype": (["--dtype", "float16"], "--dtype"),
        "negative size": (["--code-tokens", "-1"], "--code-tokens"),
        "suite file not utf-8": (["--suite-file", str(suite)], "UTF-8"),
        "suite file bad record": (["--suite-file", str(suite)], "suite.jsonl:1"),
    }[case]
    suite.write_bytes(
        b"\xff\xfe\n"
        if case == "suite file not utf-8"
        else b'{"kind": "tools", "messages": [{"role": "user", "content": "hi"}], "expected_calls": "x"}\n'
    )
    result = CliRunner().invoke(app, ["check", str(ref), str(fp8), "--suite", "code,weights", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


def test_run_check_refuses_an_unsupported_dtype(synth_trio, monkeypatch) -> None:
    ref, fp8, _ = synth_trio
    monkeypatch.setattr(pipeline, "run_qtools", _no_models)
    with pytest.raises(QtoolsError, match="dtype"):
        run_check(ref, fp8, suites=("weights",), dtype=torch.float16)


def test_auto_dtype_is_float32_on_cpu_and_bfloat16_on_cuda() -> None:
    assert check_dtype(None, "cpu") == torch.float32
    assert check_dtype(None, "cuda:0") == torch.bfloat16
    assert check_dtype(torch.bfloat16, "cpu") == torch.bfloat16


def test_profile_auto_follows_the_checkpoint_format(synth_trio, w4a16_outputs) -> None:
    ref, fp8, _ = synth_trio
    assert check_profile("auto", fp8) == "fp8" and check_profile("auto", ref) == "fp8"
    assert check_profile("auto", w4a16_outputs[128]) == "int4" and check_profile("fp8", w4a16_outputs[64]) == "fp8"
    assert PROFILES["int4"] != PROFILES["fp8"]
    with pytest.raises(QtoolsError, match="--profile must be one of auto, fp8, int4"):
        check_profile("int8", fp8)


def test_vllm_engine_says_how_to_install_it(synth_trio, monkeypatch) -> None:
    ref, fp8, _ = synth_trio
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    result = CliRunner().invoke(app, ["check", str(ref), str(fp8), "--engine", "vllm"])
    assert result.exit_code == 2
    assert "pip install vllm" in " ".join(result.output.split())


class _FakeLLM:
    """Stands in for `vllm.LLM`: the qtools runtime behind vLLM's generate/prompt_logprobs interface, with
    padded logit columns masked as a trained model's would be (their logits sit far below the rest)."""

    valid_vocab = 0

    def __init__(self, model: str, tokenizer: str, max_logprobs: int, seed: int, tensor_parallel_size: int):
        self.model = load_model(model)

    def generate(self, prompts: list[dict], params, use_tqdm: bool = False) -> list[SimpleNamespace]:
        params = params if isinstance(params, list) else [params] * len(prompts)
        results = []
        for prompt, param in zip(prompts, params, strict=True):
            ids = prompt["prompt_token_ids"]
            if param.prompt_logprobs:
                logits = self.model(torch.tensor([ids]))[0].double()
                logits[:, self.valid_vocab :] = float("-inf")
                logp = torch.log_softmax(logits, -1)
                entries: list[dict | None] = [None]
                for position in range(1, len(ids)):
                    row = logp[position - 1]
                    chosen = [*row.topk(param.prompt_logprobs).indices.tolist(), ids[position]]
                    entries.append({token: SimpleNamespace(logprob=float(row[token])) for token in chosen})
                results.append(SimpleNamespace(prompt_logprobs=entries, outputs=[SimpleNamespace(token_ids=[0])]))
            else:
                tokens = greedy_decode(self.model, [ids], [param.max_tokens], param.stop_token_ids)[0]
                results.append(SimpleNamespace(prompt_logprobs=None, outputs=[SimpleNamespace(token_ids=tokens)]))
        return results


def test_vllm_engine_glue_against_a_stand_in(synth_trio, monkeypatch) -> None:
    ref, fp8, _ = synth_trio
    # the stand-in, like vLLM, computes in bfloat16: compare it with the runtime in the same dtype
    qtools_engine = _check(ref, fp8, suites=("code", "tools"), dtype=torch.bfloat16)
    fake = types.ModuleType("vllm")
    _FakeLLM.valid_vocab = qtools_engine.meta["valid_vocab"]
    fake.LLM = _FakeLLM
    fake.SamplingParams = lambda **fields: SimpleNamespace(**{"prompt_logprobs": None, **fields})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    vllm_engine = _check(ref, fp8, suites=("code", "tools", "weights"), engine="vllm")
    exact, estimate = qtools_engine.figures["distribution"], vllm_engine.figures["distribution"]
    assert estimate["tokens"] == exact["tokens"]
    assert estimate["ppl_ref"] == pytest.approx(exact["ppl_ref"], rel=1e-3)
    assert estimate["ppl_ratio"] == pytest.approx(exact["ppl_ratio"], rel=1e-3)
    assert estimate["top1_agreement"] == pytest.approx(exact["top1_agreement"], abs=0.01)
    assert 0 < estimate["kl"]["mean"] <= exact["kl"]["mean"] * 1.05
    assert vllm_engine.figures["generation"] == qtools_engine.figures["generation"]
    assert vllm_engine.figures["tools"]["same_calls"] == qtools_engine.figures["tools"]["same_calls"]
    assert "layers" in vllm_engine.figures and vllm_engine.figures["weights"]["sqnr_min_db"] > 28
    assert vllm_engine.meta["engine"] == "vllm" and vllm_engine.meta["vllm_options"] == {"tensor_parallel_size": 1}
