"""Benchmark the fused-MoE kernels of qtools_kernels on Qwen3-Coder-480B shapes.

For each expert width (I = 2560 / 1280 / 640 / 320: TP 1 / 2 / 4 / 8), routing (uniform or skewed:
16 hot experts drawing about 60% of the routing probability), token count T and weight format
(fp8 block W8A8, int4 W4A16 g128) it first checks the kernel against the fp32 dequantise-then-matmul
reference, then times it and reports microseconds, achieved GB/s and % of the HBM roofline (bytes =
weights and scales of the distinct experts present in the actual topk_ids + tokens in and out),
TFLOP/s (2 * T * k * 3 * H * I useful FLOPs) and the speedup over a BF16 torch MoE and over
dequantise-then-matmul in BF16. Needs a CUDA GPU; `--interpret-smoke` runs tiny shapes on CPU
through the Triton interpreter only to prove the script executes.

    python scripts/bench_kernels.py --out bench_kernels.json
    python scripts/bench_kernels.py --inter 320 --tokens 1 64 4096 --routing skewed
    python scripts/bench_kernels.py --interpret-smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
NUM_EXPERTS, TOP_K, HIDDEN = 160, 8, 6144
INTER_SIZES = (2560, 1280, 640, 320)
TOKEN_COUNTS = tuple(2**i for i in range(13))
INT4_GROUP = 128
HOT_EXPERTS, HOT_SHARE = 16, 0.6
REL_L2_TOLERANCE = 1e-2
"""Same bound as kernels/tests: bf16 storage of per-pair outputs plus rare one-step fp8 flips."""
HBM_GBPS = {"H100 80GB HBM3": 3350.0, "H100 SXM": 3350.0, "H200": 4800.0, "H100 PCIe": 2000.0, "A100": 2039.0}
"""Peak HBM bandwidth by device-name substring (vendor figures)."""


@dataclass
class Row:
    dtype: str
    inter: int
    routing: str
    tokens: int
    distinct_experts: int
    rel_l2_error: float
    kernel_us: float
    gbps: float
    roofline_pct: float | None
    tflops: float
    bf16_us: float | None
    dequant_us: float | None

    @property
    def speedup_bf16(self) -> float | None:
        return None if self.bf16_us is None else self.bf16_us / self.kernel_us

    @property
    def speedup_dequant(self) -> float | None:
        return None if self.dequant_us is None else self.dequant_us / self.kernel_us


def git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def peak_hbm_gbps(device_name: str) -> float | None:
    for key, value in HBM_GBPS.items():
        if key in device_name:
            return value
    return None


def header(device: torch.device) -> dict[str, object]:
    import triton

    import qtools_kernels

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    return {
        "device": name,
        "peak_hbm_gbps": peak_hbm_gbps(name) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "qtools_kernels": qtools_kernels.__version__,
        "git_commit": git_commit(),
        "interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


@dataclass
class ExpertSet:
    """One expert width's weights in every format being compared."""

    inter: int
    bf16: tuple[torch.Tensor, torch.Tensor]
    fp8: tuple[torch.Tensor, ...]
    int4: tuple[torch.Tensor, ...]


