"""Converting one shard: stream its tensors into an output shard of the same name.

Tensors are visited in the order they lie in the source file, so the source is read once, front to back.
Quantised weights are taken a few rows at a time (`LinearLayout.rows_per_step`: one row of FP8 blocks, 128 rows
of INT4 groups; on CPU as views of a memory-mapped window of the tensor, for a GPU read ahead into pinned buffers,
see `qtools.convert.prefetch`), each step giving the following rows of every output tensor at once (codes and
scales, computed in reused `Workspace` buffers), which go straight to their planned place in the output (the
layout is fixed before any data is written). Passthrough tensors are copied byte for byte, each chunk checked for
NaN/Inf on its way through (a source that holds any is refused before its output shard is finished). Memory stays
at one row of blocks, one mapped window and one copy chunk, whatever the tensor or shard size. Every byte read
is hashed on the way (XXH3-64 per tensor), so the record of a shard says exactly which source data it was made
from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import xxhash

from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter, TensorInfo
from qtools.convert.plan import TensorAction
from qtools.convert.prefetch import Step, map_rows_inline, prefetch_rows, slab_buffers
from qtools.errors import QtoolsError
from qtools.numerics.finite import NonFiniteWeightError, all_finite
from qtools.numerics.workspace import Workspace

# Slabs in flight when reading ahead: one being quantised, one being read.
PREFETCH_DEPTH = 2


@dataclass
class ShardRecord:
    """A finished output shard: its size, `shard_digest` and the tensors (name -> bytes) it holds; `source` is the
    identity of the source shard it was converted from (see `state.source_identity`) plus `read_digest`, a
    SHA-256 over the XXH3-64 of each source tensor's bytes as read, in file order."""

    file: str
    size: int
    sha256: str
    tensors: dict[str, int]
    source_bytes: int
    converted: int
    kept: int
    source: dict[str, int | str] = field(default_factory=dict)


def _quantize_tensor(
    slabs: Iterator[torch.Tensor],
    writer: StreamingWriter,
    action: TensorAction,
    device: str,
    workspace: Workspace,
    on_bytes: Callable[[int], None] | None,
) -> bytes:
    """Quantise one weight, taking its row slabs from `slabs`, into its planned tensors; returns the XXH3-64 of
    the source bytes read."""
    info, layout = action.source, action.layout
    module = info.name.removesuffix(".weight")
    read = xxhash.xxh3_64()
    for _ in range(0, info.shape[0], layout.rows_per_step):
        rows = next(slabs)
        read.update(rows.view(-1).view(torch.uint8).numpy())
        for suffix, part in layout.quantize_rows(rows.to(device, non_blocking=True), workspace).items():
            # A synchronous copy to the host (a no-op on CPU): the slab's buffer may be refilled after this.
            writer.write_part(f"{module}.{suffix}", part.cpu())
        _report(on_bytes, rows.numel() * rows.element_size())
    for suffix, tensor in layout.constant_tensors(info.shape).items():
        writer.write(f"{module}.{suffix}", tensor)
    return read.digest()


def _slab_steps(actions: list[TensorAction]) -> list[Step]:
    """(name, first row, rows) of every slab the quantised tensors are read in, in file order."""
    return [
        (action.source.name, first, action.layout.rows_per_step)
        for action in actions
        if action.quantize
        for first in range(0, action.source.shape[0], action.layout.rows_per_step)
    ]


def _slab_bytes(actions: list[TensorAction]) -> int:
    return max(
        (a.layout.rows_per_step * (a.source.nbytes // max(a.source.shape[0], 1)) for a in actions if a.quantize),
        default=0,
    )


def convert_shard(
    source: Path,
    destination: Path,
    actions: list[TensorAction],
    device: str = "cpu",
    on_bytes: Callable[[int], None] | None = None,
    source_identity: dict[str, int | str] | None = None,
    prefetch: bool | None = None,
) -> ShardRecord:
    """Convert the shard file `source` into `destination` (written atomically) following `actions`.

    `source_identity` (the source shard's, taken before reading it) goes into the record with the digest of
    what was read. `prefetch` (default: on for CUDA devices) reads weight rows ahead in a background thread
    into `PREFETCH_DEPTH` buffers, pinned for a GPU, so reads overlap quantisation; otherwise each slab is
    memory-mapped when it is needed (no copy). The output is the same either way.
    """
    reader = SafetensorsReader(source)
    actions = sorted(actions, key=lambda a: a.source.start)
    specs = [spec for action in actions for spec in action.outputs]
    gpu = device.startswith("cuda")
    prefetch = gpu if prefetch is None else prefetch
    steps = _slab_steps(actions)
    if prefetch:
        pin = gpu and torch.cuda.is_available()
        slabs = prefetch_rows(reader, steps, slab_buffers(_slab_bytes(actions), PREFETCH_DEPTH, pin))
    else:
        slabs = map_rows_inline(reader, steps)
    workspace = Workspace(device)
    writer = StreamingWriter(destination, specs, metadata={"format": "pt"})
    read_digest = hashlib.sha256()
    try:
        for action in actions:
            info = action.source
            if not action.quantize:
                writer.copy_part(info.name, source, info.start, info.nbytes, check_chunk=finite_check(source, info))
                # A copied tensor's bytes are the source's, so the writer's digest of them is the read digest.
                read_digest.update(writer.tensor_digest(info.name))
                _report(on_bytes, info.nbytes)
                continue
            try:
                read_digest.update(_quantize_tensor(slabs, writer, action, device, workspace, on_bytes))
            except NonFiniteWeightError as error:
                raise QtoolsError(f"{source}: tensor {info.name!r}: {error}") from error
        sha256 = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        slabs.close()
    return ShardRecord(
        file=destination.name,
        size=writer.size,
        sha256=sha256,
        tensors={spec.name: spec.nbytes for spec in specs},
        source_bytes=sum(a.source.nbytes for a in actions),
        converted=sum(a.quantize for a in actions),
        kept=sum(not a.quantize for a in actions),
        source={**(source_identity or {}), "read_digest": read_digest.hexdigest()},
    )


def finite_check(source: Path, info: TensorInfo) -> Callable[[memoryview], None] | None:
    """A `copy_part` inspector refusing NaN/Inf in a floating-point tensor kept as it is, None for other dtypes."""
    if not info.dtype.is_floating_point:
        return None

    def check(chunk: memoryview) -> None:
        if not all_finite(torch.frombuffer(chunk, dtype=info.dtype)):
            raise QtoolsError(
                f"{source}: tensor {info.name!r} holds NaN or Inf values; a kept tensor is copied as it is, "
                "so the source is likely corrupt"
            )

    return check


def _report(on_bytes: Callable[[int], None] | None, nbytes: int) -> None:
    if on_bytes is not None:
        on_bytes(nbytes)
