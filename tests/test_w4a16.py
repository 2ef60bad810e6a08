"""W4A16 (compressed-tensors pack-quantized) end to end: recipes, convert, verify, inspect and the runtime.

Tolerances: packing, scales and passthrough tensors bit-exact; dequantised experts within half a quantisation
step of the source (plus the 2^-8 a bf16 scale can round); the runtime's INT4 layers against a dense model
holding exactly the weights they dequantise to: equal logits (the same float32 operations).
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from qtools.checkpoint.hf import STATE_DIR, Checkpoint
from qtools.checkpoint.safetensors_io import SafetensorsReader
from qtools.cli import app
from qtools.convert import convert_checkpoint, prefetch
from qtools.errors import QtoolsError
from qtools.formats import detect
from qtools.inspect import inspect_checkpoint
from qtools.numerics.int4 import dequantize_int4_group, quantize_int4_group
from qtools.recipe import Recipe, load_recipe, recipe_path
from qtools.runtime import load_model
from qtools.testing.synth import GROUP_ALIGNED_SPEC as ALIGNED_SPEC
from qtools.verify import verify_checkpoint

runner = CliRunner()
EXPERT = "model.layers.1.mlp.experts.2.down_proj"


def load_all(root: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in Checkpoint.open(root).shard_names:
        with safe_open(root / shard, "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def is_expert(module: str) -> bool:
    return ".mlp.experts." in module


def expected_config(group: int) -> dict:
    """The config llm-compressor 0.14 writes for W4A16 (`QuantizationModifier(scheme="W4A16")`), attention kept."""
    kept = ["lm_head", "model.embed_tokens"]
    for layer in range(ALIGNED_SPEC.num_layers):
        kept.append(f"model.layers.{layer}.mlp.gate")
        kept += [f"model.layers.{layer}.self_attn.{p}_proj" for p in "qkvo"]
    weights = {
        "actorder": None,
        "block_structure": None,
        "dynamic": False,
        "group_size": group,
        "num_bits": 4,
        "observer": "memoryless_minmax",
        "observer_kwargs": {},
        "scale_dtype": None,
        "strategy": "group",
        "symmetric": True,
        "type": "int",
        "zp_dtype": None,
    }
    return {
        "config_groups": {
            "group_0": {
                "format": "pack-quantized",
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": weights,
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": None,
        "ignore": sorted(kept),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": version("compressed-tensors"),
    }


@pytest.mark.parametrize("group", [128, 64])
def test_layout_config_and_passthrough(w4a16_outputs, aligned_checkpoint, group):
    source, result = load_all(aligned_checkpoint), load_all(w4a16_outputs[group])
    config = json.loads((w4a16_outputs[group] / "config.json").read_text())
    assert config.pop("quantization_config") == expected_config(group)
    assert config == json.loads((aligned_checkpoint / "config.json").read_text())
    experts = sorted(n.removesuffix(".weight") for n in source if is_expert(n))
    assert len(experts) == ALIGNED_SPEC.num_layers * ALIGNED_SPEC.num_experts * 3
    for module in experts:
        weight = source.pop(f"{module}.weight")
        packed, scale = quantize_int4_group(weight, group)
        assert result.pop(f"{module}.weight_packed").equal(packed), module
        stored_scale = result.pop(f"{module}.weight_scale")
        assert stored_scale.dtype == torch.bfloat16 and stored_scale.equal(scale), module
        shape = result.pop(f"{module}.weight_shape")
        assert shape.dtype == torch.int64 and shape.tolist() == list(weight.shape), module
        assert packed.shape == (weight.shape[0], weight.shape[1] // 8) and scale.shape[1] == weight.shape[1] // group
    assert sorted(result) == sorted(source), "everything else is kept"
    assert all(result[name].equal(tensor) and result[name].dtype == tensor.dtype for name, tensor in source.items())


def test_dequantised_experts_are_within_half_a_step(w4a16_outputs, aligned_checkpoint):
    source, result = load_all(aligned_checkpoint), load_all(w4a16_outputs[128])
    signal = noise = 0.0
    for name in (n for n in source if is_expert(n)):
        module, exact = name.removesuffix(".weight"), source[name].float()
        scale = result[f"{module}.weight_scale"]
        restored = dequantize_int4_group(result[f"{module}.weight_packed"], scale, 128)
        step = scale.float().repeat_interleave(128, dim=1)
        assert ((restored - exact).abs() <= step * (0.5 + 7.5 * 2.0**-8)).all(), module
        signal, noise = signal + exact.square().sum().item(), noise + (restored - exact).square().sum().item()
    sqnr = 10 * torch.log10(torch.tensor(signal / noise)).item()
    print(f"\nW4A16 g128 round-to-nearest: SQNR {sqnr:.2f} dB against BF16")
    assert sqnr > 17.0  # INT4 with one scale per 128 Gaussian-like weights gives about 19 dB


# ---- recipes ----


def test_w4a16_recipes_infer_their_format_and_group():
    recipe = Recipe(scheme="w4a16", targets=["x"])
    assert recipe.format == "compressed-tensors" and recipe.group_size == 128
    assert load_recipe("w4a16-rtn").group_size == 128 and load_recipe("w4a16-rtn-tp8").group_size == 64
    for name in ("w4a16-rtn", "w4a16-rtn-tp8"):
        text = recipe_path(name).read_text()
        assert "TP8" in text and "expert parallelism" in text, "each recipe says which serving layouts load it"


def test_fp8_recipe_fingerprints_do_not_mention_group_size():
    assert "group_size" not in load_recipe("fp8-block").fingerprint()
    assert '"group_size":64' in load_recipe("w4a16-rtn-tp8").fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ("scheme: w4a16\nformat: hf-fp8\ntargets: [x]\n", "compressed-tensors pack-quantized only"),
        ("scheme: w4a16\nblock_size: [128, 128]\ntargets: [x]\n", "block_size: fp8-block settings"),
        ("scheme: w4a16\nscale_dtype: float32\ntargets: [x]\n", "scale_dtype: fp8-block settings"),
        ("scheme: w4a16\ngroup_size: 100\ntargets: [x]\n", "group_size 100: w4a16 takes 32, 64, 128"),
        ("scheme: w4a16\ngroup_size: '128'\ntargets: [x]\n", "group_size is an integer"),
        ("group_size: 128\ntargets: [x]\n", "group_size is a w4a16 setting"),
        ("scheme: int4\ntargets: [x]\n", "scheme"),
        ("fp8_targets: [y]\ntargets: [x]\n", "fp8_targets is a w4a16 setting"),
    ],
    ids=[
        "hf-fp8",
        "block_size",
        "scale_dtype",
        "group 100",
        "group string",
        "group on fp8",
        "unknown scheme",
        "fp8_targets on fp8",
    ],
)
def test_bad_w4a16_recipe_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(QtoolsError, match=message):
        load_recipe(path)


def test_cli_converts_w4a16_and_refuses_hf_fp8_for_it(aligned_checkpoint, tmp_path):
    result = runner.invoke(app, ["convert", str(aligned_checkpoint), str(tmp_path / "out"), "--recipe", "w4a16-rtn"])
    assert result.exit_code == 0, result.output
    assert verify_checkpoint(tmp_path / "out").ok
    bad = ["convert", str(aligned_checkpoint), str(tmp_path / "bad"), "--recipe", "w4a16-rtn", "--format", "hf-fp8"]
    result = runner.invoke(app, bad)
    assert result.exit_code == 2 and "pack-quantized only" in result.output
    assert not (tmp_path / "bad").exists()


# ---- convert: refusals and streaming ----


@pytest.mark.parametrize("group, tensor", [(128, "mlp.experts.0.down_proj"), (32, "mlp.experts.0.down_proj")])
def test_dimensions_not_a_multiple_of_the_group_are_refused_before_writing(synth_checkpoint, tmp_path, group, tensor):
    """The default synthetic checkpoint has hidden 320 and expert width 200: 200 is no multiple of 32 or 128."""
    recipe = load_recipe("w4a16-rtn").model_copy(update={"group_size": group})
    with pytest.raises(QtoolsError, match=rf"{tensor}\.weight.*multiple of the group size {group}") as error:
        convert_checkpoint(synth_checkpoint, tmp_path / "out", recipe)
    assert "INT4" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_non_finite_expert_weight_is_refused_naming_it(aligned_checkpoint, tmp_path):
    source = shutil.copytree(aligned_checkpoint, tmp_path / "src")
    shard = source / Checkpoint.open(source).weight_map[f"{EXPERT}.weight"]
    tensors = load_file(shard)
    tensors[f"{EXPERT}.weight"][5, 7] = float("nan")
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(QtoolsError, match=f"{EXPERT}.weight.*NaN"):
        convert_checkpoint(source, tmp_path / "out", load_recipe("w4a16-rtn"))


def test_weights_are_read_a_few_rows_at_a_time(aligned_checkpoint, tmp_path, monkeypatch):
    """Memory per worker stays at a few rows of one weight: quantised weights are only ever read or mapped a
    bounded number of rows at a time (`MAP_WINDOW_BYTES`, here set to 128 rows' worth; kept tensors are copied
    in bounded chunks, as for FP8)."""
    reads: list[tuple[str, int]] = []
    read_rows, map_rows = SafetensorsReader.read_rows, SafetensorsReader.map_rows

    def spy(self, name, first, count):
        reads.append((name, count))
        return read_rows(self, name, first, count)

    def map_spy(self, name, first, count):
        reads.append((name, count))
        return map_rows(self, name, first, count)

    monkeypatch.setattr(SafetensorsReader, "read_rows", spy)
    monkeypatch.setattr(SafetensorsReader, "map_rows", map_spy)
    monkeypatch.setattr(prefetch, "MAP_WINDOW_BYTES", 1)  # at least one slab (128 rows) per map
    monkeypatch.setattr(SafetensorsReader, "read", lambda *a, **k: pytest.fail("a whole tensor was read"))
    convert_checkpoint(aligned_checkpoint, tmp_path / "out", load_recipe("w4a16-rtn"), workers=1)
    assert {name for name, _ in reads} == {n for n in Checkpoint.open(aligned_checkpoint).weight_map if is_expert(n)}
    assert max(count for _, count in reads) == 128


def test_workers_and_a_rerun_give_identical_output(aligned_checkpoint, w4a16_outputs, tmp_path):
    out = tmp_path / "two-workers"
    convert_checkpoint(aligned_checkpoint, out, load_recipe("w4a16-rtn"), workers=2)
    for shard in Checkpoint.open(out).shard_names:
        assert (out / shard).read_bytes() == (w4a16_outputs[128] / shard).read_bytes(), shard
    assert convert_checkpoint(aligned_checkpoint, out, load_recipe("w4a16-rtn")).shards_reused == 2


# ---- verify and inspect ----


def _rewrite(root: Path, edit) -> str:
    """Apply `edit(tensors)` to the shard holding EXPERT's tensors; returns what the problem must name."""
    shard = root / Checkpoint.open(root).weight_map[f"{EXPERT}.weight_packed"]
    tensors = load_file(shard)
    named = edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"] = {n: f for n, f in index["weight_map"].items() if n in tensors or f != shard.name}
    index["weight_map"].update({n: shard.name for n in tensors})
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.rmtree(root / STATE_DIR, ignore_errors=True)  # no digests: the checks themselves must catch it
    return named


