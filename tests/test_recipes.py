"""Every shipped recipe loads; bad recipes fail with a message that says what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import qtools
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.recipe import RECIPES_DIR, Recipe, load_recipe, matches, shipped_recipes
from qtools.runtime import load_model
from qtools.verify import verify_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_recipes_ship_inside_the_package():
    assert RECIPES_DIR.parent == Path(qtools.__file__).parent
    assert {"fp8-block", "fp8-block-compressed-tensors"} <= shipped_recipes().keys()
    assert not (REPO / "recipes").exists(), "one place for recipes: qtools/recipes/"


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_recipe_loads_and_targets_expert_and_attention_projections(name):
    """FP8 recipes convert attention and experts; W4A16 recipes the experts, and attention only where they write
    it FP8 (`fp8_targets`), else it stays BF16."""
    recipe = load_recipe(name)
    assert recipe == load_recipe(shipped_recipes()[name])
    assert recipe.quantizes("model.layers.3.mlp.experts.159.down_proj")
    attention_quantised = recipe.scheme == "fp8-block" or bool(recipe.fp8_targets)
    assert recipe.quantizes("model.layers.61.self_attn.q_proj") == attention_quantised
    for kept in (
        "lm_head",
        "model.embed_tokens",
        "model.layers.0.mlp.gate",
        "model.layers.0.input_layernorm",
        "model.layers.0.self_attn.q_norm",
        "model.norm",
    ):
        assert not recipe.quantizes(kept), kept


def test_regex_must_match_whole_name_and_plain_names_exactly():
    assert matches("re:.*mlp\\.gate", "model.layers.0.mlp.gate")
    assert not matches("re:.*mlp\\.gate", "model.layers.0.mlp.gate_proj")
    assert matches("lm_head", "lm_head") and not matches("lm_head", "model.lm_head")


@pytest.mark.parametrize(
    "text, message",
    [
        ("targets: [x]\nblocksize: [128, 128]\n", "blocksize"),
        ("targets: ['re:(']\n", "bad regex"),
        ("format: gguf\ntargets: [x]\n", "format"),
        ("ignore: [x]\n", "targets"),
        ("- just\n- a list\n", "mapping"),
    ],
    ids=["unknown key", "bad regex", "unknown format", "no targets", "not a mapping"],
)
def test_bad_recipe_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(QtoolsError, match=message):
        load_recipe(path)


def test_recipe_by_name_or_by_path(tmp_path, monkeypatch):
    assert load_recipe("fp8-block-compressed-tensors").format == "compressed-tensors"
    assert load_recipe("fp8-block", format_override="compressed-tensors").format == "compressed-tensors"
    custom = tmp_path / "mine.yaml"
    custom.write_text("targets: [x]\n")
    assert load_recipe(custom).targets == ["x"] and load_recipe(str(custom)).targets == ["x"]
    # A name never reads the working directory: a file called like a shipped recipe there changes nothing.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fp8-block").write_text("targets: [y]\n")
    assert load_recipe("fp8-block") == load_recipe(RECIPES_DIR / "fp8-block.yaml")
    assert load_recipe("mine.yaml").targets == ["x"]


@pytest.mark.parametrize("name", ["fp8-blok", "int4"])
def test_unknown_recipe_name_lists_the_shipped_ones(name):
    with pytest.raises(QtoolsError, match=rf"no recipe named {name!r}.*fp8-block, fp8-block-compressed-tensors"):
        load_recipe(name)


def test_missing_recipe_file_is_a_clear_error(tmp_path):
    with pytest.raises(QtoolsError, match="cannot read recipe"):
        load_recipe(tmp_path / "absent.yaml")


def test_recipe_matching_no_tensor_is_an_error(synth_checkpoint, tmp_path):
    recipe = Recipe(targets=["re:.*nothing_here"])
    with pytest.raises(QtoolsError, match="matches no tensor"):
        convert_checkpoint(synth_checkpoint, tmp_path / "out", recipe)
    assert not (tmp_path / "out").exists()


def test_cli_takes_a_recipe_name_and_refuses_an_unknown_one(synth_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from qtools.cli import app

    result = CliRunner().invoke(app, ["convert", str(synth_checkpoint), str(tmp_path / "out"), "--recipe", "fp8"])
    assert result.exit_code == 2 and "fp8-block-compressed-tensors" in result.output, result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(
        app, ["convert", str(synth_checkpoint), str(tmp_path / "ct"), "--recipe", "fp8-block-compressed-tensors"]
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["format"] == "float-quantized"
    )


@pytest.mark.parametrize(
    "block, message",
    [
        ("[true, true]", "valid integer"),
        ("[1e20, 128]", "valid integer"),
        ("[100000000000000000000, 128]", "powers of two from 16 to 512"),
        ("[128.0, 128]", "valid integer"),
        ("['128', 128]", "valid integer"),
        ("[0, 128]", "powers of two from 16 to 512"),
        ("[-128, 128]", "powers of two from 16 to 512"),
        ("[100, 128]", "powers of two from 16 to 512"),
        ("[8, 8]", "powers of two from 16 to 512"),
        ("[128]", "block_size"),
        ("[128, 128, 128]", "block_size"),
    ],
    ids=[
        "bools",
        "1e20",
        "huge int",
        "float",
        "string",
        "zero",
        "negative",
        "not a power of two",
        "tiny",
        "one entry",
        "three entries",
    ],
)
def test_block_size_is_strict(tmp_path, block, message):
    """[true, true] once became [1, 1] (an output larger than its source) and 1e20 was accepted."""
    path = tmp_path / "bad.yaml"
    path.write_text(f"format: compressed-tensors\nblock_size: {block}\ntargets: [x]\n")
    with pytest.raises(QtoolsError, match=f"block_size.*{message}"):
        load_recipe(path)


def test_hf_fp8_takes_128_blocks_only_and_compressed_tensors_other_powers_of_two(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("format: compressed-tensors\nblock_size: [64, 128]\ntargets: [x]\n")
    assert load_recipe(path).block_size == (64, 128)
    with pytest.raises(QtoolsError, match=r"hf-fp8.*\[128, 128\].*compressed-tensors"):
        load_recipe(path, format_override="hf-fp8")
    path.write_text("block_size: [256, 256]\ntargets: [x]\n")
    with pytest.raises(QtoolsError, match=r"hf-fp8.*\[128, 128\]"):
        load_recipe(path)


UNEXPRESSIBLE = [
    ("re:model\\.layers\\.\\d+\\.mlp\\.gate", "model.layers.0.mlp.gate", "router"),
    ("lm_head", "lm_head", "lm_head"),
    ("model.embed_tokens", "model.embed_tokens", "embedding"),
]


@pytest.mark.parametrize("fmt", ["hf-fp8", "compressed-tensors"])
@pytest.mark.parametrize("target, module, why", UNEXPRESSIBLE, ids=["router", "lm_head", "embed_tokens"])
def test_recipe_quantising_what_the_format_cannot_express_is_refused_at_plan_time(
    synth_checkpoint, tmp_path, fmt, target, module, why
):
    """The written config would list these modules as unconverted (or loaders would build them unquantised)
    while the weights are FP8: our own verify rejects such an output. Refuse before writing anything."""
    recipe = Recipe(format=fmt, targets=["re:.*self_attn\\.q_proj", target])
    with pytest.raises(QtoolsError, match=f"{re.escape(module)}.*{fmt}.*{why}.*ignore"):
        convert_checkpoint(synth_checkpoint, tmp_path / "out", recipe)
    assert not (tmp_path / "out").exists()


def test_recipe_targeting_a_norm_is_refused(synth_checkpoint, tmp_path):
    recipe = Recipe(targets=["re:.*self_attn\\.q_proj", "model.norm"])
    with pytest.raises(QtoolsError, match="model.norm.weight.*2-D"):
        convert_checkpoint(synth_checkpoint, tmp_path / "out", recipe)
    assert not (tmp_path / "out").exists()


def test_compressed_tensors_with_other_power_of_two_blocks_converts_and_verifies(synth_checkpoint, tmp_path):
    """The blocks compressed-tensors accepts beyond [128, 128] give an output verify and the runtime accept."""
    shipped = load_recipe("fp8-block-compressed-tensors")
    convert_checkpoint(synth_checkpoint, tmp_path / "out", shipped.model_copy(update={"block_size": (64, 32)}))
    report = verify_checkpoint(tmp_path / "out")
    assert report.ok, report.problems
    assert load_model(tmp_path / "out").layer(0).mlp.experts[0].up_proj.block == (64, 32)
