"""The runtime's `triton` backend against its `torch` reference, on CPU in Triton's interpreter (CI sets
TRITON_INTERPRET=1) or on a GPU.

Tolerances: both backends compute W8A8 with the same FP8 weights and per-token-group FP8 activations, but the
torch reference rounds each linear's output and the expert intermediate to bf16 before re-quantising it to FP8,
while the kernels keep fp32 there; an e4m3 step is 6% of a value, so the few elements whose FP8 rounding moves
give about 2% relative L2 on an expert block (measured 1.9-2.0%) and 0.5% on one linear. A wiring mistake
(gate/up swapped, scales of the wrong block, routing weights ignored) gives errors of order 100%.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from qtools.convert import convert_checkpoint
from qtools.recipe import load_recipe
from qtools.runtime import load_model
from qtools.testing.synth import SynthSpec, make_checkpoint

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or not (os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()),
    reason="the triton backend needs Triton and a GPU or TRITON_INTERPRET=1",
)
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
REL_L2_MOE, REL_L2_LINEAR = 0.04, 0.01
SPECS = {
    "odd sizes: kernel linears, torch expert loop": SynthSpec(),
    "128-aligned: fused MoE kernel": SynthSpec(hidden_size=256, moe_intermediate_size=128, head_dim=64),
}


@pytest.fixture(scope="module", params=list(SPECS))
def fp8_checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("triton")
    source = make_checkpoint(root / "bf16", SPECS[request.param], seed=0)
    convert_checkpoint(source, root / "fp8", load_recipe("fp8-block"), workers=1)
    return request.param, root / "fp8"


def _rel_l2(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


def test_triton_backend_matches_the_torch_reference(fp8_checkpoint, monkeypatch) -> None:
    name, path = fp8_checkpoint
    reference = load_model(path, device=DEVICE)
    fast = load_model(path, device=DEVICE, backend="triton")
    assert fast.info.backend == "triton"
    kernels = fast.layers[0].mlp.gate.backend.kernels
    calls = {"fused_moe_fp8_block": 0, "fp8_block_linear": 0}
    for op in calls:
        original = getattr(kernels, op)

        def counted(*args, _op=op, _original=original):
            calls[_op] += 1
            return _original(*args)

        monkeypatch.setattr(kernels, op, counted)

    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, reference.config.hidden_size, generator=generator).to(torch.bfloat16).to(DEVICE)
    for layer in range(reference.config.num_layers):
        expected, got = reference.layers[layer].mlp(x), fast.layers[layer].mlp(x)
        assert got.dtype == expected.dtype and _rel_l2(got, expected) < REL_L2_MOE, (name, layer)
        q_ref, q_fast = reference.layers[layer].self_attn.q_proj, fast.layers[layer].self_attn.q_proj
        assert _rel_l2(q_fast(x), q_ref(x)) < REL_L2_LINEAR, (name, layer)
    layers = reference.config.num_layers
    if "fused" in name:
        assert calls["fused_moe_fp8_block"] == layers  # one fused call per MoE block
    else:
        assert calls["fused_moe_fp8_block"] == 0 and calls["fp8_block_linear"] > 3 * layers  # experts' linears

    ids = torch.randint(0, 500, (1, 6), generator=generator).to(DEVICE)
    assert torch.isfinite(fast(ids)).all()


# INT4 experts: the kernel multiplies integer dots by each group's scale in float32, the torch reference
# dequantises to bf16 weights (q * scale rounded, 2^-9 relative) and matmuls in bf16, rounding every linear's
# output; that gives about 0.8% relative L2 on an expert block (measured 0.78%). Gate/up swapped, a wrong
# group or nibble order give order-100% errors.
REL_L2_INT4_MOE = 0.02


@pytest.fixture(scope="module", params=["w4a16-rtn", "w4a16-rtn-tp8"])
def w4a16_checkpoint(request, aligned_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton-int4") / request.param
    convert_checkpoint(aligned_checkpoint, out, load_recipe(request.param), workers=1)
    return out


def test_triton_backend_runs_int4_experts_with_the_fused_kernel(w4a16_checkpoint, monkeypatch) -> None:
    reference = load_model(w4a16_checkpoint, device=DEVICE)
    fast = load_model(w4a16_checkpoint, device=DEVICE, backend="triton")
    kernels = fast.layers[0].mlp.gate.backend.kernels
    calls = []
    original = kernels.fused_moe_w4a16
    monkeypatch.setattr(kernels, "fused_moe_w4a16", lambda *args: calls.append(args[-1]) or original(*args))
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, reference.config.hidden_size, generator=generator).to(torch.bfloat16).to(DEVICE)
    for layer in range(reference.config.num_layers):
        expected, got = reference.layers[layer].mlp(x), fast.layers[layer].mlp(x)
        assert got.dtype == expected.dtype and _rel_l2(got, expected) < REL_L2_INT4_MOE, layer
    group = fast.layers[0].mlp.experts[0].down_proj.group_size
    assert calls == [group] * reference.config.num_layers  # one fused call per MoE block, with its group size
    expert = fast.layers[0].mlp.experts[1].up_proj
    assert torch.equal(
        expert.dequantize(torch.float32), reference.layers[0].mlp.experts[1].up_proj.dequantize(torch.float32)
    )
