"""Converted FP8 checkpoints read back by other people's code: transformers, compressed-tensors, llm-compressor.

- BF16 bound: every dequantised weight is within e4m3 round-to-nearest of the source.
- transformers: the hf-fp8 output loaded by `Qwen3MoeForCausalLM` with `FineGrainedFP8Config(dequantize=True)`
  equals our dequantisation bit for bit (both compute fp32 q * scale, then cast once).
- compressed-tensors: its pydantic config accepts ours; its model-free dequantisers (`CompressedTensorsDequantizer`
  for compressed-tensors, `FP8BlockDequantizer` for hf-fp8) give our dequantisation bit for bit.
- llm-compressor `model_free_ptq` FP8_BLOCK: codes agree with ours on about 97% of elements; every difference is
  explained (its bf16 scales, and its bf16 division x / scale rounding before the e4m3 rounding).

The figures printed with `pytest -s` are the ones in docs/fp8-oracles.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qtools.convert import convert_checkpoint
from qtools.numerics.fp8 import FP8_DTYPE, FP8_MAX, dequantize_fp8_block
from qtools.recipe import Recipe, load_recipe
from qtools.testing.synth import SynthSpec, make_checkpoint

BLOCK = 128
# transformers' Fp8Dequantize derives the block size from the scale grid (rows // scale_rows), so it can only
# read weights whose dimensions are multiples of 128, as all of Qwen3-Coder-480B's are; see docs/fp8-oracles.md.
ALIGNED_SPEC = SynthSpec(hidden_size=384, moe_intermediate_size=256, head_dim=128, shard_bytes=1_500_000)
# The modules our recipes keep in BF16, in llm-compressor's terms (it skips every `*norm` module by itself).
LLMC_IGNORE = ["lm_head", "model.embed_tokens", "re:.*mlp[.]gate$"]
# Measured agreement is about 0.97 (docs/fp8-oracles.md); below 0.95 something other than rounding changed.
MIN_CODE_AGREEMENT = 0.95


def load_tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a (small) checkpoint directory, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def expand_blocks(scales: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-block values [ceil(out/128), ceil(in/128)] repeated to one per element [out, in]."""
    return scales.repeat_interleave(BLOCK, 0)[: shape[0]].repeat_interleave(BLOCK, 1)[:, : shape[1]]


def scale_name(weight_name: str, tensors: dict[str, torch.Tensor]) -> str:
    module = weight_name.removesuffix(".weight")
    return next(f"{module}.{s}" for s in ("weight_scale_inv", "weight_scale") if f"{module}.{s}" in tensors)