def _zero_scale(tensors):
    tensors[f"{EXPERT}.weight_scale"][3, 0] = 0
    return f"{EXPERT}.weight_scale: scales must be finite and positive"


def _drop_shape(tensors):
    del tensors[f"{EXPERT}.weight_shape"]
    return f"{EXPERT}.weight_packed: INT4 weight without its weight_shape tensor"


def _wrong_shape(tensors):
    tensors[f"{EXPERT}.weight_shape"] = torch.tensor([256, 64])
    return f"{EXPERT}.weight_packed: shape (256, 64) but config.json implies (256, 128)"


def _narrow_packed(tensors):
    tensors[f"{EXPERT}.weight_packed"] = tensors[f"{EXPERT}.weight_packed"][:, :8].contiguous()
    return f"{EXPERT}.weight_packed: torch.int32 [256, 8], expected int32 [256, 16]"


def _zeroed_group(tensors):
    tensors[f"{EXPERT}.weight_packed"][17, :16] = 0
    return f"{EXPERT}.weight_packed: 1 group(s) hold only the code -8"


def _dense_beside_packed(tensors):
    tensors[f"{EXPERT}.weight"] = torch.zeros(256, 128, dtype=torch.bfloat16)
    return f"{EXPERT}.weight: stored beside"


DAMAGES = {
    "zero scale": _zero_scale,
    "no weight_shape": _drop_shape,
    "weight_shape disagrees with config": _wrong_shape,
    "packed words of the wrong shape": _narrow_packed,
    "zeroed group (deep)": _zeroed_group,
    "dense weight beside packed": _dense_beside_packed,
}


