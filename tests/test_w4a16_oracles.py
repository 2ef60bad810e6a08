"""Our W4A16 checkpoints against other people's code: llm-compressor, compressed-tensors and transformers.

- llm-compressor `oneshot` with `QuantizationModifier(scheme="W4A16")` (its round-to-nearest) writes the same
  `quantization_config` as ours, but for listing the embedding in `ignore` (we list it, as for FP8, so
  name-based readers know it has no scale) and the order of `ignore`.
- llm-compressor `model_free_ptq(scheme="W4A16")`: the same tensor names, dtypes and shapes; scales and
  `weight_shape` bit-exact; kept tensors bit-exact; codes equal except at the bf16 double-rounding ties its CPU
  path creates by dividing in bf16 (see tests/test_int4_numerics.py), where ours is the nearer code.
- compressed-tensors' model-free dequantiser (`CompressedTensorsDequantizer`, its pack-quantized compressor's
  `decompress`) gives our dequantisation bit for bit.
- transformers 5 loads the output through compressed-tensors: its expert weights are ours bit for bit and,
  its parameters widened to float32, its logits match `qtools.runtime`'s in float32 (the tolerance of the BF16
  runtime test: 1e-4 of the largest logit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qtools.formats.pack_quantized import PACKED, SCALE, SHAPE, Int4GroupLayout
from qtools.numerics.int4 import unpack_int4
from qtools.runtime import load_model

# The modules our W4A16 recipes keep, in llm-compressor's terms (it skips every `*norm` module by itself).
LLMC_IGNORE = ["lm_head", "model.embed_tokens", "re:.*mlp[.]gate$", "re:.*self_attn[.].*"]
MIN_CODE_AGREEMENT = 0.98  # measured 0.993 at group 128


def load_tensors(root: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def quantization_config(root: Path) -> dict:
    return json.loads((root / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def llmcompressor():
    """llm-compressor's entry points (importing it takes several seconds, so once per module)."""
    pytest.importorskip("llmcompressor")
    from llmcompressor import model_free_ptq, oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    return model_free_ptq, oneshot, QuantizationModifier


