"""Tensors convert keeps as they are (router, norms, embeddings, lm_head) are refused when they hold NaN or Inf,
as quantised ones are: while they are copied, before their output shard is finished."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from qtools.convert import convert_checkpoint
from qtools.convert.state import record_path
from qtools.errors import QtoolsError
from qtools.numerics.finite import all_finite
from qtools.testing.files import tree_digest


def _poison(root, shard: str, suffix: str, value: float) -> str:
    tensors = load_file(root / shard)
    name = next(n for n in sorted(tensors) if n.endswith(suffix))
    tensors[name].view(-1)[-1] = value
    save_file(tensors, root / shard, metadata={"format": "pt"})
    return name


POISONS = {
    "NaN in a router": ("model-00002-of-00003.safetensors", "mlp.gate.weight", math.nan),
    "Inf in a norm": ("model-00002-of-00003.safetensors", "input_layernorm.weight", math.inf),
    "-Inf in the embedding": ("model-00001-of-00003.safetensors", "embed_tokens.weight", -math.inf),
    "NaN in lm_head": ("model-00003-of-00003.safetensors", "lm_head.weight", math.nan),
}


@pytest.mark.parametrize("shard, suffix, value", POISONS.values(), ids=POISONS.keys())
def test_non_finite_kept_tensor_is_refused_before_its_shard_is_written(
    synth_checkpoint, tmp_path, fp8_recipe, shard, suffix, value
):
    source = shutil.copytree(synth_checkpoint, tmp_path / "src")
    name = _poison(source, shard, suffix, value)
    before = tree_digest(source)
    out = tmp_path / "out"
    with pytest.raises(QtoolsError) as error:
        convert_checkpoint(source, out, fp8_recipe, workers=1)
    assert name in str(error.value) and "NaN or Inf" in str(error.value)
    assert not (out / shard).exists() and not (out / f"{shard}.partial").exists()
    assert not record_path(out, shard).exists()
    assert tree_digest(source) == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn])
def test_all_finite_finds_one_bad_value_anywhere(dtype):
    for size in (1, 7, 33, 4097):
        clean = torch.randn(size).to(dtype)
        assert all_finite(clean)
        for position in (0, size // 2, size - 1):
            for value in (math.nan, math.inf, -math.inf):
                if dtype == torch.float8_e4m3fn and math.isinf(value):
                    continue  # e4m3fn has no Inf (it saturates to NaN)
                poisoned = clean.clone()
                poisoned[position] = value
                assert not all_finite(poisoned), (size, position, value)
    assert all_finite(torch.empty(0, dtype=dtype))
