"""One parser of Qwen3-MoE config.json (`qtools.checkpoint.config`): every layout transformers 5.15 to 5.24 writes
(tests/fixtures/configs/) and the Qwen release's read the same in convert, verify, inspect, the runtime and the
check; against transformers as the oracle; and hostile configs refused with `config.json: <key>: <what>`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from qtools.check.engine_qtools import open_pair
from qtools.checkpoint.config import ModelConfig, YarnScaling
from qtools.checkpoint.hf import Checkpoint
from qtools.cli import app
from qtools.convert import convert_checkpoint
from qtools.convert.plan import plan_conversion
from qtools.errors import QtoolsError
from qtools.inspect import inspect_checkpoint
from qtools.runtime import CheckpointLoader, load_model
from qtools.testing.files import tree_digest
from qtools.testing.synth import SynthSpec
from qtools.verify import verify_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "configs"
RELEASES = ("5.15.1", "5.17.0", "5.24.0")
LAYOUTS = [f"transformers-{version}{variant}.json" for version in RELEASES for variant in ("", "-yarn")]
RELEASE_LAYOUT = SynthSpec().config()  # the Qwen3-Coder release's keys: num_experts, rope_theta, torch_dtype
runner = CliRunner()


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def _expected(name: str) -> ModelConfig:
    """What each fixture describes: SynthSpec's model; the -yarn ones with YaRN and no declared dtype."""
    reference = ModelConfig.from_dict(RELEASE_LAYOUT)
    if name.endswith("-yarn.json"):
        return dataclasses.replace(reference, rope_scaling=YarnScaling(4.0, 1024), dtype=None)
    return reference


def _with_config(synth_checkpoint: Path, destination: Path, config: dict) -> Path:
    root = shutil.copytree(synth_checkpoint, destination)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return root


def _unwrapped(result) -> str:
    return result.output.replace("\n", "")


def test_every_fixture_is_there_and_in_the_new_layout():
    assert sorted(p.name for p in FIXTURES.glob("*.json")) == sorted(LAYOUTS)
    for name in LAYOUTS:
        config = _fixture(name)
        assert "num_local_experts" in config and "num_experts" not in config
        assert "rope_parameters" in config and "rope_theta" not in config
    # the old parser refused exactly these
    assert "num_experts" in RELEASE_LAYOUT and "rope_theta" in RELEASE_LAYOUT


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_release_layout_parses_to_the_model_it_describes(name):
    assert ModelConfig.from_dict(_fixture(name)) == _expected(name)


ORACLE_VARIANTS = {
    "release layout": RELEASE_LAYOUT,
    "no head_dim": {k: v for k, v in RELEASE_LAYOUT.items() if k != "head_dim"},
    "no rope_theta": {k: v for k, v in RELEASE_LAYOUT.items() if k != "rope_theta"},
    "legacy yarn under type": {**RELEASE_LAYOUT, "rope_scaling": {"type": "yarn", "factor": 2.0}},
    "rope_parameters beside a top-level rope_theta": {
        **RELEASE_LAYOUT,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
    },
    "rope_scaling replaces rope_parameters": {
        **RELEASE_LAYOUT,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e5},
        "rope_scaling": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512},
    },
    "tied embeddings, both dtype keys": {**RELEASE_LAYOUT, "tie_word_embeddings": True, "dtype": "float16"},
    **{name: _fixture(name) for name in LAYOUTS},
}


