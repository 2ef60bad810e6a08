"""Calibrated W4A16 (GPTQ) conversion, layer by layer: layout, causal capture, coverage modes, experts without
tokens, fallbacks, spilled hidden states, determinism, recipes and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from qtools.calibration import CalibrationSet
from qtools.checkpoint.hf import STATE_DIR
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.formats.pack_quantized import PACKED, SCALE
from qtools.gptq import GPTQHooks, convert_gptq
from qtools.gptq.capture import (
    ExpertHessians,
    LayerHessians,
    Routing,
    accumulate_down,
    accumulate_gate_up,
    attend,
    capturing,
)
from qtools.gptq.quantize import Quantizer, _expert_hessian, expert_weights
from qtools.inspect import inspect_checkpoint
from qtools.numerics.int4 import unpack_int4
from qtools.recipe import Recipe, load_recipe
from qtools.runtime import load_model
from qtools.runtime.loading import load_layer
from qtools.testing.files import tree_digest
from qtools.testing.synth import SynthSpec, make_checkpoint
from qtools.verify import verify_checkpoint
from tests.test_w4a16_oracles import load_tensors

# Tiny calibration sets keep each conversion of the synthetic checkpoints to a second or two.
SAMPLES, LENGTH, BATCH = 8, 32, 4


def calibration_set(ids: torch.Tensor, source: str = "test tokens") -> CalibrationSet:
    return CalibrationSet(ids, hashlib.sha256(ids.numpy().tobytes()).hexdigest(), source)


def random_calibration(vocab: int, samples: int = SAMPLES, length: int = LENGTH, seed: int = 0) -> CalibrationSet:
    ids = torch.randint(0, vocab, (samples, length), generator=torch.Generator().manual_seed(seed))
    return calibration_set(ids)


def gptq_recipe(name: str = "w4a16-gptq", **changes) -> Recipe:
    """A shipped GPTQ recipe with some settings changed, validated again."""
    raw = load_recipe(name).model_dump(exclude={"block_size", "scale_dtype"})
    return Recipe.model_validate({**raw, **changes})


def weights_digest(root: Path) -> dict[str, str]:
    return {name: digest for name, digest in tree_digest(root).items() if not name.startswith(STATE_DIR)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny layers run 10x faster on one intra-op thread than on two contended ones (the test machine's
    cores are shared); results do not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def calibration() -> CalibrationSet:
    return random_calibration(500)


@pytest.fixture(scope="module")
def gptq_output(aligned_checkpoint, calibration, tmp_path_factory) -> Path:
    """`aligned_checkpoint` converted with w4a16-gptq (coverage routed). Do not modify."""
    out = tmp_path_factory.mktemp("gptq") / "w4a16-gptq"
    convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, batch_size=BATCH)
    return out


@pytest.fixture(scope="module")
def sparse_checkpoint(tmp_path_factory) -> Path:
    """8 experts, top-1, so a few calibration tokens leave some experts without any. Do not modify."""
    spec = SynthSpec(
        hidden_size=128, moe_intermediate_size=128, head_dim=32, num_experts=8, num_experts_per_tok=1,
        vocab_size=200, shard_bytes=1_000_000,
    )  # fmt: skip
    return make_checkpoint(tmp_path_factory.mktemp("sparse") / "bf16", spec, seed=3)


def test_output_has_the_rtn_layout_config_and_kept_tensors(gptq_output, w4a16_outputs, aligned_checkpoint):
    """Same tensor names, dtypes, shapes, shards and quantization_config as w4a16-rtn: only codes differ."""
    ours, rtn, source = load_tensors(gptq_output), load_tensors(w4a16_outputs[128]), load_tensors(aligned_checkpoint)
    assert {n: (t.dtype, t.shape) for n, t in ours.items()} == {n: (t.dtype, t.shape) for n, t in rtn.items()}
    assert sorted(p.name for p in gptq_output.glob("*.safetensors")) == sorted(
        p.name for p in w4a16_outputs[128].glob("*.safetensors")
    )
    config = json.loads((gptq_output / "config.json").read_text())["quantization_config"]
    assert config == json.loads((w4a16_outputs[128] / "config.json").read_text())["quantization_config"]
    for name, tensor in ours.items():
        if name in source:
            assert torch.equal(tensor, source[name]), name
    packed = [n for n in ours if n.endswith(PACKED)]
    changed = sum(not torch.equal(ours[n], rtn[n]) for n in packed)
    assert changed == len(packed), "GPTQ changes the codes of every expert projection"
    scales = [n for n in ours if n.endswith(SCALE)]
    assert all(torch.equal(ours[n], rtn[n]) for n in scales), "static scales: round-to-nearest's"
    assert verify_checkpoint(gptq_output, deep=True).ok
    index = json.loads((gptq_output / "model.safetensors.index.json").read_text())
    assert len(index["metadata"]["qtools_calibration_sha256"]) == 64
    assert not (gptq_output / STATE_DIR / "layers").exists(), "finished layer files are removed at the end"


def test_calibration_report_and_inspect(gptq_output, calibration):
    report = json.loads((gptq_output / STATE_DIR / "calibration.json").read_text())
    assert report["calibration"]["sha256"] == calibration.sha256 and report["coverage"] == "routed"
    assert report["experts"] == 8 and report["experts_calibrated"] == 8 and report["experts_fallback"] == 0
    for layer in report["layers"]:
        # top-2 routing: every token reaches two experts.
        assert sum(layer["routed_tokens"]) == 2 * calibration.tokens
    assert inspect_checkpoint(gptq_output).calibration == report


def test_captured_inputs_are_the_runtime_forward(aligned_checkpoint, gptq_output, calibration):
    """What the Hessians see is what `qtools.runtime` computes for the output checkpoint: layer 0's inputs from
    the embeddings, layer 1's after the quantised layer 0; and the capture is causal (a later token changes
    nothing before it)."""
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}

    def on_inputs(layer: int, where: str, x: torch.Tensor) -> None:
        if where != "o_proj":
            seen.setdefault((layer, where), []).append(x.clone())

    hooks = GPTQHooks(on_inputs=on_inputs)
    convert_gptq(
        aligned_checkpoint, gptq_output.parent / "observed", load_recipe("w4a16-gptq"), calibration,
        batch_size=BATCH, hooks=hooks,
    )  # fmt: skip
    model = load_model(gptq_output, dtype=torch.float32)
    plain: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for index, layer in enumerate(model.layers):
        for where, module in (("attention", layer.self_attn.q_proj), ("moe", layer.mlp.gate)):
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, args, key=(index, where): plain.setdefault(key, []).append(args[0].clone())
                )
            )
    with torch.no_grad():
        for first in range(0, SAMPLES, BATCH):
            model(calibration.input_ids[first : first + BATCH])
    for handle in handles:
        handle.remove()
    assert sorted(seen) == sorted(plain)
    for key in plain:
        captured = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen[key]])
        assert torch.equal(captured, torch.cat([x.reshape(-1, x.shape[-1]) for x in plain[key]])), key

    layer = load_layer(aligned_checkpoint, 0, dtype=torch.float32)
    hessians = LayerHessians.for_layer(layer, 4, "routed", True, False, True)
    inputs = []
    observer = lambda where, x: inputs.append(x.clone()) if where == "moe" else 0  # noqa: E731
    with torch.no_grad(), capturing(layer, hessians, observer):
        hidden = torch.randn(2, 12, 256, generator=torch.Generator().manual_seed(0))
        attend(layer, hidden, torch.arange(12), hessians, observer)
        changed = hidden.clone()
        changed[:, -1] += 1.0
        attend(layer, changed, torch.arange(12), hessians, observer)
    before, after = (x.view(2, 12, -1) for x in inputs)
    assert torch.equal(before[:, :-1], after[:, :-1]) and not torch.equal(before[:, -1], after[:, -1])


@pytest.mark.parametrize("coverage", ["routed", "all-tokens", "blend"])
def test_coverage_modes_run_and_only_all_tokens_shares_one_gate_up_hessian(
    aligned_checkpoint, calibration, tmp_path, coverage
):
    out = tmp_path / coverage
    summary = convert_gptq(aligned_checkpoint, out, gptq_recipe(coverage=coverage), calibration, batch_size=BATCH)
    assert summary.experts_calibrated == 8 and summary.experts_fallback == 0 and verify_checkpoint(out).ok
    layer = load_layer(aligned_checkpoint, 0, dtype=torch.float32)
    hessians = LayerHessians.for_layer(layer, 4, coverage, False, False, True)
    stacks = ExpertHessians.for_group([0, 1, 2, 3], 256, 128, coverage, "cpu")
    built = [name for name in ("gate_up_all",) if getattr(hessians, name) is not None]
    built += [name for name in ("gate_up_routed",) if getattr(stacks, name) is not None]
    assert built == {"routed": ["gate_up_routed"], "all-tokens": ["gate_up_all"], "blend": built}[coverage]
    if coverage == "all-tokens":
        # One [H, H] matrix for the gate/up of every expert of the layer, factorised once.
        assert hessians.gate_up_all.experts is None
        recipe = gptq_recipe(coverage=coverage)
        assert _expert_hessian(recipe, hessians, stacks, "gate_up", [0, 1, 2, 3], 0.0).dim() == 2


def _no_token_experts(report: dict) -> list[tuple[int, int]]:
    return [(r["layer"], e) for r in report["layers"] for e, n in enumerate(r["routed_tokens"]) if n == 0]


def test_expert_without_tokens_is_never_zeroed(sparse_checkpoint, tmp_path):
    """Routed coverage: an expert no token reaches gets round-to-nearest weights (the RTN output's, bit for bit),
    counted and warned; blend gives it the all-token prior, so it is calibrated."""
    calibration = random_calibration(200, samples=1, length=6, seed=1)
    warnings: list[str] = []
    routed = convert_gptq(
        sparse_checkpoint, tmp_path / "routed", gptq_recipe(coverage="routed"), calibration,
        hooks=GPTQHooks(on_warning=warnings.append),
    )  # fmt: skip
    empty = _no_token_experts(routed.report)
    assert empty, "precondition: 6 tokens, top-1 of 8 experts leaves some expert without tokens"
    assert routed.experts_fallback == len(empty) == len(warnings)
    rtn = tmp_path / "rtn"
    convert_checkpoint(sparse_checkpoint, rtn, load_recipe("w4a16-rtn"))
    ours, theirs = load_tensors(tmp_path / "routed"), load_tensors(rtn)
    for layer, expert in empty:
        reasons = routed.report["layers"][layer]["fallbacks"][str(expert)]
        assert set(reasons) == {"gate_up", "down"} and all("no calibration data" in r for r in reasons.values())
        assert any(f"layer {layer} expert {expert}: " in w for w in warnings)
        for projection in ("gate_proj", "up_proj", "down_proj"):
            name = f"model.layers.{layer}.mlp.experts.{expert}.{projection}.{PACKED}"
            assert torch.equal(ours[name], theirs[name]) and (unpack_int4(ours[name]) != -8).any(), name
    blend = convert_gptq(sparse_checkpoint, tmp_path / "blend", gptq_recipe(coverage="blend"), calibration)
    assert blend.experts_fallback == 0 and blend.experts_calibrated == 16
    blended = load_tensors(tmp_path / "blend")
    layer, expert = empty[0]
    name = f"model.layers.{layer}.mlp.experts.{expert}.down_proj.{PACKED}"
    assert not torch.equal(blended[name], theirs[name]), "the prior calibrates it: not round-to-nearest"


def test_round_to_nearest_below_a_token_count_only_when_asked(sparse_checkpoint, tmp_path):
    calibration = random_calibration(200, samples=2, length=16, seed=2)
    warnings: list[str] = []
    recipe = gptq_recipe(coverage="all-tokens", rtn_below_tokens=4)
    summary = convert_gptq(
        sparse_checkpoint, tmp_path / "out", recipe, calibration, hooks=GPTQHooks(on_warning=warnings.append)
    )
    few = [(r["layer"], e) for r in summary.report["layers"] for e, n in enumerate(r["routed_tokens"]) if n < 4]
    assert few and summary.experts_fallback == len(few) == len(warnings)
    unasked = convert_gptq(sparse_checkpoint, tmp_path / "unasked", gptq_recipe(coverage="all-tokens"), calibration)
    assert unasked.experts_fallback == 0, "all-tokens calibrates every expert unless asked otherwise"
    assert summary.report["fallback_reasons"] == {"round-to-nearest as asked": len(few)}
    layer, expert = few[0]
    reason = summary.report["layers"][layer]["fallbacks"][str(expert)]["down"]
    assert "as asked" in reason


def test_failed_cholesky_retries_then_falls_back_counted(aligned_checkpoint):
    layer = load_layer(aligned_checkpoint, 0, dtype=torch.float32)
    recipe = gptq_recipe(coverage="routed")
    hessians = LayerHessians.for_layer(layer, 4, "routed", False, False, True)
    stacks = ExpertHessians.for_group([0, 1, 2, 3], 256, 128, "routed", "cpu")
    generator = torch.Generator().manual_seed(0)
    for stack in (stacks.gate_up_routed, stacks.down_routed):
        x = torch.randn(4, 64, stack.in_features, generator=generator)
        stack.add_stacked(x)
    # Expert 2's down Hessian is negative definite: no dampening makes it factorisable. Expert 1's has one
    # eigenvalue of -0.03 x its mean diagonal: 0.01 of dampening fails, 0.1 succeeds.
    stacks.down_routed.mean[2] = -torch.eye(128)
    stacks.down_routed.mean[1] = torch.diag(torch.tensor([1.0] * 127 + [-0.03]))
    hessians.routed_tokens[:] = 64
    quantizer = Quantizer(recipe, _int4(), "cpu", 0, lambda _: torch.bfloat16)
    for projection in ("gate_up", "down"):
        quantizer.experts(stacked_weights(layer, [0, 1, 2, 3], projection), [0, 1, 2, 3], hessians, stacks, projection)
    result = quantizer.result
    assert result.fallbacks == {2: {"down": "round-to-nearest: Cholesky failed at every dampening tried"}}
    assert [(module, round(damp, 6)) for module, damp in result.damp_raised] == [
        ("model.layers.0.mlp.experts.1.down_proj", 0.1)
    ]


def stacked_weights(layer, experts: list[int], projection: str) -> torch.Tensor:
    """`expert_weights` of a loaded layer's dense experts."""
    modules = {f"model.layers.0.mlp.experts.{e}.{p}.weight": getattr(layer.mlp.experts[e], p).weight
               for e in experts for p in ("gate_proj", "up_proj", "down_proj")}  # fmt: skip
    return expert_weights(modules.__getitem__, "model.layers.0", experts, projection)


def _int4():
    from qtools.formats import Int4GroupLayout

    return Int4GroupLayout(128)


def test_spilled_hidden_states_give_the_same_output(aligned_checkpoint, gptq_output, calibration, tmp_path):
    out = tmp_path / "spilled"
    spilled: list[list[str]] = []

    def on_layer_start(layer: int, phase: str, units: int) -> None:
        spilled.append(sorted(p.name for p in (out / STATE_DIR / "hidden").rglob("*.bin")))

    hooks = GPTQHooks(on_layer_start=on_layer_start)
    convert_gptq(
        aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, max_memory=1, batch_size=BATCH, hooks=hooks
    )
    assert spilled and all(names == ["a.bin", "b.bin"] for names in spilled)
    assert not (out / STATE_DIR / "hidden").exists(), "spill files are removed at the end"
    assert weights_digest(out) == weights_digest(gptq_output)


def test_same_inputs_give_byte_identical_output_and_a_rerun_keeps_it(
    aligned_checkpoint, gptq_output, calibration, tmp_path
):
    out = tmp_path / "again"
    convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, batch_size=BATCH)
    assert weights_digest(out) == weights_digest(gptq_output)
    report = (out / STATE_DIR / "calibration.json").read_bytes()
    assert report == (gptq_output / STATE_DIR / "calibration.json").read_bytes()
    summary = convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, batch_size=BATCH)
    assert summary.layers_calibrated == 0 and summary.layers_reused == 2
    assert weights_digest(out) == weights_digest(gptq_output)


