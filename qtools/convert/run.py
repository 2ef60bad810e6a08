"""`convert_checkpoint`: validate everything up front, lock the output, convert the shards that are missing or
stale (in worker processes and/or torch.distributed ranks), then write config, non-weight files and, last, the
index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods
from pathlib import Path

import torch

from qtools import __version__
from qtools.checkpoint.hf import INDEX_NAME, Checkpoint
from qtools.checkpoint.writer import write_index, write_json
from qtools.convert import distributed
from qtools.convert.lock import destination_lock
from qtools.convert.plan import ConversionPlan, TensorAction, plan_conversion
from qtools.convert.shard import ShardRecord, convert_shard
from qtools.convert.state import (
    finished_record,
    prepare_destination,
    record_path,
    refuse_foreign_destination,
    save_record,
    source_change,
    source_fingerprint,
    source_identity,
)
from qtools.convert.workers import run_jobs
from qtools.errors import QtoolsError
from qtools.formats import format_for_recipe
from qtools.recipe import Recipe


@dataclass
class ConvertSummary:
    """What a conversion did; `source_bytes` counts the BF16 bytes read for the shards converted this run and
    `workers` the processes that converted them (1: this process)."""

    destination: Path
    shards_total: int
    shards_converted: int = 0
    shards_reused: int = 0
    tensors_converted: int = 0
    tensors_kept: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    workers: int = 0
    records: list[ShardRecord] = field(default_factory=list)

    @property
    def gb_per_second(self) -> float:
        return self.source_bytes / 1e9 / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ProgressHooks:
    """Callbacks a front end (the CLI's progress bar) receives; all optional. Without `on_warning`, warnings go
    through `warnings.warn`."""

    on_start: Callable[[int, int, int], None] | None = None  # (source bytes to convert, shards to convert, reused)
    on_bytes: Callable[[int], None] | None = None
    on_shard_done: Callable[[str], None] | None = None
    on_warning: Callable[[str], None] | None = None

    def warn(self, message: str) -> None:
        if self.on_warning:
            self.on_warning(message)
        else:
            warnings.warn(message, stacklevel=3)


class ConversionInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a conversion: `finished` of `total` shards are converted, recorded and kept for a rerun."""

    def __init__(self, finished: int, total: int):
        super().__init__(f"{finished} of {total} shards are converted and kept")
        self.finished, self.total = finished, total


@dataclass(frozen=True)
class ShardJob:
    """Everything converting one shard needs, as plain data a worker process can receive."""

    source: Path
    destination: Path
    shard: str
    actions: list[TensorAction]
    device: str
    threads: int | None = None


def check_paths(source: Path, destination: Path) -> None:
    src, dst = source.resolve(), destination.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise QtoolsError(f"output {destination} must not be inside the source {source} or contain it")


def check_device(device: str) -> None:
    """Refuse a device the conversion cannot run on: `cpu`, `cuda` or `cuda:N` with that GPU present."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device == "cpu":
        return
    if match is None:
        raise QtoolsError(f"device {device!r} is not supported: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise QtoolsError("--device cuda asked for, but torch sees no CUDA device")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise QtoolsError(f"device {device!r}: torch sees only {torch.cuda.device_count()} CUDA device(s)")


def _convert_job(job: ShardJob, on_bytes: Callable[[int], None] | None) -> ShardRecord:
    """Convert one shard and save its record; the source shard must not change while it is read."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    source = job.source / job.shard
    before = source_identity(source)
    record = convert_shard(source, job.destination / job.shard, job.actions, job.device, on_bytes, before)
    if source_identity(source) != before:
        (job.destination / job.shard).unlink(missing_ok=True)
        raise QtoolsError(f"{source}: changed while it was being converted; rerun once nothing writes to it")
    save_record(job.destination, record)
    return record


def _cores() -> int:
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def worker_count(requested: int, shards: int, source_bytes: int) -> int:
    """Worker processes for converting `shards` shards: `requested`, or `default_workers` for 0; never more than
    there are shards."""
    if requested <= 0:
        return default_workers(shards, source_bytes)
    return max(1, min(requested, shards))


def _convert_shards(
    checkpoint: Checkpoint,
    destination: Path,
    plan: ConversionPlan,
    shards: list[str],
    workers: int,
    device: str,
    hooks: ProgressHooks,
) -> list[ShardRecord]:
    def job(shard: str, threads: int | None = None) -> ShardJob:
        return ShardJob(checkpoint.root, destination, shard, plan.actions[shard], device, threads)

    def done(shard: str, _: ShardRecord) -> None:
        if hooks.on_shard_done:
            hooks.on_shard_done(shard)

    # Forking skips re-importing torch in every worker (seconds each); CUDA cannot survive a fork, so GPU runs
    # and platforms without fork spawn fresh interpreters.
    forkable = not device.startswith("cuda") and "fork" in get_all_start_methods()
    try:
        if workers <= 1:
            records = []
            for shard in shards:
                records.append(_convert_job(job(shard), hooks.on_bytes))
                done(shard, records[-1])
            return records
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = {shard: job(shard, threads) for shard in shards}
        results = run_jobs(_convert_job, jobs, workers, "fork" if forkable else "spawn", hooks.on_bytes, done)
        return [results[shard] for shard in shards]
    except BaseException:
        # A stopped worker or an interrupt leaves half-written shards behind; they are qtools's own files.
        for shard in shards:
            (destination / f"{shard}.partial").unlink(missing_ok=True)
        raise


# Below this much work, starting worker processes (each imports torch) costs more than it saves.
_WORKERS_WORTH_IT_BYTES = 1 << 30


def default_workers(shards: int, source_bytes: int) -> int:
    """One single-threaded worker per core of this rank (up to the shards at hand): small torch ops scale far
    better across processes than across intra-op threads, and one worker's I/O overlaps another's arithmetic."""
    if source_bytes < _WORKERS_WORTH_IT_BYTES:
        return 1
    return max(1, min(_cores(), shards))


def _copy_file(source: Path, target: Path) -> None:
    """Copy one non-weight file atomically; on failure (a full disk) remove the partial copy and say so."""
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, partial)
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise QtoolsError(f"{target}: write failed while copying it from the source ({error.strerror})") from error


