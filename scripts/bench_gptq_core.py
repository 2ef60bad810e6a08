"""Benchmark the batched GPTQ core (qtools.numerics.gptq) on one MoE layer's expert projections.

Shapes are Qwen3-Coder-480B's scaled down (default: 32 experts, hidden 2048, expert width 768, as Qwen3-Coder-30B):
gate/up W [E, inter, hidden], down W [E, hidden, inter]. Calibration inputs are synthetic correlated hidden states,
routed top-8 at random; the down Hessians come from each expert's routed SiLU-gated activations. Three cases, one
projection of E experts each:

- gate/up, all tokens: one shared Hessian [hidden, hidden] for every expert (one factorisation);
- gate/up, routed: one Hessian per expert [E, hidden, hidden];
- down: one Hessian per expert [E, inter, inter].

Each is quantised batched (one call), in a loop over experts (one call each, same Hessians) and, when installed,
with llm-compressor 0.14's `quantize_weight` one module at a time (its default: `batched_quantization=None`) and in
one batch of E (`batched_quantization`), on the same matrices, Hessians and static scales. Correctness first:
batched codes must equal the loop's, and agree with llm-compressor's on at least 0.999 of the codes. A layer costs
gate + up + down: 2 x gate/up + down, per coverage mode. Prints a table, writes JSON with `--json`.

    python scripts/bench_gptq_core.py --threads 1 --json bench_gptq_core.json
    python scripts/bench_gptq_core.py --device cuda --experts 160 --hidden 6144 --inter 2560 --no-peer
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_convert import environment as shared_environment
from rich.console import Console
from rich.table import Table

from qtools.numerics.gptq import GPTQResult, gptq_quantize_int4, quantize_int4_rtn
from qtools.numerics.hessian import HessianAccumulator
from qtools.numerics.int4 import int4_group_scales

REPO = Path(__file__).resolve().parents[1]
TOP_K = 8
MIN_PEER_AGREEMENT = 0.999
"""As tests/test_gptq_core.py: only reassociated fp32 sums separate our default sweep from llm-compressor's."""


def environment(device: str, threads: int) -> dict:
    """bench_convert's machine, versions and commit, with the thread count and load average of this run."""
    return shared_environment(device) | {"threads": threads, "load_average": os.getloadavg()[0]}


def calibration(args: argparse.Namespace, device: str) -> dict[str, torch.Tensor]:
    """Weights and Hessians of one synthetic MoE layer: {gate, down weights; shared, routed, down Hessians}."""
    g = torch.Generator().manual_seed(0)
    rank = args.hidden // 8
    mix = torch.randn(rank, args.hidden, generator=g) / rank**0.5
    x = torch.randn(args.tokens, rank, generator=g) @ mix + 0.3 * torch.randn(args.tokens, args.hidden, generator=g)
    gate = (torch.randn(args.experts, args.inter, args.hidden, generator=g) * 0.02).bfloat16()
    up = (torch.randn(args.experts, args.inter, args.hidden, generator=g) * 0.02).bfloat16()
    down = (torch.randn(args.experts, args.hidden, args.inter, generator=g) * 0.02).bfloat16()
    expert_ids = torch.rand(args.tokens, args.experts, generator=g).topk(min(TOP_K, args.experts), dim=1).indices
    x = x.to(device)
    shared = HessianAccumulator(args.hidden, device=device)
    shared.add(x)
    routed = HessianAccumulator(args.hidden, experts=args.experts, device=device)
    routed.add_routed(x, expert_ids)
    down_inputs = HessianAccumulator(args.inter, experts=args.experts, device=device)
    for expert in range(args.experts):
        rows = x[(expert_ids == expert).any(dim=1).to(device)]
        activation = torch.nn.functional.silu(rows @ gate[expert].to(device).float().T) * (
            rows @ up[expert].to(device).float().T
        )
        down_inputs.add(activation.bfloat16(), expert)
    return {
        "gate": gate.to(device),
        "down": down.to(device),
        "shared": shared.mean,
        "routed": routed.mean,
        "down_hessian": down_inputs.mean,
    }