def test_intact_w4a16_output_passes_deep_verify(w4a16_outputs):
    for group, out in w4a16_outputs.items():
        report = verify_checkpoint(out, deep=True)
        assert report.ok and not report.notes, (group, report.problems)
        assert report.format == "compressed-tensors w4a16" and report.quantized_modules == 24
    result = runner.invoke(app, ["verify", str(w4a16_outputs[128]), "--deep"])
    assert result.exit_code == 0 and "(compressed-tensors w4a16)" in result.output.replace("\n", " ")


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_w4a16_output_fails_naming_the_problem(w4a16_outputs, tmp_path, damage):
    copy = shutil.copytree(w4a16_outputs[128], tmp_path / "copy")
    named = _rewrite(copy, damage)
    report = verify_checkpoint(copy, deep=True)
    assert any(named in problem for problem in report.problems), report.problems


@pytest.mark.parametrize("edit", ["expert listed", "attention unlisted"])
def test_config_must_list_exactly_the_kept_linears(w4a16_outputs, tmp_path, edit):
    copy = shutil.copytree(w4a16_outputs[128], tmp_path / "copy")
    config = json.loads((copy / "config.json").read_text())
    ignore = config["quantization_config"]["ignore"]
    if edit == "expert listed":
        ignore.append(EXPERT)
        named = f"{EXPERT}.weight_packed: converted, but quantization_config lists {EXPERT} as not converted"
    else:
        ignore.remove("model.layers.0.self_attn.k_proj")
        named = "model.layers.0.self_attn.k_proj.weight: kept torch.bfloat16 but quantization_config does not list"
    (copy / "config.json").write_text(json.dumps(config))
    assert any(named in problem for problem in verify_checkpoint(copy).problems)


