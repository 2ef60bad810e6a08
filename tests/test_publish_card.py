"""The model card `qtools publish --dry-run` writes for the toy's FP8 and INT4 conversions, against golden files
(tests/golden/publish/, volatile fields normalised), and the serving advice at the 480B's expert width.

The check reports behind the cards are tests/fixtures/publish/toy-*/report.json (scripts/publish_fixtures.py
makes them; the toy's conversions are deterministic, so the identity they record matches the conversions the
`toy_conversions` fixture makes). After an intended change to the card, regenerate the goldens with

    QTOOLS_REGENERATE_GOLDEN=1 python -m pytest -q tests/test_publish_card.py

and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from qtools.checkpoint.config import ModelConfig
from qtools.errors import QtoolsError
from qtools.formats import CompressedTensorsFormat, ConfigGroup, HfFp8Format, Int4GroupLayout
from qtools.publish import PublishRequest, publish_checkpoint
from qtools.publish.card_inputs import base_model_from
from qtools.publish.serving import serving_plan
from qtools.testing.files import TOY_MODEL_DIR
from qtools.testing.publish import FIXTURES, GOLDEN, TOY_CARDS

REGENERATE = os.environ.get("QTOOLS_REGENERATE_GOLDEN") == "1"
# Fields that change with the installed packages, not with the card's logic.
VOLATILE = (
    (re.compile(r"^Versions: .*$", re.M), "Versions: <versions>"),
    (re.compile(r"with qtools [0-9][^:]*:"), "with qtools <version>:"),
)


def normalise(card: str) -> str:
    for pattern, replacement in VOLATILE:
        card = pattern.sub(replacement, card)
    return card


@pytest.mark.parametrize("name", sorted(TOY_CARDS))
def test_dry_run_card_matches_its_golden_file(name: str, toy_conversions, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    toy = TOY_CARDS[name]
    checkpoint = toy_conversions[name]
    request = PublishRequest(
        checkpoint, toy.repo, report=FIXTURES / name, base_model=toy.base_model, dry_run=True, stage_dir=tmp_path
    )
    summary = publish_checkpoint(request)
    assert summary.plan is None and summary.commit_url is None  # nothing sent
    card = (tmp_path / "README.md").read_text()
    golden = GOLDEN / f"{name}.md"
    if REGENERATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(normalise(card))
    assert normalise(card) == golden.read_text(), f"card differs from {golden}; see this module's docstring"

    data = ModelCard(card).data
    assert data.base_model == toy.base_model and data.base_model_relation == "quantized"
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"qtools", "int4" if "int4" in name else "fp8"} <= set(data.tags)
    images = sorted(path.relative_to(tmp_path).as_posix() for path in (tmp_path / "images").glob("*.svg"))
    assert images and all(f"]({image})" in card for image in images)
    linked = [path for path in tmp_path.iterdir() if path.is_symlink()]
    assert {path.name for path in linked} | {"README.md", "images"} == {path.name for path in tmp_path.iterdir()}
    assert all(path.resolve().parent == checkpoint.resolve() for path in linked)
    assert not (tmp_path / ".qtools").exists()


def _config(width: int) -> ModelConfig:
    config = json.loads((TOY_MODEL_DIR / "config.json").read_text())
    return ModelConfig.from_dict({**config, "moe_intermediate_size": width})


@pytest.mark.parametrize(
    "fmt, allowed",
    [
        (CompressedTensorsFormat((ConfigGroup(Int4GroupLayout(128)),)), (1, 2, 4)),  # 320 % 128 != 0 at TP8
        (CompressedTensorsFormat((ConfigGroup(Int4GroupLayout(64)),)), (1, 2, 4, 8)),  # 320 % 64 == 0
        (HfFp8Format((128, 128), torch.float32), (1, 2, 4)),  # vLLM: "not divisible by block_n = 128"
    ],
    ids=["int4-g128", "int4-g64", "fp8-block128"],
)
def test_serving_advice_at_the_480b_expert_width(fmt, allowed: tuple[int, ...]) -> None:
    plan = serving_plan(fmt, _config(2560))
    assert [o.per_rank_width for o in plan.options] == [2560, 1280, 640, 320]
    assert tuple(o.tp for o in plan.options if o.problem is None) == allowed
    assert plan.max_tp == max(allowed)
    assert plan.needs_expert_parallel == tuple(tp for tp in (1, 2, 4, 8) if tp not in allowed)


def test_base_model_comes_from_the_config_or_a_hub_cache_source() -> None:
    assert base_model_from({"_name_or_path": "Qwen/Qwen3-Coder-480B-A35B-Instruct"}, None) == (
        "Qwen/Qwen3-Coder-480B-A35B-Instruct"
    )
    snapshot = "/data/hub/models--Qwen--Qwen3-Coder-480B-A35B-Instruct/snapshots/abc123"
    assert base_model_from({"_name_or_path": "/local/dir"}, {"source": snapshot}) == (
        "Qwen/Qwen3-Coder-480B-A35B-Instruct"
    )
    assert base_model_from({}, {"source": "/work/bf16"}) is None


def test_the_card_replaces_the_copied_base_card_only_when_asked_and_keeps_its_licence(toy_conversions, tmp_path):
    from huggingface_hub import ModelCard

    copy = tmp_path / "fp8"
    shutil.copytree(toy_conversions["toy-fp8"], copy)
    (copy / "README.md").write_text("---\nlicense: apache-2.0\n---\n# The base model's card, copied by convert\n")
    request = PublishRequest(copy, "a/b", dry_run=True, stage_dir=tmp_path / "stage")
    with pytest.raises(QtoolsError, match="card of its own"):
        publish_checkpoint(request)
    publish_checkpoint(PublishRequest(**{**request.__dict__, "card_overwrite": True}))
    card = (tmp_path / "stage" / "README.md").read_text()
    assert ModelCard(card).data.license == "apache-2.0" and "copied by convert" not in card
    assert (copy / "README.md").read_text().endswith("copied by convert\n")  # the checkpoint is not changed