@pytest.mark.parametrize("config", ORACLE_VARIANTS.values(), ids=ORACLE_VARIANTS.keys())
def test_parse_agrees_with_transformers(config):
    from transformers import Qwen3MoeConfig

    ours, theirs = ModelConfig.from_dict(config), Qwen3MoeConfig.from_dict(config)
    rope = theirs.rope_parameters
    assert (ours.vocab_size, ours.hidden_size, ours.num_layers) == (
        theirs.vocab_size,
        theirs.hidden_size,
        theirs.num_hidden_layers,
    )
    assert (ours.num_heads, ours.num_kv_heads) == (theirs.num_attention_heads, theirs.num_key_value_heads)
    assert ours.head_dim == getattr(theirs, "head_dim", theirs.hidden_size // theirs.num_attention_heads)
    assert (ours.num_experts, ours.top_k, ours.moe_intermediate_size) == (
        theirs.num_experts,
        theirs.num_experts_per_tok,
        theirs.moe_intermediate_size,
    )
    assert (ours.norm_topk_prob, ours.rms_norm_eps, ours.tie_word_embeddings) == (
        theirs.norm_topk_prob,
        theirs.rms_norm_eps,
        theirs.tie_word_embeddings,
    )
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert ours.rope_theta == rope["rope_theta"]
    assert (ours.rope_scaling is not None) == (rope["rope_type"] == "yarn")
    if ours.rope_scaling is not None:
        assert ours.rope_scaling.factor == rope["factor"]
        assert ours.rope_scaling.original_max_position_embeddings == rope["original_max_position_embeddings"]
    assert ours.dtype == (str(theirs.dtype).removeprefix("torch.") if theirs.dtype is not None else None)


@pytest.fixture(scope="module")
def layout_checkpoints(synth_checkpoint, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: _with_config(synth_checkpoint, root / name.removesuffix(".json"), _fixture(name)) for name in LAYOUTS}


@pytest.mark.parametrize("name", LAYOUTS)
def test_every_entry_point_reads_each_layout_alike(name, layout_checkpoints, synth_checkpoint, fp8_recipe):
    root, expected = layout_checkpoints[name], _expected(name)
    checkpoint = Checkpoint.open(root)
    assert checkpoint.model_config == expected
    plan = plan_conversion(checkpoint, fp8_recipe)
    assert plan.converted_modules == plan_conversion(Checkpoint.open(synth_checkpoint), fp8_recipe).converted_modules
    report = verify_checkpoint(root, deep=True)
    assert report.ok, report.problems
    summary = inspect_checkpoint(root)
    assert summary.config == expected and summary.config_problem is None
    assert CheckpointLoader(root).config == expected
    reference, candidate = open_pair(synth_checkpoint, root)
    assert candidate.config == expected and reference.config == ModelConfig.from_dict(RELEASE_LAYOUT)


def test_newest_layout_converts_verifies_and_runs_identically(layout_checkpoints, synth_checkpoint, tmp_path):
    from qtools.recipe import load_recipe

    recipe = load_recipe("fp8-block")
    newest = layout_checkpoints["transformers-5.24.0.json"]
    convert_checkpoint(synth_checkpoint, tmp_path / "release", recipe)
    convert_checkpoint(newest, tmp_path / "newest", recipe)
    report = verify_checkpoint(tmp_path / "newest", deep=True)
    assert report.ok, report.problems
    written = json.loads((tmp_path / "newest" / "config.json").read_text())
    assert written["num_local_experts"] == 4 and written["quantization_config"]["quant_method"] == "fp8"
    for shard in Checkpoint.open(synth_checkpoint).shard_names:
        assert (tmp_path / "newest" / shard).read_bytes() == (tmp_path / "release" / shard).read_bytes()
    ids = torch.randint(0, 500, (2, 13), generator=torch.Generator().manual_seed(0))
    assert torch.equal(load_model(newest)(ids), load_model(synth_checkpoint)(ids))
    assert torch.equal(load_model(tmp_path / "newest")(ids), load_model(tmp_path / "release")(ids))


def test_newest_layout_matches_transformers_logits(layout_checkpoints):
    from transformers import Qwen3MoeForCausalLM

    newest = layout_checkpoints["transformers-5.24.0.json"]
    ids = torch.randint(0, 500, (1, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = Qwen3MoeForCausalLM.from_pretrained(newest, dtype=torch.float32)(ids).logits
    ours = load_model(newest, dtype=torch.float32)(ids)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4 * theirs.abs().max().item())


def _without(*keys: str) -> dict:
    return {k: v for k, v in RELEASE_LAYOUT.items() if k not in keys}


HOSTILE = {
    "layers as a string": ({**RELEASE_LAYOUT, "num_hidden_layers": "2"}, "num_hidden_layers: input should be"),
    "zero heads": ({**RELEASE_LAYOUT, "num_attention_heads": 0}, "num_attention_heads: input should be greater"),
    "negative hidden size": ({**RELEASE_LAYOUT, "hidden_size": -320}, "hidden_size: input should be greater"),
    "fractional expert width": ({**RELEASE_LAYOUT, "moe_intermediate_size": 200.5}, "moe_intermediate_size:"),
    "integral float": ({**RELEASE_LAYOUT, "vocab_size": 500.0}, "vocab_size: input should be a valid integer"),
    "boolean expert count": ({**RELEASE_LAYOUT, "num_experts": True}, "num_experts: input should be"),
    "null head_dim": ({**RELEASE_LAYOUT, "head_dim": None}, "head_dim: null"),
    "NaN eps": ({**RELEASE_LAYOUT, "rms_norm_eps": float("nan")}, "rms_norm_eps: input should be a finite"),
    "string rope_theta": ({**RELEASE_LAYOUT, "rope_theta": "1e7"}, "rope_theta: input should be a valid number"),
    "yarn factor a string": (
        {**RELEASE_LAYOUT, "rope_scaling": {"rope_type": "yarn", "factor": "4"}},
        "rope_scaling.factor: input should be",
    ),
    "rope_parameters a list": ({**RELEASE_LAYOUT, "rope_parameters": [1]}, "rope_parameters: expected an object"),
    "unknown rope type": (
        {**RELEASE_LAYOUT, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}},
        "rope type 'dynamic'",
    ),
    "two expert counts": ({**RELEASE_LAYOUT, "num_local_experts": 8}, "num_experts 4 and num_local_experts 8"),
    "no expert count": (_without("num_experts"), "num_local_experts (or num_experts): missing"),
    "no kv heads": (_without("num_key_value_heads"), "num_key_value_heads: missing"),
    "heads not a multiple of kv heads": ({**RELEASE_LAYOUT, "num_key_value_heads": 3}, "num_attention_heads: 4 is"),
    "top-k above experts": ({**RELEASE_LAYOUT, "num_experts_per_tok": 5}, "num_experts_per_tok: 5 exceeds"),
    "absurd layer count": ({**RELEASE_LAYOUT, "num_hidden_layers": 10**6}, "num_hidden_layers: 1000000 layers"),
    "huge dimension": ({**RELEASE_LAYOUT, "hidden_size": 2**40}, "hidden_size: input should be less than"),
    "dense layers": ({**RELEASE_LAYOUT, "mlp_only_layers": [0]}, "mlp_only_layers"),
    "gelu": ({**RELEASE_LAYOUT, "hidden_act": "gelu"}, "hidden_act: 'gelu'"),
    "int8 dtype": ({**RELEASE_LAYOUT, "torch_dtype": "int8"}, "torch_dtype: input should be"),
    "no model_type": (_without("model_type"), "model_type: missing"),
    "another model_type": ({**RELEASE_LAYOUT, "model_type": "qwen3"}, "model_type: 'qwen3'"),
    "another architecture": ({**RELEASE_LAYOUT, "architectures": ["Qwen3ForCausalLM"]}, "architectures:"),
    "dimensions under text_config": (
        {"model_type": "qwen3_moe", "text_config": _without("model_type")},
        "nested under 'text_config'",
    ),
    "not an object": ([RELEASE_LAYOUT], "expected a JSON object"),
}


@pytest.mark.parametrize("config, message", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_config_is_refused_naming_the_key(config, message):
    with pytest.raises(QtoolsError) as error:
        ModelConfig.from_dict(config)
    assert str(error.value).startswith("config.json: ") and message in str(error.value)


CLI_HOSTILE = (
    "layers as a string",
    "zero heads",
    "negative hidden size",
    "no model_type",
    "dimensions under text_config",
)


@pytest.mark.parametrize("case", CLI_HOSTILE)
def test_every_command_refuses_a_hostile_config_with_exit_2(case, synth_checkpoint, tmp_path):
    config, message = HOSTILE[case]
    source = _with_config(synth_checkpoint, tmp_path / "src", config)
    before = tree_digest(source)
    for command in (["convert", str(source), str(tmp_path / "out")], ["verify", str(source)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output, result.exception)
        output = _unwrapped(result)
        assert "error:" in output and f"{source / 'config.json'}: " in output and message in output, output
    assert not (tmp_path / "out").exists()
    assert tree_digest(source) == before
    with pytest.raises(QtoolsError, match="config.json"):
        load_model(source)
    inspected = runner.invoke(app, ["inspect", str(source)])
    assert inspected.exit_code == 0 and message in _unwrapped(inspected)


def test_convert_without_config_is_refused_before_writing(synth_checkpoint, tmp_path, fp8_recipe):
    source = shutil.copytree(synth_checkpoint, tmp_path / "src")
    (source / "config.json").unlink()
    with pytest.raises(QtoolsError, match=r"config.json: missing"):
        convert_checkpoint(source, tmp_path / "out", fp8_recipe)
    assert not (tmp_path / "out").exists()