def test_other_calibration_data_refuses_to_resume(aligned_checkpoint, gptq_output, tmp_path):
    other = random_calibration(500, seed=7)
    with pytest.raises(QtoolsError, match="different calibration"):
        convert_gptq(aligned_checkpoint, gptq_output, load_recipe("w4a16-gptq"), other, batch_size=BATCH)


@pytest.mark.parametrize(
    "problem, message",
    [
        ("tokens", "token ids must lie in"),
        ("quantised", "already quantised"),
        ("rtn", "not calibrated"),
    ],
)
def test_bad_input_is_refused_before_writing(
    aligned_checkpoint, w4a16_outputs, calibration, tmp_path, problem, message
):
    source, recipe, data = aligned_checkpoint, load_recipe("w4a16-gptq"), calibration
    if problem == "tokens":
        data = calibration_set(torch.full((2, 8), 500, dtype=torch.int64))
    elif problem == "quantised":
        source = w4a16_outputs[128]
    else:
        recipe = load_recipe("w4a16-rtn")
    with pytest.raises(QtoolsError, match=message):
        convert_gptq(source, tmp_path / "out", recipe, data)
    assert not (tmp_path / "out").exists()


def test_model_free_converter_refuses_a_calibrated_recipe(aligned_checkpoint, tmp_path):
    with pytest.raises(QtoolsError, match="--calibration"):
        convert_checkpoint(aligned_checkpoint, tmp_path / "out", load_recipe("w4a16-gptq"))


