"""Shared fixtures: small synthetic Qwen3-MoE checkpoints built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qtools.recipe import Recipe, load_recipe
from qtools.testing.files import TOY_MODEL_DIR
from qtools.testing.synth import GROUP_ALIGNED_SPEC, SynthSpec, make_checkpoint

# The publish tests upload through huggingface_hub to a local stand-in that speaks the LFS protocol, not Xet. The
# client reads this switch once, when it is first imported, so it is set here, before any test module imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"


@pytest.fixture(scope="session")
def synth_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 4-expert checkpoint with sizes that are not multiples of 128, in 3 shards. Do not modify."""
    return make_checkpoint(tmp_path_factory.mktemp("synth") / "bf16", SynthSpec(), seed=0)


@pytest.fixture(scope="session")
def aligned_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 4-expert checkpoint with hidden 256 and expert width 128, in 2 shards. Do not modify."""
    return make_checkpoint(tmp_path_factory.mktemp("aligned") / "bf16", GROUP_ALIGNED_SPEC, seed=1)


@pytest.fixture(scope="session")
def w4a16_outputs(aligned_checkpoint, tmp_path_factory) -> dict[int, Path]:
    """`aligned_checkpoint` converted with the shipped W4A16 recipes: group size -> output. Do not modify."""
    from qtools.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("w4a16")
    outputs = {}
    for group, recipe in ((128, "w4a16-rtn"), (64, "w4a16-rtn-tp8")):
        outputs[group] = root / recipe
        convert_checkpoint(aligned_checkpoint, outputs[group], load_recipe(recipe))
    return outputs


@pytest.fixture
def fp8_recipe() -> Recipe:
    return load_recipe("fp8-block")


@pytest.fixture(scope="session")
def toy_model_dir() -> Path:
    """The trained toy Qwen3-Coder model (default recipe, seed 0): the build committed in `models/` when its
    key (recipe, toy and chat sources, library versions) is current, else built once into `$QTOOLS_CACHE`
    (default `~/.cache/qtools`) and reused by later sessions. A build takes about 8 minutes on 2 cores and
    fails if the model misses its gate."""
    from qtools.toy.cache import cached_toy_model

    return cached_toy_model(prebuilt=TOY_MODEL_DIR)


@pytest.fixture(scope="session")
def toy_conversions(tmp_path_factory) -> dict[str, Path]:
    """The committed toy model (`models/`, not `toy_model_dir`: the check reports in tests/fixtures/publish/ were
    measured on its conversions, and a rebuilt toy would not match them) converted with each recipe of
    `qtools.testing.publish.TOY_CARDS` (fp8-block, w4a16-rtn): name -> output, a few seconds in all. Do not
    modify (copy first)."""
    from qtools.convert import convert_checkpoint
    from qtools.testing.publish import TOY_CARDS

    root = tmp_path_factory.mktemp("toy-conversions")
    for name, card in TOY_CARDS.items():
        convert_checkpoint(TOY_MODEL_DIR, root / name, load_recipe(card.recipe), workers=1)
    return {name: root / name for name in TOY_CARDS}
