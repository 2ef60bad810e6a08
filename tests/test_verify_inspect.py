"""`qtools verify` catches damaged outputs, naming the problem; `qtools inspect` describes checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from qtools.cli import app
from qtools.convert import convert_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def fp8_output(synth_checkpoint, tmp_path_factory):
    from qtools.recipe import load_recipe

    out = tmp_path_factory.mktemp("verify") / "fp8"
    convert_checkpoint(synth_checkpoint, out, load_recipe("fp8-block"))
    return out


def _zero_scale(root):
    shard = root / "model-00002-of-00003.safetensors"
    tensors = load_file(shard)
    name = next(n for n in sorted(tensors) if n.endswith("weight_scale_inv"))
    tensors[name][0, 0] = 0
    save_file(tensors, shard, metadata={"format": "pt"})
    return name


def _drop_scale(root):
    shard = root / "model-00002-of-00003.safetensors"
    tensors = load_file(shard)
    name = next(n for n in sorted(tensors) if n.endswith("weight_scale_inv"))
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    return name.replace("weight_scale_inv", "weight")


def _unlist_router(root):
    config = json.loads((root / "config.json").read_text())
    config["quantization_config"]["modules_to_not_convert"].remove("model.layers.1.mlp.gate")
    (root / "config.json").write_text(json.dumps(config))
    return "model.layers.1.mlp.gate"


def _remove_shard(root):
    (root / "model-00003-of-00003.safetensors").unlink()
    return "model-00003-of-00003.safetensors"


def _remove_index(root):
    (root / "model.safetensors.index.json").unlink()
    return "did not finish"


def _wrong_shape_config(root):
    config = json.loads((root / "config.json").read_text())
    config["num_experts"] = 3
    (root / "config.json").write_text(json.dumps(config))
    return "num_experts=3"


def _nan_code(root):
    shard = root / "model-00002-of-00003.safetensors"
    tensors = load_file(shard)
    name = next(n for n in sorted(tensors) if tensors[n].dtype == torch.float8_e4m3fn)
    tensors[name].view(torch.uint8)[0, 0] = 0x7F
    save_file(tensors, shard, metadata={"format": "pt"})
    return name


DAMAGES = {
    "zero scale": _zero_scale,
    "fp8 weight without scale": _drop_scale,
    "router not listed as unconverted": _unlist_router,
    "missing shard": _remove_shard,
    "missing index": _remove_index,
    "config disagrees": _wrong_shape_config,
    "NaN code (deep)": _nan_code,
}


def test_intact_output_passes(fp8_output):
    result = runner.invoke(app, ["verify", str(fp8_output), "--deep"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_damaged_output_fails_naming_the_problem(fp8_output, tmp_path, damage):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    named = damage(copy)
    result = runner.invoke(app, ["verify", str(copy), "--deep"])
    assert result.exit_code == 1
    assert named in result.output


def test_inspect_describes_families_layers_and_experts(fp8_output, synth_checkpoint):
    result = runner.invoke(app, ["inspect", str(fp8_output)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "2 layers, 4 experts" in result.output
    assert "experts.down_proj" in result.output and "float8_e4m3fn" in result.output
    source = runner.invoke(app, ["inspect", str(synth_checkpoint)], terminal_width=200)
    assert "unquantised" in source.output and "float8" not in source.output


def test_inspect_of_a_non_checkpoint_is_an_error(tmp_path):
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a safetensors checkpoint" in result.output