def test_gptq_recipes_load_with_their_defaults_and_rtn_ones_stay_uncalibrated():
    for name, group in (("w4a16-gptq", 128), ("w4a16-gptq-tp8", 64)):
        recipe = load_recipe(name)
        assert (recipe.method, recipe.group_size, recipe.coverage, recipe.damp) == ("gptq", group, "routed", 0.01)
        assert recipe.calibrated and '"method":"gptq"' in recipe.fingerprint()
    inferred = Recipe.model_validate({"scheme": "w4a16", "method": "gptq", "targets": ["x"]})
    assert (inferred.coverage, inferred.damp, inferred.prior_strength, inferred.rtn_below_tokens) == (
        "routed", 0.01, 0.1, 0,
    )  # fmt: skip
    for name in ("w4a16-rtn", "fp8-block"):
        assert not load_recipe(name).calibrated
        assert "method" not in load_recipe(name).fingerprint() and "coverage" not in load_recipe(name).fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ("scheme: w4a16\ncoverage: routed\ntargets: [x]\n", "set method: gptq"),
        ("scheme: fp8-block\nmethod: gptq\ntargets: [x]\n", "use scheme: w4a16"),
        ("scheme: w4a16\nmethod: gptq\ncoverage: some\ntargets: [x]\n", "coverage"),
        ("scheme: w4a16\nmethod: gptq\ndamp: 0\ntargets: [x]\n", "damp 0"),
        ("scheme: w4a16\nmethod: gptq\nrtn_below_tokens: -1\ntargets: [x]\n", "rtn_below_tokens"),
        ("scheme: w4a16\nmethod: gptq\nfp8_targets: [y]\ntargets: [x]\n", "fp8_targets with method gptq"),
        ("scheme: w4a16\nmethod: sparsegpt\ntargets: [x]\n", "method is rtn or gptq"),
    ],
)
def test_bad_gptq_recipe_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(QtoolsError, match=message):
        load_recipe(path)


