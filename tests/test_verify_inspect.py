"""`qtools verify` catches damaged outputs, naming the problem (exit 1), and says when it cannot run (exit 2);
`qtools inspect` describes checkpoints."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from qtools.checkpoint.hf import STATE_DIR
from qtools.checkpoint.safetensors_io import read_header
from qtools.cli import app
from qtools.convert import convert_checkpoint
from qtools.verify import verify_checkpoint

runner = CliRunner()


def _unwrapped(result) -> str:
    """The command's output without the line breaks rich adds at 80 columns (inside long paths too)."""
    return result.output.replace("\n", "")


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


SHARD2 = "model-00002-of-00003.safetensors"


def _patch_in_place(root, pick, patch) -> str:
    """Change the bytes of the first tensor of shard 2 (by name) that `pick` accepts, leaving the header as it
    is; `patch(bytearray of the tensor)` edits them. Returns the tensor's name."""
    path = root / SHARD2
    infos, _ = read_header(path)
    name = next(n for n in sorted(infos) if pick(n, infos[n]))
    data = bytearray(path.read_bytes())
    tensor = bytearray(data[infos[name].start : infos[name].end])
    patch(tensor)
    data[infos[name].start : infos[name].end] = tensor
    path.write_bytes(bytes(data))
    return name


def _flip_low_bit(tensor: bytearray) -> None:
    # The lowest mantissa bit of element 3: a value change small enough to pass any range check.
    tensor[6 if len(tensor) > 6 else 0] ^= 0x01


def _flip_fp8_code_bit(root):
    def flip(tensor: bytearray) -> None:
        tensor[3] = tensor[3] ^ 0x01 if (tensor[3] ^ 0x01) & 0x7F != 0x7F else tensor[3] ^ 0x02

    _patch_in_place(root, lambda n, info: info.dtype == torch.float8_e4m3fn, flip)
    return SHARD2


def _flip_norm_bit(root):
    _patch_in_place(root, lambda n, info: n.endswith("layernorm.weight"), _flip_low_bit)
    return SHARD2


def _zero_router(root):
    def zero(tensor: bytearray) -> None:
        tensor[:] = bytes(len(tensor))

    _patch_in_place(root, lambda n, info: n.endswith("mlp.gate.weight"), zero)
    return SHARD2


def _append_bytes(root):
    with open(root / SHARD2, "ab") as handle:
        handle.write(b"\0" * 64)
    return SHARD2


def _huge_scale_without_records(root):
    def huge(tensor: bytearray) -> None:
        tensor[0:4] = torch.tensor([1e30], dtype=torch.float32).view(torch.uint8).numpy().tobytes()

    shutil.rmtree(root / STATE_DIR)  # no digests: only the value check can catch it
    return _patch_in_place(root, lambda n, info: n.endswith("weight_scale_inv"), huge)


