"""`convert_checkpoint`: plan, convert the missing shards (in worker processes and/or torch.distributed ranks),
then write config, non-weight files and, last, the index.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import torch

from qtools import __version__
from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.writer import write_index, write_json
from qtools.convert import distributed
from qtools.convert.plan import ConversionPlan, plan_conversion
from qtools.convert.shard import ShardRecord, convert_shard
from qtools.convert.state import finished_record, prepare_destination, save_record, source_fingerprint
from qtools.errors import QtoolsError
from qtools.formats.fp8_block import FORMATS
from qtools.recipe import Recipe


@dataclass
class ConvertSummary:
    """What a conversion did; `source_bytes` counts the BF16 bytes read for the shards converted this run."""

    destination: Path
    shards_total: int
    shards_converted: int = 0
    shards_reused: int = 0
    tensors_converted: int = 0
    tensors_kept: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    records: list[ShardRecord] = field(default_factory=list)

    @property
    def gb_per_second(self) -> float:
        return self.source_bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ProgressHooks:
    """Callbacks a front end (the CLI's progress bar) receives; all optional."""

    on_start: Callable[[int, int], None] | None = None  # (total source bytes to convert, shards to convert)
    on_bytes: Callable[[int], None] | None = None
    on_shard_done: Callable[[str], None] | None = None


def _check_paths(source: Path, destination: Path) -> None:
    src, dst = source.resolve(), destination.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise QtoolsError(f"output {destination} must not be inside the source {source} or contain it")


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _convert_one(args) -> ShardRecord:
    source_root, destination, shard, actions, recipe, device, queue = args
    on_bytes = queue.put if queue is not None else None
    record = convert_shard(
        Path(source_root) / shard,
        Path(destination) / shard,
        actions,
        recipe.block_size,
        recipe.scale_dtype,
        device,
        on_bytes,
    )
    save_record(Path(destination), record)
    return record


def _convert_shards(
    checkpoint: Checkpoint,
    destination: Path,
    plan: ConversionPlan,
    recipe: Recipe,
    shards: list[str],
    workers: int,
    device: str,
    hooks: ProgressHooks,
) -> list[ShardRecord]:
    def done(record: ShardRecord) -> None:
        if hooks.on_shard_done:
            hooks.on_shard_done(record.file)

    if workers <= 0:
        workers = default_workers(len(shards), sum(plan.shard_source_bytes(s) for s in shards))
    if workers <= 1 or len(shards) <= 1:
        records = []
        for shard in shards:
            record = convert_shard(
                checkpoint.root / shard,
                destination / shard,
                plan.actions[shard],
                recipe.block_size,
                recipe.scale_dtype,
                device,
                hooks.on_bytes,
            )
            save_record(destination, record)
            records.append(record)
            done(record)
        return records
    # Forking skips re-importing torch in every worker (seconds each); CUDA cannot survive a fork, so GPU runs
    # and platforms without fork spawn fresh interpreters.
    forkable = not device.startswith("cuda") and "fork" in get_all_start_methods()
    context = get_context("fork" if forkable else "spawn")
    manager = context.Manager()
    queue = manager.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    records: list[ShardRecord] = []
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {
            pool.submit(_convert_one, (checkpoint.root, destination, s, plan.actions[s], recipe, device, queue)): s
            for s in shards
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
            _drain(queue, hooks.on_bytes)
            for future in finished:
                error = future.exception()
                if error is not None:
                    for other in pending:
                        other.cancel()
                    raise error
                records.append(future.result())
                done(future.result())
        _drain(queue, hooks.on_bytes)
    manager.shutdown()
    return records


# Below this much work, starting worker processes (each imports torch) costs more than it saves.
_WORKERS_WORTH_IT_BYTES = 1 << 30


def default_workers(shards: int, source_bytes: int) -> int:
    """One single-threaded worker per core of this rank (up to the shards at hand): small torch ops scale far
    better across processes than across intra-op threads, and one worker's I/O overlaps another's arithmetic."""
    if source_bytes < _WORKERS_WORTH_IT_BYTES:
        return 1
    cores = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(cores, shards))


def _drain(queue, on_bytes) -> None:
    while not queue.empty():
        nbytes = queue.get()
        if on_bytes:
            on_bytes(nbytes)


def _finalize(checkpoint: Checkpoint, destination: Path, plan: ConversionPlan, recipe: Recipe) -> int:
    """Write config.json with its quantization_config, copy every non-weight file, then the index (last)."""
    records = {}
    for shard in checkpoint.shard_names:
        record = finished_record(destination, shard)
        if record is None:
            raise QtoolsError(f"{destination / shard}: missing or does not match its record; rerun to finish it")
        records[shard] = record
    for relative in checkpoint.extra_files():
        if relative.as_posix() == "config.json":
            continue
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkpoint.root / relative, target.with_name(target.name + ".partial"))
        os.replace(target.with_name(target.name + ".partial"), target)
    config = dict(checkpoint.config)
    num_layers = int(config.get("num_hidden_layers", 0))
    fmt = FORMATS[recipe.format]
    config["quantization_config"] = fmt.quantization_config(
        recipe.block_size, plan.kept_linear_modules, num_layers, _compressed_tensors_version()
    )
    write_json(destination / "config.json", config)
    weight_map = {name: shard for shard, rec in records.items() for name in rec.tensors}
    total = sum(nbytes for rec in records.values() for nbytes in rec.tensors.values())
    write_index(destination, weight_map, {"total_size": total, "qtools_version": __version__})
    return sum(rec.size for rec in records.values())