def test_recipe_targeting_part_of_an_expert_is_refused(aligned_checkpoint, calibration, tmp_path):
    recipe = gptq_recipe(targets=[r"re:model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up)_proj"])
    with pytest.raises(QtoolsError, match="some but not all"):
        convert_gptq(aligned_checkpoint, tmp_path / "out", recipe, calibration)


def test_cli_runs_a_calibrated_recipe_through_the_calibration_loader(
    aligned_checkpoint, calibration, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    import qtools.calibration
    from qtools.cli import app

    asked = []

    def load_calibration(spec, checkpoint_dir, samples, seq_len, seed, split, column, revision):
        asked.append((spec, Path(checkpoint_dir), samples, seq_len, seed, split, column, revision))
        return calibration

    monkeypatch.setattr(qtools.calibration, "load_calibration", load_calibration, raising=False)
    out = tmp_path / "cli"
    arguments = [
        "convert", str(aligned_checkpoint), str(out), "--recipe", "w4a16-gptq", "--calibration", "data.jsonl",
        "--calibration-samples", "8", "--calibration-seq-len", "32", "--calibration-batch", "4",
        "--max-memory", "1GiB",
    ]  # fmt: skip
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert asked == [("data.jsonl", aligned_checkpoint, 8, 32, 0, "train", None, None)]
    assert "experts calibrated / fallback" in result.output and verify_checkpoint(out).ok
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "experts calibrated 8 / fallback 0" in shown.output
    bad = CliRunner().invoke(app, [*arguments[:-1], "lots"])
    assert bad.exit_code == 2 and "--max-memory" in bad.output


@pytest.mark.parametrize("coverage", ["routed", "blend"])
def test_experts_quantised_a_few_at_a_time_give_the_same_codes(aligned_checkpoint, coverage):
    layer = load_layer(aligned_checkpoint, 1, dtype=torch.float32)
    recipe = gptq_recipe(coverage=coverage)
    hessians = LayerHessians.for_layer(layer, 4, coverage, False, False, True)
    with torch.no_grad():
        h, (weights, ids) = attend(layer, torch.randn(4, 16, 256, generator=torch.Generator().manual_seed(2)),
                                   torch.arange(16), hessians)  # fmt: skip
        routing = Routing(weights, ids, 4)
        hessians.routed_tokens = routing.counts()
        rows = h.reshape(-1, 256).__getitem__
        experts = dict(enumerate(layer.mlp.experts))

        def quantized(groups: list[list[int]], chunk: int) -> dict[str, torch.Tensor]:
            quantizer = Quantizer(recipe, _int4(), "cpu", 1, lambda _: torch.bfloat16)
            for group in groups:
                stacks = ExpertHessians.for_group(group, 256, 128, coverage, "cpu")
                modules = {e: experts[e] for e in group}
                accumulate_gate_up(layer, group, rows, routing, stacks, chunk)
                quantizer.experts(stacked_weights(layer, group, "gate_up"), group, hessians, stacks, "gate_up")
                accumulate_down(layer, modules, rows, 64, routing, stacks, chunk)
                quantizer.experts(stacked_weights(layer, group, "down"), group, hessians, stacks, "down")
            return quantizer.result.tensors

        whole = quantized([[0, 1, 2, 3]], 64)
        steps = quantized([[0], [1], [2], [3]], 64)
    assert whole.keys() == steps.keys()
    assert all(torch.equal(whole[name], steps[name]) for name in whole)


def test_overwrite_discards_the_finished_layers_of_another_calibration(aligned_checkpoint, calibration, tmp_path):
    class Stop(Exception):
        pass

    def stop(layer: int, _report: dict) -> None:
        raise Stop

    out = tmp_path / "out"
    with pytest.raises(Stop):
        convert_gptq(
            aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, hooks=GPTQHooks(on_layer_done=stop)
        )
    assert (out / STATE_DIR / "layers" / "layer-00000.json").exists()
    other = random_calibration(500, seed=7)
    summary = convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), other, overwrite=True)
    assert summary.layers_reused == 0
    fresh = tmp_path / "fresh"
    convert_gptq(aligned_checkpoint, fresh, load_recipe("w4a16-gptq"), other)
    assert weights_digest(out) == weights_digest(fresh)