def _non_finite_kept_without_records(pick, value):
    def damage(root):
        def poison(tensor: bytearray) -> None:
            tensor[2:4] = torch.tensor([value], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes()

        shutil.rmtree(root / STATE_DIR)  # no digests: only reading the values can catch it
        return _patch_in_place(root, lambda n, info: pick(n), poison)

    return damage


def _float32_norm(root):
    tensors = load_file(root / SHARD2)
    name = next(n for n in sorted(tensors) if n.endswith("post_attention_layernorm.weight"))
    tensors[name] = tensors[name].float()
    save_file(tensors, root / SHARD2, metadata={"format": "pt"})
    return name


DAMAGES = {
    "zero scale": _zero_scale,
    "fp8 weight without scale": _drop_scale,
    "router not listed as unconverted": _unlist_router,
    "missing shard": _remove_shard,
    "missing index": _remove_index,
    "config disagrees": _wrong_shape_config,
    "NaN code (deep)": _nan_code,
    "flipped FP8 code bit (digest)": _flip_fp8_code_bit,
    "flipped BF16 norm bit (digest)": _flip_norm_bit,
    "zeroed router (digest)": _zero_router,
    "64 bytes appended to a shard": _append_bytes,
    "scale of 1e30": _huge_scale_without_records,
    "NaN in the router (deep)": _non_finite_kept_without_records(lambda n: n.endswith("mlp.gate.weight"), math.nan),
    "Inf in a norm (deep)": _non_finite_kept_without_records(lambda n: n.endswith("q_norm.weight"), math.inf),
    "kept norm in float32": _float32_norm,
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
    assert named in _unwrapped(result)


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


def test_appended_bytes_fail_without_deep_or_records(fp8_output, tmp_path):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    shutil.rmtree(copy / STATE_DIR)
    _append_bytes(copy)
    report = verify_checkpoint(copy)
    assert not report.ok and any(SHARD2 in problem and "bytes" in problem for problem in report.problems)


def test_deep_verify_says_when_there_are_no_digests(fp8_output, tmp_path):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    assert not verify_checkpoint(copy, deep=True).notes
    shutil.rmtree(copy / STATE_DIR)
    report = verify_checkpoint(copy, deep=True)
    assert report.ok and "no shard digests" in " ".join(report.notes)
    result = runner.invoke(app, ["verify", str(copy), "--deep"])
    assert result.exit_code == 0 and "no shard digests" in _unwrapped(result)


def _without_config(root):
    (root / "config.json").unlink()
    return "config.json: missing"


def _corrupt_config(root):
    (root / "config.json").write_text('{"model_type": "qwen3_moe",')
    return "not valid JSON"


def _string_layer_count(root):
    config = json.loads((root / "config.json").read_text())
    config["num_hidden_layers"] = "2"
    (root / "config.json").write_text(json.dumps(config))
    return "config.json: num_hidden_layers: input should be a valid integer"


def _nested_dimensions(root):
    config = json.loads((root / "config.json").read_text())
    keys = ("hidden_size", "num_hidden_layers", "num_experts", "vocab_size", "moe_intermediate_size", "head_dim")
    config["text_config"] = {key: config.pop(key) for key in keys}
    (root / "config.json").write_text(json.dumps(config))
    return "nested under 'text_config'"


def _no_model_type(root):
    config = json.loads((root / "config.json").read_text())
    del config["model_type"]
    (root / "config.json").write_text(json.dumps(config))
    return "model_type: missing"


CANNOT_RUN = {
    "config.json missing": _without_config,
    "config.json not JSON": _corrupt_config,
    "num_hidden_layers a string": _string_layer_count,
    "dimensions nested under text_config": _nested_dimensions,
    "no model_type": _no_model_type,
}


@pytest.mark.parametrize("damage", CANNOT_RUN.values(), ids=CANNOT_RUN.keys())
def test_verify_that_cannot_run_exits_2(fp8_output, tmp_path, damage):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    named = damage(copy)
    result = runner.invoke(app, ["verify", str(copy)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and named in _unwrapped(result)
    assert "FAILED" not in result.output
    assert not verify_checkpoint(copy).ok


def test_verify_of_no_checkpoint_exits_2(tmp_path):
    for path in (tmp_path, tmp_path / "absent"):
        result = runner.invoke(app, ["verify", str(path)])
        assert result.exit_code == 2 and "error:" in result.output, result.output


def test_unfinished_conversion_fails_with_exit_1(fp8_output, tmp_path):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    (copy / "config.json").unlink()  # the index and config are written last
    (copy / "model.safetensors.index.json").unlink()
    result = runner.invoke(app, ["verify", str(copy)])
    assert result.exit_code == 1 and "did not finish" in result.output


def test_tied_embeddings_without_lm_head_pass(synth_checkpoint, tmp_path, fp8_recipe):
    source = shutil.copytree(synth_checkpoint, tmp_path / "tied")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    shard = source / index["weight_map"].pop("lm_head.weight")
    tensors = load_file(shard)
    del tensors["lm_head.weight"]
    save_file(tensors, shard, metadata={"format": "pt"})
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((source / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (source / "config.json").write_text(json.dumps(config))
    assert verify_checkpoint(source, deep=True).ok, verify_checkpoint(source).problems
    out = tmp_path / "out"
    convert_checkpoint(source, out, fp8_recipe)
    report = verify_checkpoint(out, deep=True)
    assert report.ok, report.problems


def test_non_finite_embedding_in_a_source_fails_deep_verify(synth_checkpoint, tmp_path):
    source = shutil.copytree(synth_checkpoint, tmp_path / "src")
    shard = source / "model-00001-of-00003.safetensors"
    tensors = load_file(shard)
    tensors["model.embed_tokens.weight"][-1, -1] = math.inf
    save_file(tensors, shard, metadata={"format": "pt"})
    assert verify_checkpoint(source).ok
    report = verify_checkpoint(source, deep=True)
    assert report.problems == ["model.embed_tokens.weight: holds NaN or Inf values"]


def test_unfinished_write_in_a_subfolder_fails(fp8_output, tmp_path):
    copy = shutil.copytree(fp8_output, tmp_path / "copy")
    (copy / "original").mkdir()
    (copy / "original" / "params.json.partial").write_text("{")
    report = verify_checkpoint(copy)
    assert not report.ok and "original/params.json.partial" in " ".join(report.problems)