def build_experts(experts: int, hidden: int, inter: int, device: torch.device, seed: int) -> ExpertSet:
    """Random BF16 experts and their FP8 block / INT4 g128 quantisations, one expert at a time so the
    fp32 temporaries stay small."""
    from qtools_kernels.reference import FP8_DTYPE, cdiv, quantize_fp8_block_ref, quantize_int4_group_ref

    gen = torch.Generator(device=device).manual_seed(seed)
    w13 = torch.empty(experts, 2 * inter, hidden, dtype=torch.bfloat16, device=device)
    w2 = torch.empty(experts, hidden, inter, dtype=torch.bfloat16, device=device)
    w13_q = torch.empty(w13.shape, dtype=FP8_DTYPE, device=device)
    w2_q = torch.empty(w2.shape, dtype=FP8_DTYPE, device=device)
    w13_s = torch.empty(experts, cdiv(2 * inter, 128), cdiv(hidden, 128), device=device)
    w2_s = torch.empty(experts, cdiv(hidden, 128), cdiv(inter, 128), device=device)
    w13_p = torch.empty(experts, 2 * inter, hidden // 8, dtype=torch.int32, device=device)
    w2_p = torch.empty(experts, hidden, inter // 8, dtype=torch.int32, device=device)
    w13_g = torch.empty(experts, 2 * inter, cdiv(hidden, INT4_GROUP), dtype=torch.bfloat16, device=device)
    w2_g = torch.empty(experts, hidden, cdiv(inter, INT4_GROUP), dtype=torch.bfloat16, device=device)
    for e in range(experts):
        gate_up = torch.randn(2 * inter, hidden, generator=gen, device=device) / hidden**0.5
        down = torch.randn(hidden, inter, generator=gen, device=device) / inter**0.5
        w13[e], w2[e] = gate_up, down
        w13_q[e], w13_s[e] = quantize_fp8_block_ref(gate_up)
        w2_q[e], w2_s[e] = quantize_fp8_block_ref(down)
        w13_p[e], w13_g[e] = quantize_int4_group_ref(gate_up, INT4_GROUP)
        w2_p[e], w2_g[e] = quantize_int4_group_ref(down, INT4_GROUP)
    return ExpertSet(inter, (w13, w2), (w13_q, w13_s, w2_q, w2_s), (w13_p, w13_g, w2_p, w2_g))


def make_routing(
    tokens: int, experts: int, top_k: int, skewed: bool, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """topk_ids sampled without replacement (uniform, or HOT_SHARE of the probability on HOT_EXPERTS
    experts), topk_weights random and normalised per token."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.ones(experts)
    hot = min(HOT_EXPERTS, experts // 2)
    if skewed:
        probs[:hot] = HOT_SHARE / hot
        probs[hot:] = (1 - HOT_SHARE) / (experts - hot)
    ids = torch.multinomial(probs.expand(tokens, experts), top_k, replacement=False, generator=gen)
    weights = torch.rand(tokens, top_k, generator=gen) + 0.05
    weights = weights / weights.sum(dim=1, keepdim=True)
    return weights.to(device), ids.to(torch.int32).to(device)


def time_us(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of `fn` in microseconds (CUDA events on GPU)."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e6
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def expert_bytes(dtype: str, hidden: int, inter: int) -> int:
    """Bytes of one expert's weights and scales in the given format."""
    blocks = -(-2 * inter // 128) * -(-hidden // 128) + -(-hidden // 128) * -(-inter // 128)
    if dtype == "fp8":
        return 3 * hidden * inter + 4 * blocks
    groups = 2 * inter * -(-hidden // INT4_GROUP) + hidden * -(-inter // INT4_GROUP)
    return 3 * hidden * inter // 2 + 2 * groups


def relative_l2(out: torch.Tensor, expected: torch.Tensor) -> float:
    out, expected = out.float(), expected.float()
    return float((out - expected).norm() / expected.norm().clamp_min(1e-12))


def bench_case(
    dtype: str,
    weights: ExpertSet,
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    routing: str,
    args: argparse.Namespace,
    peak_gbps: float | None,
) -> Row:
    from qtools_kernels import fused_moe_fp8_block, fused_moe_w4a16
    from qtools_kernels.moe_reference import fused_moe_bf16_ref, fused_moe_fp8_block_ref, fused_moe_w4a16_ref

    if dtype == "fp8":

        def kernel() -> torch.Tensor:
            return fused_moe_fp8_block(x, *weights.fp8, topk_weights, topk_ids)

        def reference(compute_dtype: torch.dtype) -> torch.Tensor:
            return fused_moe_fp8_block_ref(x, *weights.fp8, topk_weights, topk_ids, compute_dtype)
    else:

        def kernel() -> torch.Tensor:
            return fused_moe_w4a16(x, *weights.int4, topk_weights, topk_ids, INT4_GROUP)

        def reference(compute_dtype: torch.dtype) -> torch.Tensor:
            return fused_moe_w4a16_ref(x, *weights.int4, topk_weights, topk_ids, INT4_GROUP, compute_dtype)

    error = relative_l2(kernel(), reference(torch.float32))
    if error >= REL_L2_TOLERANCE:
        raise SystemExit(f"{dtype} I={weights.inter} T={x.shape[0]} {routing}: relative L2 error {error:.2e}")
    device = x.device
    tokens, hidden = x.shape
    distinct = int(torch.unique(topk_ids).numel())
    kernel_us = time_us(kernel, device, args.reps)
    moved = distinct * expert_bytes(dtype, hidden, weights.inter) + 2 * 2 * tokens * hidden
    gbps = moved / kernel_us / 1e3
    flops = 2 * tokens * topk_ids.shape[1] * 3 * hidden * weights.inter
    bf16_us = dequant_us = None
    if not args.skip_baselines:
        bf16_us = time_us(lambda: fused_moe_bf16_ref(x, *weights.bf16, topk_weights, topk_ids), device, args.reps)
        dequant_us = time_us(lambda: reference(torch.bfloat16), device, args.reps)
    return Row(
        dtype=dtype,
        inter=weights.inter,
        routing=routing,
        tokens=tokens,
        distinct_experts=distinct,
        rel_l2_error=error,
        kernel_us=kernel_us,
        gbps=gbps,
        roofline_pct=None if peak_gbps is None else 100 * gbps / peak_gbps,
        tflops=flops / kernel_us / 1e6,
        bf16_us=bf16_us,
        dequant_us=dequant_us,
    )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(meta: dict[str, object], rows: list[Row]) -> None:
    print("  ".join(f"{k}={v}" for k, v in meta.items()))
    print(
        f"{'dtype':5} {'I':>5} {'routing':8} {'T':>5} {'exp':>4} {'us':>9} {'GB/s':>8} {'%HBM':>6} "
        f"{'TFLOP/s':>8} {'x bf16':>7} {'x deq':>7} {'relL2':>8}"
    )
    for r in rows:
        print(
            f"{r.dtype:5} {r.inter:5d} {r.routing:8} {r.tokens:5d} {r.distinct_experts:4d} {r.kernel_us:9.1f} "
            f"{r.gbps:8.1f} {_fmt(r.roofline_pct, '6.1f'):>6} {r.tflops:8.2f} {_fmt(r.speedup_bf16, '7.2f'):>7} "
            f"{_fmt(r.speedup_dequant, '7.2f'):>7} {r.rel_l2_error:8.1e}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inter", type=int, nargs="+", default=list(INTER_SIZES), help="expert widths I")
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKEN_COUNTS), help="token counts T")
    parser.add_argument("--routing", nargs="+", choices=["uniform", "skewed"], default=["uniform", "skewed"])
    parser.add_argument("--dtypes", nargs="+", choices=["fp8", "int4"], default=["fp8", "int4"])
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median reported)")
    parser.add_argument("--skip-baselines", action="store_true", help="do not time the torch baselines")
    parser.add_argument("--out", type=Path, default=Path("bench_kernels.json"), help="JSON results file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--interpret-smoke",
        action="store_true",
        help="tiny shapes on CPU through the Triton interpreter (proves the script runs; timings meaningless)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    experts, top_k, hidden = NUM_EXPERTS, TOP_K, HIDDEN
    if args.interpret_smoke:
        # Must precede the first triton import: kernels bind to the interpreter when decorated.
        os.environ["TRITON_INTERPRET"] = "1"
        device = torch.device("cpu")
        experts, top_k, hidden = 8, 2, 256
        args.inter, args.tokens, args.reps = [192], [1, 5], 1
    elif not torch.cuda.is_available():
        print(
            "bench_kernels.py needs a CUDA GPU (none visible to torch). "
            "Use --interpret-smoke to run tiny shapes on CPU through the Triton interpreter.",
            file=sys.stderr,
        )
        return 2
    else:
        device = torch.device("cuda")
    sys.path.insert(0, str(REPO / "kernels"))
    meta = header(device) | {"experts": experts, "top_k": top_k, "hidden": hidden, "int4_group": INT4_GROUP}
    rows: list[Row] = []
    for inter in args.inter:
        weights = build_experts(experts, hidden, inter, device, args.seed)
        for routing in args.routing:
            for tokens in args.tokens:
                gen = torch.Generator().manual_seed(args.seed + tokens)
                x = torch.randn(tokens, hidden, generator=gen).to(torch.bfloat16).to(device)
                topk_weights, topk_ids = make_routing(
                    tokens, experts, top_k, routing == "skewed", device, args.seed + tokens
                )
                for dtype in args.dtypes:
                    rows.append(
                        bench_case(dtype, weights, x, topk_weights, topk_ids, routing, args, meta["peak_hbm_gbps"])
                    )
        del weights
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(meta, rows)
    payload = {
        "meta": meta,
        "rows": [asdict(r) | {"speedup_bf16": r.speedup_bf16, "speedup_dequant": r.speedup_dequant} for r in rows],
    }
    args.out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