def test_inspect_describes_int4_experts(w4a16_outputs):
    summary = inspect_checkpoint(w4a16_outputs[64])
    assert summary.layouts == ["INT4 symmetric, groups of 64"]
    down = summary.families["experts.down_proj"]
    assert down.dtypes == {"int4 g64"} and down.tensors == 8 and down.scales == 8
    assert summary.families["self_attn.q_proj"].dtypes == {"bfloat16"}
    result = runner.invoke(app, ["inspect", str(w4a16_outputs[64])], terminal_width=200)
    assert result.exit_code == 0 and "int4 g64" in result.output and "groups of 64" in result.output


# ---- runtime ----


def _write_dequantized(source: Path, destination: Path) -> Path:
    """A dense float32 checkpoint holding exactly the weights a quantised checkpoint dequantises to."""
    checkpoint = Checkpoint.open(source)
    fmt, tensors = detect(checkpoint.config), load_all(source)
    lookup = checkpoint.tensor_infos().get
    dense = {}
    for name, tensor in tensors.items():
        module, _, suffix = name.rpartition(".")
        layout = fmt.layout_of(module, lookup)
        if layout is None:
            dense[name] = tensor
        elif suffix == layout.codes_suffix:
            parts = {s: tensors[f"{module}.{s}"] for s in layout.suffixes}
            dense[f"{module}.weight"] = layout.dequantize(parts, torch.float32)
    destination.mkdir()
    save_file(dense, destination / "model.safetensors")
    config = dict(checkpoint.config)
    del config["quantization_config"]
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def test_runtime_logits_equal_a_dense_model_with_the_dequantised_weights(w4a16_outputs, aligned_checkpoint, tmp_path):
    int4 = load_model(w4a16_outputs[128], dtype=torch.float32)
    assert int4.info.weight_format == "compressed-tensors w4a16" and int4.info.act_quant is False
    assert type(int4.layers[0].mlp.experts[1].up_proj).__name__ == "Int4GroupLinear"
    assert type(int4.layers[0].self_attn.q_proj).__name__ == "DenseLinear"
    dense = load_model(_write_dequantized(w4a16_outputs[128], tmp_path / "dense"), dtype=torch.float32)
    ids = torch.randint(0, ALIGNED_SPEC.vocab_size, (2, 13), generator=torch.Generator().manual_seed(4))
    logits = int4(ids)
    assert torch.equal(logits, dense(ids))
    cached = load_model(w4a16_outputs[128], dtype=torch.float32, cache_dequantized=True)
    assert torch.equal(cached(ids), logits) and torch.equal(cached(ids), logits)
    expert = cached.layers[1].mlp.experts[0].down_proj
    assert expert.dequantize(torch.float32) is expert.dequantize(torch.float32)
    bf16 = load_model(aligned_checkpoint, dtype=torch.float32)(ids)
    sqnr = (10 * torch.log10(bf16.square().sum() / (logits - bf16).square().sum())).item()
    assert sqnr > 5.0, sqnr  # random layers amplify INT4's 19 dB weight error (about 10 dB observed)