def _compressed_tensors_version() -> str:
    try:
        from importlib.metadata import version

        return version("compressed-tensors")
    except Exception:
        return "0.19.0"


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    recipe: Recipe,
    workers: int = 0,
    device: str = "cpu",
    overwrite: bool = False,
    hooks: ProgressHooks | None = None,
) -> ConvertSummary:
    """Convert the checkpoint at `source` into `destination` following `recipe`; resumable, see module doc.

    Under torchrun (WORLD_SIZE > 1) every rank converts its share of the shards and rank 0 writes the index
    after all ranks finish. Raises QtoolsError on bad input, naming the file or tensor.
    """
    source, destination = Path(source), Path(destination)
    hooks = hooks or ProgressHooks()
    started = time.perf_counter()
    _check_paths(source, destination)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QtoolsError("--device cuda asked for, but torch sees no CUDA device")
    checkpoint = Checkpoint.open(source)
    plan = plan_conversion(checkpoint, recipe)
    identity = {
        "source": str(source.resolve()),
        "source_fingerprint": source_fingerprint(checkpoint),
        "recipe": json.loads(recipe.fingerprint()),
    }
    with distributed.session(device) as group:
        group.run_on_rank0_then_share(lambda: prepare_destination(destination, identity, overwrite))
        mine = group.my_shards({s: checkpoint.shard_bytes(s) for s in checkpoint.shard_names})
        todo = [s for s in mine if finished_record(destination, s) is None]
        summary = ConvertSummary(destination, len(checkpoint.shard_names), shards_reused=len(mine) - len(todo))
        if hooks.on_start:
            hooks.on_start(sum(plan.shard_source_bytes(s) for s in todo), len(todo))
        records = group.run_everywhere(
            lambda: _convert_shards(checkpoint, destination, plan, recipe, todo, workers, device, hooks)
        )
        output_bytes = group.run_on_rank0_then_share(lambda: _finalize(checkpoint, destination, plan, recipe))
    summary.records = records
    summary.shards_converted = len(records)
    summary.tensors_converted = sum(r.converted for r in records)
    summary.tensors_kept = sum(r.kept for r in records)
    summary.source_bytes = sum(r.source_bytes for r in records)
    summary.output_bytes = output_bytes
    summary.seconds = time.perf_counter() - started
    return summary
