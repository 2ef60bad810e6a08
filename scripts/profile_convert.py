"""Where a converting worker's CPU time goes: read, digest, amax/scale, cast, write, fsync, per shard.

Builds (or reuses, under `--workdir`) the synthetic checkpoint of `scripts/bench_convert.py` with Qwen3-Coder-480B
matrix shapes, then converts its shards in this process, single-threaded like one `qtools convert` worker, under
cProfile with a CPU-time clock (so other load on the machine does not inflate the figures). Each function's own
time goes to a stage by its name; a torch or I/O builtin goes to the stage of the Python function that called it.

    python scripts/profile_convert.py --recipe fp8-block-compressed-tensors --layers 1 --experts 8
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import bench_spec, build_source  # noqa: E402

from qtools.checkpoint.hf import Checkpoint  # noqa: E402
from qtools.convert.plan import plan_conversion  # noqa: E402
from qtools.convert.shard import convert_shard  # noqa: E402
from qtools.recipe import load_recipe  # noqa: E402

# Python functions by name -> stage; builtins (torch ops, readinto, pwrite) take the stage of their caller.
STAGES = {
    "_read_range": "read",
    "read_rows": "read",
    "read_rows_into": "read",
    "_fill": "read",
    "read_rows_inline": "read",
    "prefetch_rows": "read",
    "map_rows": "read",
    "map_rows_inline": "read",
    "abs_max": "amax + scale",
    "_native_grouped": "amax + scale",
    "abs_max_bits": "amax + scale",
    "block_row_scales": "amax + scale",
    "fp8_block_scale": "amax + scale",
    "group_scales": "amax + scale",
    "int4_group_scale": "amax + scale",
    "quantize_block_row": "divide + cast",
    "fp8_e4m3_codes": "divide + cast",
    "quantize_rows": "divide + cast",
    "int4_codes": "divide + cast",
    "quantize_block_row_fast": "divide + cast",
    "quantize_int4_rows_fast": "divide + cast",
    "fp8_codes": "divide + cast",
    "int4_pack": "divide + cast",
    "pack_int4_ref": "pack",
    "pack_int4": "pack",
    "encode": "pack",
    "_pwrite": "write",
    "write_part": "write",
    "copy_part": "passthrough copy",
    "check": "passthrough NaN check",
    "all_finite": "passthrough NaN check",
    "close": "fsync + rename",
}
# Builtins named here keep their own stage whoever calls them.
BUILTIN_STAGES = {"update": "digest (XXH3)", "digest": "digest (XXH3)", "fsync": "fsync + rename"}


def _stage_of(function: tuple[str, int, str]) -> str | None:
    name = function[2]
    return next((stage for key, stage in STAGES.items() if name == key or name.endswith(f".{key}")), None)


def stage_times(profile: cProfile.Profile) -> dict[str, float]:
    """Self time of every function, summed by stage (see STAGES); unmatched time is `other`."""
    stats = pstats.Stats(profile).stats
    totals: dict[str, float] = {}
    for function, (_, _, own, _, callers) in stats.items():
        name = function[2]
        builtin = function[0] == "~"
        stage = next((s for key, s in BUILTIN_STAGES.items() if builtin and f"'{key}'" in name), None)
        if stage is None and not builtin:
            stage = _stage_of(function)
        if stage is not None:
            totals[stage] = totals.get(stage, 0.0) + own
            continue
        # A builtin, or an unmatched Python function: split its own time over its callers' stages.
        shared = sum(entry[2] for entry in callers.values()) or own
        for caller, entry in callers.items():
            caller_stage = _stage_of(caller) or "other"
            totals[caller_stage] = totals.get(caller_stage, 0.0) + own * entry[2] / shared
        if not callers:
            totals["other"] = totals.get("other", 0.0) + own
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="fp8-block-compressed-tensors", help="a shipped recipe or a YAML path")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--shard-gb", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker of `--workers 2` has 1)")
    parser.add_argument("--workdir", type=Path, help="where the checkpoint goes (kept and reused)")
    parser.add_argument("--top", type=int, default=0, help="also print the N functions with the most own time")
    parser.add_argument("--json", type=Path, help="also write the stage times to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.gettempdir()) / "qtools-profile-convert"
    workdir.mkdir(parents=True, exist_ok=True)
    source = build_source(workdir, bench_spec(args.layers, args.experts, args.vocab, args.shard_gb))
    checkpoint = Checkpoint.open(source)
    plan = plan_conversion(checkpoint, load_recipe(args.recipe))
    output = Path(tempfile.mkdtemp(prefix="out-", dir=workdir))
    profile = cProfile.Profile(time.process_time)
    nbytes = 0
    wall = time.perf_counter()
    try:
        for shard in checkpoint.shard_names:
            for action in plan.actions[shard]:
                nbytes += action.source.nbytes
            profile.enable()
            convert_shard(source / shard, output / shard, plan.actions[shard])
            profile.disable()
    finally:
        shutil.rmtree(output, ignore_errors=True)
    wall = time.perf_counter() - wall
    totals = stage_times(profile)
    cpu = sum(totals.values())
    print(
        f"{args.recipe}: {nbytes / 1e9:.2f} GB of BF16 in {len(checkpoint.shard_names)} shard(s), torch threads "
        f"{args.threads}, torch {torch.__version__}"
    )
    print(f"{'stage':24s} {'CPU s':>8s} {'share':>7s} {'GB/CPU-s':>9s}")
    for stage, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"{stage:24s} {seconds:8.3f} {seconds / cpu:7.1%} {nbytes / 1e9 / max(seconds, 1e-9):9.2f}")
    print(f"{'total':24s} {cpu:8.3f} {1:7.1%} {nbytes / 1e9 / cpu:9.2f}   (wall {wall:.2f} s, profiled)")
    if args.top:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    if args.json:
        record = {"recipe": args.recipe, "source_bytes": nbytes, "cpu_seconds": cpu, "stages": totals}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