@pytest.fixture(scope="module")
def oneshot_output(llmcompressor, aligned_checkpoint, tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    _, oneshot, modifier = llmcompressor
    model = transformers.Qwen3MoeForCausalLM.from_pretrained(aligned_checkpoint, dtype=torch.bfloat16)
    save = tmp_path_factory.mktemp("llmcompressor") / "oneshot"
    recipe = modifier(targets="Linear", scheme="W4A16", ignore=[p for p in LLMC_IGNORE if p != "model.embed_tokens"])
    oneshot(model=model, recipe=recipe, output_dir=str(save))
    return save


@pytest.fixture(scope="module")
def model_free_output(llmcompressor, aligned_checkpoint, tmp_path_factory) -> Path:
    model_free_ptq = llmcompressor[0]
    save = tmp_path_factory.mktemp("llmcompressor") / "model-free"
    model_free_ptq(aligned_checkpoint, save, scheme="W4A16", ignore=LLMC_IGNORE, max_workers=1, device="cpu")
    return save


def test_quantization_config_is_what_llm_compressor_writes(oneshot_output, w4a16_outputs):
    ours, theirs = quantization_config(w4a16_outputs[128]), quantization_config(oneshot_output)
    our_ignore, their_ignore = ours.pop("ignore"), theirs.pop("ignore")
    assert ours == theirs
    assert sorted(set(our_ignore) - {"model.embed_tokens"}) == sorted(their_ignore)


def test_oneshot_writes_the_same_tensors(oneshot_output, w4a16_outputs):
    ours, theirs = load_tensors(w4a16_outputs[128]), load_tensors(oneshot_output)
    assert {n: (t.dtype, t.shape) for n, t in ours.items()} == {n: (t.dtype, t.shape) for n, t in theirs.items()}


def test_model_free_ptq_agrees_tensor_by_tensor(model_free_output, w4a16_outputs, aligned_checkpoint):
    ours, theirs = load_tensors(w4a16_outputs[128]), load_tensors(model_free_output)
    source = load_tensors(aligned_checkpoint)
    assert {n: (t.dtype, t.shape) for n, t in ours.items()} == {n: (t.dtype, t.shape) for n, t in theirs.items()}
    config = quantization_config(model_free_output)
    group = next(iter(config["config_groups"].values()))
    assert group["format"] == "pack-quantized" and group["weights"]["group_size"] == 128
    same = total = 0
    for name in ours:
        module, _, suffix = name.rpartition(".")
        if suffix in (SCALE, SHAPE):
            assert torch.equal(ours[name], theirs[name]), name
        elif suffix != PACKED:
            assert torch.equal(ours[name], theirs[name]) and torch.equal(ours[name], source[name]), name
            continue
        if suffix != PACKED:
            continue
        ours_codes, theirs_codes = unpack_int4(ours[name]), unpack_int4(theirs[name])
        weight, scale = source[f"{module}.weight"], ours[f"{module}.{SCALE}"].repeat_interleave(128, dim=1)
        quotient = (weight / scale).float()  # bf16 / bf16, as llm-compressor computes it on CPU
        emulated = torch.round(quotient.clamp(-8, 7)).to(torch.int8)
        assert torch.equal(emulated, theirs_codes), f"{name}: llm-compressor's codes are no round(bf16(w / s))"
        differ = ours_codes != theirs_codes
        assert (differ <= (quotient - quotient.floor() == 0.5)).all(), f"{name}: a difference that is no tie"
        exact = weight.double() / scale.double()
        assert ((ours_codes - exact).abs() <= (theirs_codes - exact).abs()).all(), name
        same, total = same + (~differ).sum().item(), total + differ.numel()
    print(f"\nmodel_free_ptq W4A16: codes agree on {same / total:.4f} of {total}; every difference a bf16 tie")
    assert same / total >= MIN_CODE_AGREEMENT


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("group", [128, 64])
def test_compressed_tensors_decompresses_exactly_like_us(w4a16_outputs, aligned_checkpoint, dtype, group):
    converters = pytest.importorskip("compressed_tensors.entrypoints.convert.converters.ct_dequantizer")
    root = w4a16_outputs[group]
    dequantizer = converters.CompressedTensorsDequantizer(root, dtype=dtype)
    theirs: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        theirs.update(dequantizer.validate(load_file(shard)))
    ours, source = load_tensors(root), load_tensors(aligned_checkpoint)
    assert sorted(theirs) == sorted(source), "the dequantised checkpoint holds exactly the source's tensors"
    layout = Int4GroupLayout(group)
    for name, tensor in theirs.items():
        module = name.removesuffix(".weight")
        if f"{module}.{PACKED}" in ours:
            parts = {suffix: ours[f"{module}.{suffix}"] for suffix in layout.suffixes}
            assert torch.equal(tensor, layout.dequantize(parts, dtype)), name
        else:
            assert torch.equal(tensor, source[name]), name


def test_transformers_loads_it_and_its_logits_match_the_runtime(w4a16_outputs, aligned_checkpoint):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    root = w4a16_outputs[128]
    model = transformers.Qwen3MoeForCausalLM.from_pretrained(root, dtype=torch.float32)
    loaded, ours, source = model.state_dict(), load_tensors(root), load_tensors(aligned_checkpoint)
    layout = Int4GroupLayout(128)

    def dequantized(module: str) -> torch.Tensor:
        return layout.dequantize({s: ours[f"{module}.{s}"] for s in layout.suffixes}, torch.float32)

    config = model.config
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}.mlp.experts"
        # transformers 5 fuses experts in memory: gate_up_proj [E, 2I, H] = gate rows then up rows, down [E, H, I].
        for expert in range(config.num_experts):
            module = f"{prefix}.{expert}"
            gate_up = torch.cat([dequantized(f"{module}.gate_proj"), dequantized(f"{module}.up_proj")])
            assert torch.equal(loaded[f"{prefix}.gate_up_proj"][expert], gate_up), module
            assert torch.equal(loaded[f"{prefix}.down_proj"][expert], dequantized(f"{module}.down_proj")), module
    for name, tensor in source.items():
        if ".mlp.experts." not in name:
            assert torch.equal(loaded[name], tensor.float()), name
    # It keeps the decompressed experts in their bf16 (the scale dtype) whatever `dtype` asks, so its experts
    # would compute in bf16: widened, the whole model computes in float32, as the runtime does here.
    assert loaded["model.layers.0.mlp.experts.down_proj"].dtype == torch.bfloat16
    for parameter in model.parameters():  # transformers refuses `.float()` on a quantised model
        parameter.data = parameter.data.float()
    ids = torch.randint(0, config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(ids).logits
    got = load_model(root, dtype=torch.float32)(ids)
    torch.testing.assert_close(got, expected, rtol=0.0, atol=1e-4 * expected.abs().max().item())


def test_compressed_tensors_decompresses_a_mixed_checkpoint_exactly_like_us(aligned_checkpoint, tmp_path):
    """FP8 attention and INT4 experts in one checkpoint: its dequantiser takes each group's modules by their
    targets; FP8 blocks as in tests/test_fp8_oracles.py (product in the scale dtype), INT4 as above."""
    from qtools.convert import convert_checkpoint
    from qtools.formats import detect
    from qtools.recipe import load_recipe

    converters = pytest.importorskip("compressed_tensors.entrypoints.convert.converters.ct_dequantizer")
    root = tmp_path / "mixed"
    convert_checkpoint(aligned_checkpoint, root, load_recipe("w4a16-rtn-fp8-attention"))
    dequantizer = converters.CompressedTensorsDequantizer(root, dtype=torch.float32)
    theirs: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        theirs.update(dequantizer.validate(load_file(shard)))
    ours, source = load_tensors(root), load_tensors(aligned_checkpoint)
    assert sorted(theirs) == sorted(source)
    fmt = detect(json.loads((root / "config.json").read_text()))
    infos = {name: type("Info", (), {"dtype": tensor.dtype})() for name, tensor in ours.items()}
    quantised = 0
    for name, tensor in theirs.items():
        module = name.removesuffix(".weight")
        layout = fmt.layout_of(module, infos.get)
        if layout is None:
            assert torch.equal(tensor, source[name]), name
            continue
        parts = {suffix: ours[f"{module}.{suffix}"] for suffix in layout.suffixes}
        scale_dtype = parts[layout.scale_suffixes[0]].dtype
        assert torch.equal(tensor, layout.dequantize(parts, scale_dtype).float()), name
        quantised += 1
    assert quantised == 8 + 24
