"""Shared fixtures: small synthetic Qwen3-MoE checkpoints built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from qtools.recipe import Recipe, load_recipe
from qtools.testing.synth import SynthSpec, make_checkpoint

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


@pytest.fixture(scope="session")
def synth_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 4-expert checkpoint with sizes that are not multiples of 128, in 3 shards. Do not modify."""
    return make_checkpoint(tmp_path_factory.mktemp("synth") / "bf16", SynthSpec(), seed=0)


@pytest.fixture
def fp8_recipe() -> Recipe:
    return load_recipe(RECIPES / "fp8-block.yaml")