def timed(function: Callable[[], object], device: str) -> tuple[object, float]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def peer_quantizer(group_size: int):
    """llm-compressor's GPTQ on a stack ([B, out, in] weights and Hessians), with its own observer's scales:
    returns codes int8 [B, out, in]. None when llm-compressor is not installed."""
    try:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.observers import Observer
    except ImportError:
        return None
    args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=group_size, symmetric=True)

    def quantize(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
        observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
        scales = torch.stack([observer(w).get_qparams()["scale"] for w in weight])
        dequantized, _, _ = quantize_weight(
            weight.clone(), hessian.clone(), scales, torch.zeros_like(scales), None, args, blocksize=128
        )
        return quantize_int4_rtn(dequantized, scales)

    return quantize


def run_case(name: str, weight: torch.Tensor, hessian: torch.Tensor, args: argparse.Namespace, peer) -> dict:
    """Time one projection of E experts every way; check the codes agree first."""
    device = args.device
    experts = weight.shape[0]
    shared = hessian.dim() == 2

    def per_expert(e: int) -> torch.Tensor:
        return hessian if shared else hessian[e]

    def batched() -> GPTQResult:
        return gptq_quantize_int4(weight, hessian, group_size=args.group)

    def loop() -> list[GPTQResult]:
        return [gptq_quantize_int4(weight[e], per_expert(e), group_size=args.group) for e in range(experts)]

    result, batched_s = timed(batched, device)
    looped, loop_s = timed(loop, device)
    loop_codes = torch.cat([r.codes for r in looped])
    if not torch.equal(result.codes, loop_codes):
        raise SystemExit(f"{name}: batched codes differ from the per-expert loop's")
    row = {
        "case": name,
        "experts": experts,
        "weight": list(weight.shape[1:]),
        "hessian": "shared" if shared else "per expert",
        "batched_s": batched_s,
        "loop_s": loop_s,
        "fallback": int(result.fallback.sum()),
        "peer_module_s": None,
        "peer_batch_s": None,
        "peer_agreement": None,
    }
    if peer is not None:
        stacked = hessian.expand(experts, -1, -1) if shared else hessian
        peer_loop, row["peer_module_s"] = timed(
            lambda: torch.cat([peer(weight[e : e + 1], stacked[e : e + 1]) for e in range(experts)]), device
        )
        peer_batch, row["peer_batch_s"] = timed(lambda: peer(weight, stacked.contiguous()), device)
        row["peer_agreement"] = (result.codes == peer_loop).float().mean().item()
        if row["peer_agreement"] < MIN_PEER_AGREEMENT or not torch.equal(peer_loop, peer_batch):
            raise SystemExit(f"{name}: codes agree with llm-compressor's on only {row['peer_agreement']:.5f}")
        if not torch.equal(result.scales, int4_group_scales(weight, args.group)):
            raise SystemExit(f"{name}: static scales differ from the round-to-nearest rule")
    return row


def layer_totals(rows: dict[str, dict]) -> list[dict]:
    """Per-layer seconds: gate + up (2 x the gate/up case) + down, for each coverage mode and way of running."""
    totals = []
    for mode, gate_case in (("all tokens", "gate/up, all tokens"), ("routed", "gate/up, routed")):
        total = {"mode": mode}
        for key in ("batched_s", "loop_s", "peer_module_s", "peer_batch_s"):
            values = (rows[gate_case][key], rows["down"][key])
            total[key] = None if None in values else 2 * values[0] + values[1]
        totals.append(total)
    return totals


def report(results: dict, console: Console) -> None:
    env = results["environment"]
    title = (
        f"GPTQ INT4 g{results['settings']['group']} per projection, device {env['device']} ({env['cpu']}, "
        f"{env['cpus']} CPUs, {env['threads']} threads, load {env['load_average']:.1f})"
    )

    def seconds(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    def ratio(slow: float | None, fast: float) -> str:
        return "" if slow is None else f"{slow / fast:.1f}x"

    table = Table(title=title)
    for column in ("case", "E x W", "H", "batched s", "loop s", "llmc/module s", "llmc/batch s", "vs module", "agree"):
        table.add_column(column, justify="left" if column in ("case", "H") else "right")
    for row in results["cases"]:
        agreement = "" if row["peer_agreement"] is None else f"{row['peer_agreement']:.5f}"
        table.add_row(
            row["case"],
            f"{row['experts']}x{row['weight'][0]}x{row['weight'][1]}",
            row["hessian"],
            seconds(row["batched_s"]),
            seconds(row["loop_s"]),
            seconds(row["peer_module_s"]),
            seconds(row["peer_batch_s"]),
            ratio(row["peer_module_s"], row["batched_s"]),
            agreement,
        )
    for total in results["layers"]:
        table.add_row(
            f"layer ({total['mode']})",
            "gate+up+down",
            "",
            seconds(total["batched_s"]),
            seconds(total["loop_s"]),
            seconds(total["peer_module_s"]),
            seconds(total["peer_batch_s"]),
            ratio(total["peer_module_s"], total["batched_s"]),
            "",
            end_section=False,
        )
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items())
    table.caption = f"{versions}; python {env['python']}; commit {env['commit']}; {env['date']}"
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=2048, help="model width: gate/up input, down output")
    parser.add_argument("--inter", type=int, default=768, help="expert width: gate/up output, down input")
    parser.add_argument("--group", type=int, default=128, choices=(32, 64, 128))
    parser.add_argument("--tokens", type=int, default=4096, help="calibration tokens (each routed to 8 experts)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--no-peer", action="store_true", help="skip llm-compressor")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    data = calibration(args, args.device)
    peer = None if args.no_peer else peer_quantizer(args.group)
    cases = {
        "gate/up, all tokens": (data["gate"], data["shared"]),
        "gate/up, routed": (data["gate"], data["routed"]),
        "down": (data["down"], data["down_hessian"]),
    }
    rows = {}
    for name, (weight, hessian) in cases.items():
        print(f"timing {name} ...", flush=True)
        rows[name] = run_case(name, weight, hessian, args, peer)
    results = {
        "environment": environment(args.device, torch.get_num_threads()),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "cases": list(rows.values()),
        "layers": layer_totals(rows),
    }
    report(results, Console(width=160))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
