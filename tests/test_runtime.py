"""The Qwen3-MoE runtime against transformers (the oracle), against itself (KV cache, streaming, one layer alone)
and across weight formats (BF16, hf-fp8, compressed-tensors FP8_BLOCK).

Tolerances:
- Runtime vs transformers, both float32: the same formulas, so differences come only from summation order
  (transformers fuses gate/up into one matmul, attention kernels tile differently); about 3e-7 relative is
  observed. RTOL = 1e-4 of the largest logit leaves a 300x margin and still catches any formula slip (a wrong
  eps, rope pairing or routing renormalisation moves logits by 1e-2 or more).
- The same runtime along two code paths that do the same float32 operations (resident vs streamed layers, one
  layer alone, FP8 dequantised per call vs the same dequantised weights stored dense): exact equality.
- FP8 vs BF16: weights by SQNR (e4m3 with per-block scales gives about 31.5 dB); logits of these random-weight
  models by SQNR too, with a loose bound, because random layers amplify the error (about 15 dB observed
  without, 13 dB with activation quantisation; a misapplied scale gives far less).
"""

from __future__ import annotations

import json
import shutil
import sys
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qtools.checkpoint.hf import Checkpoint
from qtools.convert import convert_checkpoint
from qtools.errors import QtoolsError
from qtools.numerics.fp8 import FP8_DTYPE, dequantize_fp8_block
from qtools.recipe import load_recipe
from qtools.runtime import GenerationSettings, ModelConfig, generate, load_layer, load_model
from qtools.runtime.act_quant import fake_quant_fp8_per_token_group
from qtools.runtime.generate import _keep_top_k, _keep_top_p
from qtools.runtime.rope import rope_inv_freq
from qtools.runtime.weights import detect_format
from qtools.testing.synth import SynthSpec, make_checkpoint

RTOL = 1e-4
MIN_WEIGHT_SQNR_DB = 28.0
MIN_LOGIT_SQNR_DB = 10.0
# Odd everything: hidden and widths not multiples of 128 or of each other, 3 of 5 experts, 3 query heads per KV head.
ODD_SPEC = SynthSpec(
    hidden_size=200,
    moe_intermediate_size=136,
    num_experts=5,
    num_experts_per_tok=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=40,
    vocab_size=311,
)


