"""End-to-end conversion of a synthetic checkpoint: layout, passthrough, resume, workers, verify."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from qtools.checkpoint.hf import Checkpoint
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.numerics.fp8 import quantize_fp8_block
from qtools.recipe import load_recipe
from qtools.testing.files import tree_digest
from qtools.verify import verify_checkpoint


def load_all(root: Path) -> dict[str, torch.Tensor]:
    checkpoint = Checkpoint.open(root)
    tensors = {}
    for shard in checkpoint.shard_names:
        with safe_open(root / shard, "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


@pytest.fixture(scope="module")
def converted(synth_checkpoint, tmp_path_factory):
    before = tree_digest(synth_checkpoint)
    out = tmp_path_factory.mktemp("hf") / "fp8"
    summary = convert_checkpoint(synth_checkpoint, out, load_recipe("fp8-block"))
    assert tree_digest(synth_checkpoint) == before, "the source must never be written to"
    return out, summary


def test_hf_fp8_layout_and_config(converted, synth_checkpoint):
    out, summary = converted
    source = load_all(synth_checkpoint)
    result = load_all(out)
    config = json.loads((out / "config.json").read_text())
    quant = config.pop("quantization_config")
    assert config == json.loads((synth_checkpoint / "config.json").read_text())
    assert quant["quant_method"] == "fp8" and quant["activation_scheme"] == "dynamic"
    assert quant["weight_block_size"] == [128, 128]
    assert "lm_head" in quant["modules_to_not_convert"]
    assert "model.layers.1.mlp.gate" in quant["modules_to_not_convert"]
    assert "model.layers.1.post_attention_layernorm" in quant["modules_to_not_convert"]
    converted_names = {n for n in source if ("_proj" in n)}
    assert summary.tensors_converted == len(converted_names)
    for name, tensor in source.items():
        if name in converted_names:
            codes, scales = quantize_fp8_block(tensor)
            assert result[name].dtype == torch.float8_e4m3fn
            assert torch.equal(result[name].view(torch.uint8), codes.view(torch.uint8)), name
            assert torch.equal(result[name.replace(".weight", ".weight_scale_inv")], scales), name
        else:
            assert result[name].dtype == tensor.dtype and torch.equal(result[name], tensor), name
    assert set(result) == set(source) | {n.replace(".weight", ".weight_scale_inv") for n in converted_names}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(result)
    for extra in ("generation_config.json", "tokenizer_config.json", "README.md", "LICENSE"):
        assert (out / extra).read_bytes() == (synth_checkpoint / extra).read_bytes()
    assert verify_checkpoint(out).ok


def test_compressed_tensors_layout(synth_checkpoint, tmp_path):
    out = tmp_path / "ct"
    convert_checkpoint(synth_checkpoint, out, load_recipe("fp8-block-compressed-tensors"))
    result = load_all(out)
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors" and quant["format"] == "float-quantized"
    weights = quant["config_groups"]["group_0"]["weights"]
    assert weights["strategy"] == "block" and weights["block_structure"] == [128, 128]
    assert "model.layers.0.mlp.gate" in quant["ignore"] and "lm_head" in quant["ignore"]
    assert result["model.layers.0.mlp.experts.3.down_proj.weight_scale"].shape == (3, 2)
    assert not any(n.endswith("weight_scale_inv") for n in result)
    assert verify_checkpoint(out).ok


def test_rerun_reuses_finished_shards_and_redoes_damaged_ones(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "fp8"
    first = convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    reference = tree_digest(out)
    again = convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    assert again.shards_reused == first.shards_total and again.shards_converted == 0
    shard = out / "model-00002-of-00003.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "model.safetensors.index.json").unlink()
    (out / "model-00003-of-00003.safetensors").unlink()
    resumed = convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    assert resumed.shards_converted == 2 and resumed.shards_reused == 1
    assert tree_digest(out) == reference


def test_other_recipe_refuses_to_resume_without_overwrite(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "fp8"
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    other = fp8_recipe.model_copy(update={"scale_dtype": "bfloat16"})
    with pytest.raises(QtoolsError, match="--overwrite"):
        convert_checkpoint(synth_checkpoint, out, other)
    assert verify_checkpoint(out).ok
    summary = convert_checkpoint(synth_checkpoint, out, other, overwrite=True)
    assert summary.shards_converted == summary.shards_total
    assert load_all(out)["model.layers.0.self_attn.q_proj.weight_scale_inv"].dtype == torch.bfloat16


def test_other_source_refuses_to_resume(synth_checkpoint, tmp_path, fp8_recipe):
    out = tmp_path / "fp8"
    convert_checkpoint(synth_checkpoint, out, fp8_recipe)
    copy = shutil.copytree(synth_checkpoint, tmp_path / "copy")
    with pytest.raises(QtoolsError, match="source"):
        convert_checkpoint(copy, out, fp8_recipe)


def test_workers_give_identical_output(synth_checkpoint, converted, tmp_path, fp8_recipe):
    out = tmp_path / "fp8"
    summary = convert_checkpoint(synth_checkpoint, out, fp8_recipe, workers=2)
    assert summary.shards_converted == 3
    assert tree_digest(out) == tree_digest(converted[0])


def test_single_file_checkpoint(tmp_path, fp8_recipe, synth_checkpoint):
    from safetensors.torch import save_file

    source = tmp_path / "single"
    source.mkdir()
    shutil.copy(synth_checkpoint / "config.json", source / "config.json")
    save_file(load_all(synth_checkpoint), source / "model.safetensors")
    out = tmp_path / "fp8"
    convert_checkpoint(source, out, fp8_recipe)
    assert (out / "model.safetensors").exists() and verify_checkpoint(out).ok