def finalize_checkpoint(
    checkpoint: Checkpoint,
    destination: Path,
    plan: ConversionPlan,
    recipe: Recipe,
    extras: list[Path],
    index_metadata: dict | None = None,
) -> int:
    """Write config.json with its quantization_config, copy every non-weight file, then the index (last, its
    metadata extended by `index_metadata`); returns the output shards' bytes."""
    records = {}
    for shard in checkpoint.shard_names:
        record = finished_record(destination, shard)
        if record is None or source_change(record, source_identity(checkpoint.root / shard)):
            raise QtoolsError(f"{destination / shard}: missing or does not match its record; rerun to finish it")
        records[shard] = record
    for relative in extras:
        if relative.as_posix() != "config.json":
            _copy_file(checkpoint.root / relative, destination / relative)
    config = dict(checkpoint.config)
    num_layers = int(config.get("num_hidden_layers", 0))
    config["quantization_config"] = format_for_recipe(recipe).quantization_config(
        plan.kept_linear_modules, num_layers, compressed_tensors_version()
    )
    write_json(destination / "config.json", config)
    weight_map = {name: shard for shard, rec in records.items() for name in rec.tensors}
    total = sum(nbytes for rec in records.values() for nbytes in rec.tensors.values())
    write_index(destination, weight_map, {"total_size": total, "qtools_version": __version__, **(index_metadata or {})})
    return sum(rec.size for rec in records.values())


def compressed_tensors_version() -> str:
    try:
        from importlib.metadata import version

        return version("compressed-tensors")
    except Exception:
        return "0.19.0"