def _ids(batch: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _transformers_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import Qwen3MoeForCausalLM

    model = Qwen3MoeForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


def _assert_close_to(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=0.0, atol=RTOL * reference.abs().max().item())


def _sqnr_db(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return (10 * torch.log10(exact.pow(2).sum() / (approx - exact).pow(2).sum())).item()


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("runtime") / "odd", ODD_SPEC, seed=3)


@pytest.fixture(scope="module")
def yarn_checkpoint(tmp_path_factory, synth_checkpoint) -> Path:
    path = tmp_path_factory.mktemp("runtime") / "yarn"
    shutil.copytree(synth_checkpoint, path)
    config = json.loads((path / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def fp8_checkpoints(tmp_path_factory, synth_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runtime")
    recipes = {"hf-fp8": "fp8-block", "compressed-tensors": "fp8-block-compressed-tensors"}
    for name, recipe in recipes.items():
        convert_checkpoint(synth_checkpoint, root / name, load_recipe(recipe))
    return {name: root / name for name in recipes}


def _write_dequantized(source: Path, destination: Path) -> Path:
    """A dense float32 checkpoint holding exactly the weights an FP8 checkpoint dequantises to."""
    checkpoint = Checkpoint.open(source)
    tensors = {}
    for shard in checkpoint.shard_names:
        reader = checkpoint.reader(shard)
        for name in reader.tensors:
            if name.endswith((".weight_scale_inv", ".weight_scale")):
                continue
            tensor = reader.read(name)
            if tensor.dtype == FP8_DTYPE:
                module = name.removesuffix(".weight")
                scale_name = f"{module}.weight_scale_inv"
                if scale_name not in checkpoint.weight_map:
                    scale_name = f"{module}.weight_scale"
                scale = checkpoint.reader(checkpoint.weight_map[scale_name]).read(scale_name)
                tensor = dequantize_fp8_block(tensor, scale, (128, 128), torch.float32)
            tensors[name] = tensor.clone()
    destination.mkdir()
    save_file(tensors, destination / "model.safetensors")
    config = dict(checkpoint.config)
    del config["quantization_config"]
    (destination / "config.json").write_text(json.dumps(config))
    return destination


@pytest.mark.parametrize("which", ["default", "odd"])
def test_bf16_logits_match_transformers(which, synth_checkpoint, odd_checkpoint):
    path = synth_checkpoint if which == "default" else odd_checkpoint
    model = load_model(path, dtype=torch.float32)
    ids = _ids(2, 19, model.config.vocab_size)
    _assert_close_to(model(ids), _transformers_logits(path, ids))
    assert model(ids).dtype == torch.float32


def test_bf16_compute_is_close_to_float32(synth_checkpoint):
    ids = _ids(1, 11, 500)
    logits = load_model(synth_checkpoint)(ids)
    assert logits.dtype == torch.float32
    assert _sqnr_db(logits, load_model(synth_checkpoint, dtype=torch.float32)(ids)) > 20.0


def test_yarn_inv_freq_matches_transformers():
    from transformers import Qwen3MoeConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = SynthSpec().config()
    variants = [
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
        {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024, "beta_fast": 16, "beta_slow": 2},
        {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256, "truncate": False},
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
        },
    ]
    for scaling in variants:
        config = {**base, "rope_scaling": scaling}
        ours, our_factor = rope_inv_freq(ModelConfig.from_dict(config))
        theirs, their_factor = ROPE_INIT_FUNCTIONS["yarn"](Qwen3MoeConfig(**config), "cpu")
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0.0)
        assert our_factor == pytest.approx(their_factor, rel=1e-12)


def test_yarn_logits_match_transformers(yarn_checkpoint):
    model = load_model(yarn_checkpoint, dtype=torch.float32)
    assert model.config.rope_scaling is not None
    ids = _ids(1, 40, model.config.vocab_size)  # longer than original_max_position_embeddings = 16
    _assert_close_to(model(ids), _transformers_logits(yarn_checkpoint, ids))


def test_kv_cache_decoding_matches_full_forward(odd_checkpoint):
    model = load_model(odd_checkpoint, dtype=torch.float32)
    ids = _ids(2, 16, model.config.vocab_size)
    full = model(ids)
    caches = model.new_caches(batch=2, capacity=16)
    # A 9-token prefill, two single-token steps, then a 5-token chunk that must see the cache causally.
    pieces = [model(ids[:, :9], caches=caches), model(ids[:, 9:10], caches=caches)]
    pieces += [model(ids[:, 10:11], caches=caches), model(ids[:, 11:], caches=caches)]
    _assert_close_to(torch.cat(pieces, dim=1), full)


def test_greedy_generation_matches_transformers(odd_checkpoint):
    from transformers import Qwen3MoeForCausalLM

    ids = _ids(2, 7, ODD_SPEC.vocab_size, seed=5)
    model = load_model(odd_checkpoint, dtype=torch.float32)
    ours = generate(model, ids, max_new_tokens=6, settings=GenerationSettings())
    reference = Qwen3MoeForCausalLM.from_pretrained(odd_checkpoint, dtype=torch.float32)
    theirs = reference.generate(
        ids, max_new_tokens=6, do_sample=False, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(ours, theirs)


def test_generation_stops_on_eos_and_samples_reproducibly(synth_checkpoint):
    model = load_model(synth_checkpoint, dtype=torch.float32)
    ids = _ids(1, 5, 500)
    greedy = generate(model, ids, max_new_tokens=4)
    stop = int(greedy[0, 6])
    stopped = generate(model, ids, max_new_tokens=4, settings=GenerationSettings(eos_token_ids=(stop,)))
    assert torch.equal(stopped, greedy[:, :7])
    top1 = GenerationSettings(do_sample=True, temperature=0.7, top_k=1)
    assert torch.equal(generate(model, ids, 4, top1, torch.Generator().manual_seed(0)), greedy)
    settings = GenerationSettings.from_checkpoint(synth_checkpoint)
    assert settings.do_sample and settings.top_k == 20 and settings.eos_token_ids == (151645, 151643)
    first = generate(model, ids, 4, settings, torch.Generator().manual_seed(7))
    assert torch.equal(first, generate(model, ids, 4, settings, torch.Generator().manual_seed(7)))


def test_top_k_top_p_match_transformers():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 97, generator=torch.Generator().manual_seed(2)) * 3
    ids = torch.zeros(4, 1, dtype=torch.int64)
    assert torch.equal(_keep_top_k(logits, 20), TopKLogitsWarper(20)(ids, logits.clone()))
    for top_p in (0.8, 0.3, 0.01):
        assert torch.equal(_keep_top_p(logits, top_p), TopPLogitsWarper(top_p)(ids, logits.clone()))


@pytest.mark.parametrize("fmt", ["hf-fp8", "compressed-tensors"])
def test_fp8_logits_equal_dense_model_with_dequantized_weights(fmt, fp8_checkpoints, tmp_path, synth_checkpoint):
    fp8 = load_model(fp8_checkpoints[fmt], dtype=torch.float32, act_quant=False)
    assert fp8.info.weight_format == fmt
    dense = load_model(_write_dequantized(fp8_checkpoints[fmt], tmp_path / "dequantized"), dtype=torch.float32)
    ids = _ids(2, 13, 500)
    logits = fp8(ids)
    assert torch.equal(logits, dense(ids))
    bf16 = load_model(synth_checkpoint, dtype=torch.float32)
    assert _sqnr_db(logits, bf16(ids)) > MIN_LOGIT_SQNR_DB
    for name, linear in fp8.layers[0].named_modules():
        if hasattr(linear, "weight_scale_inv"):
            exact = bf16.layers[0].get_submodule(name).weight
            assert _sqnr_db(linear.dequantize(torch.float32), exact) > MIN_WEIGHT_SQNR_DB, name


def test_cached_dequantized_weights_give_the_same_logits(fp8_checkpoints):
    ids = _ids(2, 11, 500)
    plain = load_model(fp8_checkpoints["hf-fp8"])
    cached = load_model(fp8_checkpoints["hf-fp8"], cache_dequantized=True)
    first = cached(ids)
    assert torch.equal(first, plain(ids)) and torch.equal(cached(ids), first)
    expert = cached.layers[0].mlp.experts[0].gate_proj
    assert expert.dequantize(torch.bfloat16) is expert.dequantize(torch.bfloat16)
    uncached = plain.layers[0].mlp.experts[0].gate_proj
    assert uncached.dequantize(torch.bfloat16) is not uncached.dequantize(torch.bfloat16)


def test_act_quant_follows_the_checkpoint_and_stays_close(fp8_checkpoints, synth_checkpoint):
    assert load_model(synth_checkpoint).info.act_quant is False
    quantized = load_model(fp8_checkpoints["hf-fp8"], dtype=torch.float32)
    assert quantized.info.act_quant is True
    ids = _ids(1, 9, 500)
    with_act = quantized(ids)
    without = load_model(fp8_checkpoints["hf-fp8"], dtype=torch.float32, act_quant=False)(ids)
    assert not torch.equal(with_act, without)
    assert _sqnr_db(with_act, load_model(synth_checkpoint, dtype=torch.float32)(ids)) > MIN_LOGIT_SQNR_DB
    ct = load_model(fp8_checkpoints["compressed-tensors"], dtype=torch.float32)
    assert ct.info.act_quant is True and torch.equal(ct(ids), with_act)


def test_activation_fake_quant_matches_kernel_reference():
    x = torch.randn(5, 3, 200, generator=torch.Generator().manual_seed(4)) * torch.logspace(-3, 2, 200)
    x[0, 0] = 0.0  # an all-zero token: finite scale, zero output
    ours = fake_quant_fp8_per_token_group(x)
    assert torch.equal(ours[0, 0], torch.zeros(200))
    reference = pytest.importorskip("qtools_kernels.reference")
    codes, scale = reference.per_token_group_quant_fp8_ref(x.reshape(-1, 200))
    assert torch.equal(ours.reshape(-1, 200), reference.dequant_per_token_group_fp8_ref(codes, scale))


def test_streamed_layers_equal_resident_and_hold_one_layer(synth_checkpoint, monkeypatch):
    resident = load_model(synth_checkpoint, dtype=torch.float32)
    streamed = load_model(synth_checkpoint, dtype=torch.float32, stream_layers=True)
    assert streamed.layers is None
    alive: list[weakref.ref] = []
    most_alive = 0
    load = streamed.layer_loader

    def counting_loader(index):
        nonlocal most_alive
        layer = load(index)
        alive.append(weakref.ref(layer))
        most_alive = max(most_alive, sum(ref() is not None for ref in alive))
        return layer

    monkeypatch.setattr(streamed, "layer_loader", counting_loader)
    ids = _ids(2, 10, 500)
    assert torch.equal(streamed(ids), resident(ids))
    sequences = [_ids(1, n, 500, seed=n)[0] for n in (7, 12, 3)]
    outputs = streamed.forward_streamed(sequences)
    assert len(alive) == 2 * resident.config.num_layers and most_alive == 1
    for sequence, logits in zip(sequences, outputs, strict=True):
        assert torch.equal(logits, resident(sequence[None])[0])
    sums = streamed.forward_streamed(sequences, reduce=lambda i, logits: (i, logits.sum().item()))
    assert [i for i, _ in sums] == [0, 1, 2]
    with pytest.raises(QtoolsError, match="stream_layers"):
        streamed(ids, caches=resident.new_caches(2, 10))


def test_one_layer_runs_alone_over_captured_hidden_states(synth_checkpoint):
    model = load_model(synth_checkpoint, dtype=torch.float32)
    ids = _ids(3, 8, 500)
    positions = torch.arange(8)
    captured = model.layers[0](model.embed(ids), positions)
    layer = load_layer(synth_checkpoint, 1, dtype=torch.float32)
    assert torch.equal(layer(captured, positions), model.layers[1](captured, positions))
    assert torch.equal(layer(captured, positions.expand(3, 8)), model.layers[1](captured, positions))
    names = dict(layer.named_modules())
    assert "self_attn.q_proj" in names and "mlp.experts.3.down_proj" in names and "mlp.gate" in names


def test_triton_backend_says_what_is_missing(synth_checkpoint, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(QtoolsError, match="backend 'triton'"):
        load_model(synth_checkpoint, backend="triton")  # no CUDA here, or no Triton, or no qtools_kernels
    monkeypatch.setitem(sys.modules, "qtools_kernels", None)
    with pytest.raises(QtoolsError, match="not available yet.*qtools_kernels"):
        load_model(synth_checkpoint, backend="triton")
    with pytest.raises(QtoolsError, match="unknown backend"):
        load_model(synth_checkpoint, backend="cuda")


def test_unsupported_formats_and_configs_are_refused():
    with pytest.raises(QtoolsError, match="not supported by the runtime yet"):
        detect_format(
            {
                "quantization_config": {
                    "quant_method": "compressed-tensors",
                    "format": "pack-quantized",
                    "config_groups": {"g": {"format": "pack-quantized", "weights": {"strategy": "group"}}},
                }
            }
        )
    with pytest.raises(QtoolsError, match="per-tensor"):
        detect_format({"quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic"}})
    with pytest.raises(QtoolsError, match="mlp_only_layers"):
        ModelConfig.from_dict({**SynthSpec().config(), "mlp_only_layers": [0]})
    with pytest.raises(QtoolsError, match="rope type 'dynamic'"):
        ModelConfig.from_dict({**SynthSpec().config(), "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