def test_runtime_refuses_inconsistent_int4_tensors(w4a16_outputs, tmp_path):
    copy = shutil.copytree(w4a16_outputs[128], tmp_path / "copy")
    _rewrite(copy, _wrong_shape)
    with pytest.raises(QtoolsError, match=rf"{EXPERT}\.weight_shape is \[256, 64\], expected \[256, 128\]"):
        load_model(copy)
    copy2 = shutil.copytree(w4a16_outputs[128], tmp_path / "copy2")
    _rewrite(copy2, _drop_shape)
    with pytest.raises(QtoolsError, match="without its weight_shape"):
        load_model(copy2)


# ---- FP8 attention beside INT4 experts: one mixed-precision checkpoint ----


@pytest.fixture(scope="module")
def mixed_output(aligned_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "w4a16-fp8-attention"
    convert_checkpoint(aligned_checkpoint, out, load_recipe("w4a16-rtn-fp8-attention"))
    return out


def test_fp8_attention_beside_int4_experts_is_two_config_groups(mixed_output, aligned_checkpoint):
    quant = json.loads((mixed_output / "config.json").read_text())["quantization_config"]
    fp8, int4 = quant["config_groups"]["group_0"], quant["config_groups"]["group_1"]
    assert quant["format"] == "mixed-precision"
    assert fp8["format"] == "float-quantized" and fp8["weights"]["block_structure"] == [128, 128]
    assert fp8["targets"] == ["re:model\\.layers\\.\\d+\\.self_attn\\.(q|k|v|o)_proj"]
    assert int4 == {**expected_config(128)["config_groups"]["group_0"], "targets": load_recipe("w4a16-rtn").targets}
    assert quant["ignore"] == ["lm_head", "model.embed_tokens", "model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
    tensors = load_all(mixed_output)
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.float8_e4m3fn
    assert tensors["model.layers.0.self_attn.q_proj.weight_scale"].shape == (2, 2)
    source = load_all(aligned_checkpoint)[f"{EXPERT}.weight"]
    assert tensors[f"{EXPERT}.weight_packed"].equal(quantize_int4_group(source, 128)[0])
    report = verify_checkpoint(mixed_output, deep=True)
    assert report.ok, report.problems
    assert report.format == "compressed-tensors fp8-block+w4a16" and report.quantized_modules == 24 + 8


def test_mixed_checkpoint_runs_in_the_runtime(mixed_output, tmp_path):
    model = load_model(mixed_output, dtype=torch.float32, act_quant=False)
    assert type(model.layers[1].self_attn.o_proj).__name__ == "Fp8BlockLinear"
    assert type(model.layers[1].mlp.experts[3].gate_proj).__name__ == "Int4GroupLinear"
    assert load_model(mixed_output).info.act_quant is True, "the FP8 group quantises activations dynamically"
    dense = load_model(_write_dequantized(mixed_output, tmp_path / "dense"), dtype=torch.float32)
    ids = torch.randint(0, ALIGNED_SPEC.vocab_size, (1, 9), generator=torch.Generator().manual_seed(6))
    assert torch.equal(model(ids), dense(ids))


def test_targets_and_fp8_targets_must_be_disjoint(aligned_checkpoint, tmp_path):
    recipe = load_recipe("w4a16-rtn-fp8-attention")
    overlapping = recipe.model_copy(update={"fp8_targets": [*recipe.fp8_targets, "re:.*experts\\.0\\.up_proj"]})
    with pytest.raises(QtoolsError, match=r"both match 'model\.layers\.0\.mlp\.experts\.0\.up_proj'"):
        convert_checkpoint(aligned_checkpoint, tmp_path / "out", overlapping)
    assert not (tmp_path / "out").exists()