def _shards_to_convert(checkpoint: Checkpoint, destination: Path, shards: list[str], hooks: ProgressHooks) -> list[str]:
    """The shards without a finished output converted from the source shard as it is now. Their records, if
    any, are dropped at once, so a shard has a record exactly when its output is finished and current."""
    todo = []
    for shard in shards:
        record = finished_record(destination, shard)
        change = None if record is None else source_change(record, source_identity(checkpoint.root / shard))
        if change:
            hooks.warn(f"{checkpoint.root / shard}: {change}: converting it again")
        if record is None or change:
            record_path(destination, shard).unlink(missing_ok=True)
            todo.append(shard)
    return todo


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

    Everything that can be checked without reading tensor data is checked before anything is written: the
    device, the paths, every file of the source (links must stay inside it), the index against config.json and
    the shard headers. The run then holds an exclusive lock on `destination`. Under torchrun (WORLD_SIZE > 1)
    every rank converts its share of the shards and rank 0 writes the index after all ranks finish. Raises
    QtoolsError on bad input, naming the file or tensor, and ConversionInterrupted on Ctrl-C.
    """
    source, destination = Path(source), Path(destination)
    hooks = hooks or ProgressHooks()
    started = time.perf_counter()
    if recipe.calibrated:
        raise QtoolsError(
            f"recipe method {recipe.method!r} needs calibration data: run `qtools convert` with --calibration "
            "(qtools.gptq.convert_gptq), not the model-free converter"
        )
    check_device(device)
    check_paths(source, destination)
    checkpoint = Checkpoint.open(source)
    plan = plan_conversion(checkpoint, recipe)
    extras = checkpoint.extra_files()
    outputs = sorted({*checkpoint.shard_names, "config.json", INDEX_NAME, *(e.as_posix() for e in extras)})
    identity = {
        "source": str(source.resolve()),
        "source_fingerprint": source_fingerprint(checkpoint),
        "recipe": json.loads(recipe.fingerprint()),
    }
    try:
        with distributed.session(device) as group, ExitStack() as held:

            def prepare() -> None:
                refuse_foreign_destination(destination)
                held.enter_context(destination_lock(destination))
                prepare_destination(destination, identity, outputs, overwrite)

            group.run_on_rank0_then_share(prepare)
            mine = group.my_shards({s: checkpoint.shard_bytes(s) for s in checkpoint.shard_names})
            todo = _shards_to_convert(checkpoint, destination, mine, hooks)
            todo_bytes = sum(plan.shard_source_bytes(s) for s in todo)
            count = worker_count(workers, len(todo), todo_bytes) if todo else 0
            if count > _cores():
                hooks.warn(
                    f"{count} worker processes on {_cores()} core(s): they compete for the CPU; "
                    f"--workers {_cores()} or fewer is usually faster"
                )
            summary = ConvertSummary(
                destination, len(checkpoint.shard_names), shards_reused=len(mine) - len(todo), workers=count
            )
            if hooks.on_start:
                hooks.on_start(todo_bytes, len(todo), summary.shards_reused)
            records = group.run_everywhere(
                lambda: _convert_shards(checkpoint, destination, plan, todo, count, device, hooks)
            )
            output_bytes = group.run_on_rank0_then_share(
                lambda: finalize_checkpoint(checkpoint, destination, plan, recipe, extras)
            )
    except KeyboardInterrupt:
        finished = sum(record_path(destination, shard).exists() for shard in checkpoint.shard_names)
        raise ConversionInterrupted(finished, len(checkpoint.shard_names)) from None
    summary.records = records
    summary.shards_converted = len(records)
    summary.tensors_converted = sum(r.converted for r in records)
    summary.tensors_kept = sum(r.kept for r in records)
    summary.source_bytes = sum(r.source_bytes for r in records)
    summary.output_bytes = output_bytes
    summary.seconds = time.perf_counter() - started
    return summary
