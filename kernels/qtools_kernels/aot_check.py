"""Compile every shipped launch config for Hopper (sm_90) without a GPU and check its shared memory.

Each table in `configs/` is turned into launch plans on `meta` tensors with Qwen3-Coder-480B shapes
(hidden 6144, top-8; INT4 at group sizes 64 and 128), plus the routing kernel; every distinct
(kernel, constexprs, num_warps, num_stages) is compiled through ptxas to a cubin, and its
`metadata.shared` must fit the H100 per-block limit (227 KiB of the SM's 228 KiB).

Run: `python -m qtools_kernels.aot_check [--json PATH]` with TRITON_INTERPRET unset (interpreted
kernels cannot be compiled). Exit status 1 when a config fails to compile or does not fit.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from triton.backends.compiler import GPUTarget

from ._launch import KernelLaunch
from .fp8_gemm import plan_fp8_block_matmul
from .fused_moe_fp8 import plan_fused_moe_fp8_block
from .fused_moe_w4a16 import plan_fused_moe_w4a16
from .moe_common import allocate_moe_buffers
from .reference import FP8_DTYPE, cdiv
from .routing import plan_topk_softmax
from .tuning import CONFIG_DIR, FP8_DTYPE_NAME, KernelConfig, load_config_table

HOPPER = GPUTarget("cuda", 90, 32)
H100_MAX_SHARED_BYTES = 232448
"""cudaDevAttrMaxSharedMemoryPerBlockOptin on H100 / H200: 227 KiB."""
HIDDEN = 6144
TOP_K = 8
INT4_GROUP_SIZES = (64, 128)

_MOE_FILE = re.compile(
    r"E=(\d+),N=(\d+),device_name=([^,]+),dtype=(fp8_w8a8|int4_w4a16)(,block_shape=\[128,128\])?\.json"
)
_GEMM_FILE = re.compile(r"N=(\d+),K=(\d+),device_name=([^,]+),dtype=fp8_w8a8,block_shape=\[128,128\]\.json")


@dataclass
class CompileResult:
    kernel: str
    constexprs: str
    num_warps: int
    num_stages: int
    source: str
    shared_bytes: int | None
    seconds: float
    error: str | None

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.shared_bytes is not None
            and self.shared_bytes <= H100_MAX_SHARED_BYTES
        )


def _meta(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _moe_launches(
    dtype: str, experts: int, inter: int, tokens: int, config: KernelConfig
) -> list[KernelLaunch]:
    x = _meta((tokens, HIDDEN), torch.bfloat16)
    topk_weights = _meta((tokens, TOP_K), torch.float32)
    topk_ids = _meta((tokens, TOP_K), torch.int32)
    fp8 = dtype == FP8_DTYPE_NAME
    buffers = allocate_moe_buffers(x, experts, inter, TOP_K, config.block_m, quantized_acts=fp8)
    if fp8:
        return plan_fused_moe_fp8_block(
            x,
            _meta((experts, 2 * inter, HIDDEN), FP8_DTYPE),
            _meta((experts, cdiv(2 * inter, 128), cdiv(HIDDEN, 128)), torch.float32),
            _meta((experts, HIDDEN, inter), FP8_DTYPE),
            _meta((experts, cdiv(HIDDEN, 128), cdiv(inter, 128)), torch.float32),
            topk_weights,
            topk_ids,
            buffers,
            config,
        )
    launches = []
    for group in INT4_GROUP_SIZES:
        launches += plan_fused_moe_w4a16(
            x,
            _meta((experts, 2 * inter, HIDDEN // 8), torch.int32),
            _meta((experts, 2 * inter, cdiv(HIDDEN, group)), torch.bfloat16),
            _meta((experts, HIDDEN, inter // 8), torch.int32),
            _meta((experts, HIDDEN, cdiv(inter, group)), torch.bfloat16),
            topk_weights,
            topk_ids,
            group,
            buffers,
            config,
        )
    return launches


def _gemm_launch(n: int, k: int, tokens: int, config: KernelConfig) -> KernelLaunch:
    return plan_fp8_block_matmul(
        _meta((tokens, k), FP8_DTYPE),
        _meta((tokens, cdiv(k, 128)), torch.float32),
        _meta((n, k), FP8_DTYPE),
        _meta((cdiv(n, 128), cdiv(k, 128)), torch.float32),
        _meta((tokens, n), torch.bfloat16),
        config,
    )


def shipped_launches(config_dir: Path = CONFIG_DIR) -> list[tuple[str, KernelLaunch]]:
    """(source file, launch) for every entry of every shipped table, plus top-k routing for E=160."""
    launches: list[tuple[str, KernelLaunch]] = []
    for path in sorted(config_dir.glob("*.json")):
        table = load_config_table(path.name)
        moe, gemm = _MOE_FILE.fullmatch(path.name), _GEMM_FILE.fullmatch(path.name)
        if table is None or not (moe or gemm):
            raise ValueError(f"unrecognised config file name {path.name}")
        for tokens, config in sorted(table.items()):
            if moe:
                found = _moe_launches(moe.group(4), int(moe.group(1)), int(moe.group(2)), tokens, config)
            else:
                found = [_gemm_launch(int(gemm.group(1)), int(gemm.group(2)), tokens, config)]
            launches += [(path.name, launch) for launch in found]
    logits = _meta((64, 160), torch.bfloat16)
    routing = plan_topk_softmax(
        logits, _meta((64, TOP_K), torch.float32), _meta((64, TOP_K), torch.int32), TOP_K, True
    )
    launches.append(("routing E=160 top-8", routing))
    return launches


def _key(launch: KernelLaunch) -> tuple:
    return (
        launch.kernel.__name__,
        tuple(sorted(launch.constexprs.items())),
        launch.num_warps,
        launch.num_stages,
    )


def check_shipped_configs(config_dir: Path = CONFIG_DIR, target: GPUTarget = HOPPER) -> list[CompileResult]:
    """Compile each distinct launch once and report its shared memory."""
    results = []
    seen: set[tuple] = set()
    for source, launch in shipped_launches(config_dir):
        key = _key(launch)
        if key in seen:
            continue
        seen.add(key)
        start = time.perf_counter()
        shared, error = None, None
        try:
            shared = int(launch.compile_for(target).metadata.shared)
        except Exception as exc:  # reported per config; the check goes on
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        results.append(
            CompileResult(
                kernel=launch.kernel.__name__,
                constexprs=",".join(f"{k}={v}" for k, v in sorted(launch.constexprs.items())),
                num_warps=launch.num_warps,
                num_stages=launch.num_stages,
                source=source,
                shared_bytes=shared,
                seconds=round(time.perf_counter() - start, 2),
                error=error,
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = check_shipped_configs()
    for r in results:
        status = "ok" if r.ok else "FAIL"
        shared = "-" if r.shared_bytes is None else f"{r.shared_bytes / 1024:.1f} KiB"
        print(
            f"{status:4} {r.kernel:34} w{r.num_warps} s{r.num_stages} {shared:>10} {r.seconds:6.1f}s"
            f"  {r.constexprs}"
        )
        if r.error:
            print(f"     {r.error}")
    failed = sum(not r.ok for r in results)
    print(f"{len(results)} kernels compiled for sm_90, {failed} failed, limit {H100_MAX_SHARED_BYTES} bytes")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"ok": r.ok} for r in results], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
