"""Every shipped recipe loads; bad recipes fail with a message that says what is wrong."""

from __future__ import annotations

import pytest

from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.recipe import Recipe, load_recipe, matches
from qtools.testing.files import RECIPES_DIR as RECIPES


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads_and_targets_expert_and_attention_projections(path):
    recipe = load_recipe(path)
    assert recipe.quantizes("model.layers.3.mlp.experts.159.down_proj")
    assert recipe.quantizes("model.layers.61.self_attn.q_proj")
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


def test_recipe_matching_no_tensor_is_an_error(synth_checkpoint, tmp_path):
    recipe = Recipe(targets=["re:.*nothing_here"])
    with pytest.raises(QtoolsError, match="matches no tensor"):
        convert_checkpoint(synth_checkpoint, tmp_path / "out", recipe)
    assert not (tmp_path / "out").exists()