def fp8_weights(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(name for name, tensor in tensors.items() if tensor.dtype == FP8_DTYPE)


def quantization_config(root: Path) -> dict:
    return json.loads((root / "config.json").read_text())["quantization_config"]


def convert(source: Path, destination: Path, recipe: Recipe) -> Path:
    convert_checkpoint(source, destination, recipe)
    return destination


def with_scale_dtype(recipe: str, scale_dtype: str) -> Recipe:
    return load_recipe(recipe).model_copy(update={"scale_dtype": scale_dtype})


@pytest.fixture(scope="module")
def outputs(synth_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The odd-sized synthetic checkpoint converted three ways."""
    root = tmp_path_factory.mktemp("oracles")
    recipes = {
        "hf-fp8": with_scale_dtype("fp8-block", "float32"),
        "compressed-tensors": with_scale_dtype("fp8-block-compressed-tensors", "float32"),
        "compressed-tensors bf16 scales": with_scale_dtype("fp8-block-compressed-tensors", "bfloat16"),
    }
    return {name: convert(synth_checkpoint, root / name.replace(" ", "-"), r) for name, r in recipes.items()}


@pytest.fixture(scope="module")
def aligned(tmp_path_factory) -> dict[str, Path]:
    """A checkpoint with every dimension a multiple of 128, its source and hf-fp8 / compressed-tensors outputs."""
    root = tmp_path_factory.mktemp("aligned")
    source = make_checkpoint(root / "bf16", ALIGNED_SPEC, seed=1)
    return {
        "source": source,
        "hf-fp8": convert(source, root / "hf-fp8", with_scale_dtype("fp8-block", "float32")),
        "compressed-tensors": convert(source, root / "ct", with_scale_dtype("fp8-block-compressed-tensors", "float32")),
        "compressed-tensors bf16 scales": convert(
            source, root / "ct-bf16", with_scale_dtype("fp8-block-compressed-tensors", "bfloat16")
        ),
    }


@pytest.mark.parametrize("output", ["hf-fp8", "compressed-tensors", "compressed-tensors bf16 scales"])
def test_dequantised_weights_within_e4m3_rounding_of_bf16(outputs, synth_checkpoint, output):
    source, converted = load_tensors(synth_checkpoint), load_tensors(outputs[output])
    signal = noise = 0.0
    for name in fp8_weights(converted):
        exact = source[name].float()
        scales = converted[scale_name(name, converted)].float()
        restored = dequantize_fp8_block(converted[name], scales)
        # e4m3 keeps 3 mantissa bits: round-to-nearest is within 2^-4 relative for normal codes and within half
        # the subnormal step (2^-10 in code units) below 2^-6. A bf16 scale can push the block maximum up to
        # 2^-8 past 448 before the clamp, which stays inside the same bound.
        bound = torch.maximum(exact.abs() * 2.0**-4, expand_blocks(scales, exact.shape) * 2.0**-10)
        assert ((restored - exact).abs() <= bound * (1 + 1e-6)).all(), name
        signal += exact.square().sum().item()
        noise += (restored - exact).square().sum().item()
    kept = [n for n, t in converted.items() if t.dtype != FP8_DTYPE and n in source]
    assert kept and all(torch.equal(converted[n], source[n]) for n in kept), "BF16 passthrough must be bit-exact"
    sqnr = 10 * torch.log10(torch.tensor(signal / noise)).item()
    print(f"\n{output}: {len(fp8_weights(converted))} FP8 weights, SQNR {sqnr:.2f} dB against BF16")
    assert sqnr > 28.0  # e4m3 round-to-nearest on Gaussian-like weights gives about 31 dB


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_transformers_dequantises_hf_fp8_exactly_like_us(aligned, dtype):
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen3MoeForCausalLM.from_pretrained(
        aligned["hf-fp8"],
        quantization_config=transformers.FineGrainedFP8Config(dequantize=True),
        dtype=dtype,
    )
    loaded = model.state_dict()
    converted, source = load_tensors(aligned["hf-fp8"]), load_tensors(aligned["source"])

    def ours(module: str) -> torch.Tensor:
        return dequantize_fp8_block(converted[f"{module}.weight"], converted[f"{module}.weight_scale_inv"], dtype=dtype)

    compared = 0
    for layer in range(ALIGNED_SPEC.num_layers):
        prefix = f"model.layers.{layer}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(loaded[f"{prefix}.self_attn.{proj}.weight"], ours(f"{prefix}.self_attn.{proj}"))
            compared += 1
        # transformers 5 fuses experts in memory: gate_up_proj [E, 2I, H] = gate rows then up rows, down [E, H, I].
        gate_up, down = loaded[f"{prefix}.mlp.experts.gate_up_proj"], loaded[f"{prefix}.mlp.experts.down_proj"]
        assert gate_up.shape[0] == down.shape[0] == ALIGNED_SPEC.num_experts
        for expert in range(ALIGNED_SPEC.num_experts):
            module = f"{prefix}.mlp.experts.{expert}"
            expected = torch.cat([ours(f"{module}.gate_proj"), ours(f"{module}.up_proj")])
            assert torch.equal(gate_up[expert], expected), module
            assert torch.equal(down[expert], ours(f"{module}.down_proj")), module
            compared += 3
    passthrough = [n for n, t in source.items() if converted[n].dtype != FP8_DTYPE]
    for name in passthrough:
        assert torch.equal(loaded[name], source[name].to(dtype)), name
    print(f"\ntransformers {transformers.__version__} ({dtype}): {compared} FP8 weights bit-identical")


def test_compressed_tensors_accepts_our_config(outputs):
    from_config = pytest.importorskip("compressed_tensors.quantization").QuantizationConfig.model_validate
    for name in ("compressed-tensors", "compressed-tensors bf16 scales"):
        config = from_config(quantization_config(outputs[name]))
        scheme = next(iter(config.config_groups.values()))
        assert config.format == "float-quantized" and config.quantization_status == "compressed"
        assert scheme.weights.strategy == "block" and list(scheme.weights.block_structure) == [BLOCK, BLOCK]
        assert scheme.input_activations.dynamic and scheme.input_activations.group_size == BLOCK


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("output", ["compressed-tensors", "compressed-tensors bf16 scales", "hf-fp8"])
def test_compressed_tensors_dequantises_exactly_like_us(outputs, synth_checkpoint, output, dtype):
    converters = pytest.importorskip("compressed_tensors.entrypoints.convert.converters")
    root = outputs[output]
    if output == "hf-fp8":
        targets = [r"re:.*\.(self_attn\.[qkvo]_proj|mlp\.experts\.\d+\.(gate|up|down)_proj)$"]
        dequantizer = converters.FP8BlockDequantizer(targets=targets, dtype=dtype)
    else:
        # The config says `targets: [Linear]`, a class; a model-free reader sees names only, so it would also
        # take the embedding for a quantised module. Listing it here is the hook the library offers for that.
        from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

        dequantizer = CompressedTensorsDequantizer(root, ignore=["model.embed_tokens"], dtype=dtype)
    converted, source = load_tensors(root), load_tensors(synth_checkpoint)
    theirs: dict[str, torch.Tensor] = {}
    for shard in sorted(root.glob("*.safetensors")):
        theirs.update(dequantizer.validate(load_file(shard)))
    assert sorted(theirs) == sorted(source), "dequantised checkpoint must hold exactly the source's tensors"
    for name in fp8_weights(converted):
        scales = converted[scale_name(name, converted)]
        # compressed-tensors multiplies in the scale's dtype: with bf16 scales it rounds q * scale to bf16 before
        # casting to `dtype`, where we multiply in fp32. That fp32 product of a 4-bit and an 8-bit significand is
        # exact, so theirs equals ours rounded once to bf16.
        ours = dequantize_fp8_block(converted[name], scales, dtype=scales.dtype).to(dtype)
        assert torch.equal(theirs[name], ours), name
    for name in set(source) - set(fp8_weights(converted)):
        assert torch.equal(theirs[name], source[name]), name


@pytest.fixture(scope="module")
def llmcompressor():
    """llm-compressor's model-free entry points (importing it takes several seconds, so once per module)."""
    pytest.importorskip("llmcompressor")
    from llmcompressor import model_free_ptq
    from llmcompressor.entrypoints.model_free.converter import ModelFreePtqConverter
    from llmcompressor.entrypoints.model_free.validate import validate_config

    return model_free_ptq, ModelFreePtqConverter, validate_config


def rounding_ties(values: torch.Tensor) -> torch.Tensor:
    """Where an fp32 value lies exactly halfway between two e4m3 codes (its two fp32 neighbours round apart)."""
    values = values.float().clamp(-FP8_MAX, FP8_MAX)
    above = torch.nextafter(values, torch.tensor(float("inf"))).to(FP8_DTYPE).view(torch.uint8)
    below = torch.nextafter(values, torch.tensor(float("-inf"))).to(FP8_DTYPE).view(torch.uint8)
    return above != below


def compare_codes(source, ours, theirs) -> dict[str, float]:
    """Agreement between our FP8 codes and llm-compressor's, and how much of the disagreement each cause explains.

    llm-compressor computes `x / scale` with x and its bf16 scale both bf16, so the quotient is rounded to bf16
    before the e4m3 rounding. e4m3 codes and the midpoints between them are bf16 values, so that first rounding
    can only change a code by landing exactly on a midpoint (a double-rounding tie); we divide in fp32.
    """
    counts = dict.fromkeys(["codes", "same", "blocks", "same_blocks", "diff", "diff_scale", "tie", "emulated"], 0)
    counts.update(same_scale_codes=0, ours_no_further=0, signal=0.0, ours_noise=0.0, theirs_noise=0.0)
    for name in fp8_weights(theirs):
        weight = source[name]
        ours_scale, theirs_scale = ours[f"{name}_scale"].float(), theirs[f"{name}_scale"]
        assert theirs_scale.dtype == torch.bfloat16
        quotient = weight / expand_blocks(theirs_scale, weight.shape)  # bf16 / bf16, as llm-compressor does
        emulated = quotient.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).view(torch.uint8)
        ours_codes, theirs_codes = ours[name].view(torch.uint8), theirs[name].view(torch.uint8)
        differ = ours_codes != theirs_codes
        same_scale = expand_blocks(ours_scale == theirs_scale.float(), weight.shape)
        counts["codes"] += differ.numel()
        counts["same"] += (~differ).sum().item()
        counts["blocks"] += ours_scale.numel()
        counts["same_blocks"] += (ours_scale == theirs_scale.float()).sum().item()
        counts["diff"] += differ.sum().item()
        counts["diff_scale"] += (differ & ~same_scale).sum().item()
        counts["tie"] += (differ & same_scale & rounding_ties(quotient)).sum().item()
        counts["emulated"] += (emulated == theirs_codes).sum().item()
        # Under the same scale ours is round-to-nearest of the fp32 quotient: never further from the weight.
        exact = weight.double() / expand_blocks(ours_scale, weight.shape).double()
        ours_error = (ours[name].double() - exact).abs()
        theirs_error = (theirs[name].double() - exact).abs()
        counts["same_scale_codes"] += same_scale.sum().item()
        counts["ours_no_further"] += (same_scale & (ours_error <= theirs_error + 1e-6 * exact.abs())).sum().item()
        counts["signal"] += weight.double().square().sum().item()
        for side, tensors in (("ours", ours), ("theirs", theirs)):
            restored = dequantize_fp8_block(tensors[name], tensors[f"{name}_scale"], dtype=torch.float64)
            counts[f"{side}_noise"] += (restored - weight.double()).square().sum().item()
    return {
        "agreement": counts["same"] / counts["codes"],
        "scales_equal": counts["same_blocks"] / counts["blocks"],
        "diffs_in_blocks_with_other_scale": counts["diff_scale"] / max(counts["diff"], 1),
        "diffs_at_bf16_ties": counts["tie"] / max(counts["diff"], 1),
        "unexplained_diffs": counts["diff"] - counts["diff_scale"] - counts["tie"],
        "emulation_agreement": counts["emulated"] / counts["codes"],
        "ours_no_further_same_scale": counts["ours_no_further"] / max(counts["same_scale_codes"], 1),
        "sqnr_ours_db": 10 * math.log10(counts["signal"] / counts["ours_noise"]),
        "sqnr_theirs_db": 10 * math.log10(counts["signal"] / counts["theirs_noise"]),
        "codes": counts["codes"],
    }


def check_agreement(label: str, source, ours, theirs, bf16_scales: bool) -> None:
    figures = compare_codes(source, ours, theirs)
    print(
        f"\n{label}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
    )
    assert figures["emulation_agreement"] == 1.0, "llm-compressor's codes are no longer fp8(bf16(x / bf16 scale))"
    assert figures["agreement"] >= MIN_CODE_AGREEMENT
    assert figures["unexplained_diffs"] == 0
    if bf16_scales:
        # Our fp32 amax/448 rounded once to bf16 equals llm-compressor's bf16 amax/448.
        assert figures["scales_equal"] == 1.0
        assert figures["diffs_at_bf16_ties"] == 1.0
    assert figures["ours_no_further_same_scale"] == 1.0


@pytest.fixture(scope="module")
def model_free_ptq_output(llmcompressor, aligned, tmp_path_factory) -> Path:
    """llm-compressor's `model_free_ptq` FP8_BLOCK output for the aligned checkpoint, keeping what we keep."""
    model_free_ptq = llmcompressor[0]
    save = tmp_path_factory.mktemp("llmcompressor") / "fp8-block"
    model_free_ptq(aligned["source"], save, scheme="FP8_BLOCK", ignore=LLMC_IGNORE, max_workers=1, device="cpu")
    return save


@pytest.mark.parametrize("scales", ["fp32", "bf16"])
def test_llmcompressor_model_free_ptq_agrees_end_to_end(model_free_ptq_output, aligned, scales):
    ours_dir = aligned["compressed-tensors" if scales == "fp32" else "compressed-tensors bf16 scales"]
    ours, theirs = load_tensors(ours_dir), load_tensors(model_free_ptq_output)
    source = load_tensors(aligned["source"])
    assert sorted(ours) == sorted(theirs), "same tensor names in both outputs"
    assert fp8_weights(ours) == fp8_weights(theirs), "same modules quantised"
    for name in set(source) & set(theirs):
        if theirs[name].dtype != FP8_DTYPE:
            assert torch.equal(theirs[name], ours[name]), name
    check_agreement(f"model_free_ptq, aligned dims, our {scales} scales", source, ours, theirs, scales == "bf16")


@pytest.mark.parametrize("scales", ["fp32", "bf16"])
def test_llmcompressor_converter_agrees_on_odd_dims(llmcompressor, outputs, synth_checkpoint, scales):
    # model_free_ptq itself fails on these shapes: its codes for a weight whose input dimension is not a
    # multiple of 128 are a non-contiguous slice that safetensors refuses to save. The converter it runs per
    # shard is called directly here, which is all of model_free_ptq but the save.
    _, converter_class, validate_config = llmcompressor
    converter = converter_class(validate_config(None, "FP8_BLOCK", LLMC_IGNORE))
    source = load_tensors(synth_checkpoint)
    theirs = converter.process(dict(source))
    ours = load_tensors(outputs["compressed-tensors" if scales == "fp32" else "compressed-tensors bf16 scales"])
    assert fp8_weights(ours) == fp8_weights(theirs), "same modules quantised"
    check_agreement(f"ModelFreePtqConverter, odd dims, our {scales} scales", source, ours, theirs, scales == "bf16")