def test_targeted_attention_is_calibrated_too(aligned_checkpoint, calibration, tmp_path):
    """A recipe that targets attention: q/k/v share the attention input's Hessian (one factorisation for the
    three), o_proj has its own; the output verifies, and its logits on the calibration tokens are closer to the
    BF16 model's than round-to-nearest's of the same modules."""
    experts = r"re:model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj"
    targets = [experts, r"re:model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj"]
    out, rtn = tmp_path / "gptq", tmp_path / "rtn"
    convert_gptq(aligned_checkpoint, out, gptq_recipe(targets=targets), calibration, batch_size=BATCH)
    convert_checkpoint(aligned_checkpoint, rtn, load_recipe("w4a16-rtn").model_copy(update={"targets": targets}))
    tensors = load_tensors(out)
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert f"model.layers.1.self_attn.{projection}.{PACKED}" in tensors
    assert verify_checkpoint(out, deep=True).ok
    ids = calibration.input_ids
    reference = load_model(aligned_checkpoint, dtype=torch.float32)(ids)
    errors = {
        path.name: float((load_model(path, dtype=torch.float32)(ids) - reference).square().mean())
        for path in (out, rtn)
    }
    print(f"\nINT4 attention and experts, logits MSE against BF16: {errors}")
    assert errors["gptq"] < errors["rtn"]
