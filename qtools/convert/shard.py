"""Converting one shard: stream its tensors into an output shard of the same name, tensor by tensor.

Quantised weights are read 128 rows at a time, twice: once for the block scales (written first, since the
widest dtypes lead the file) and once for the codes. Passthrough tensors are copied byte for byte. Memory stays
at one row of blocks plus one copy chunk, whatever the tensor or shard size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter
from qtools.convert.plan import TensorAction
from qtools.errors import QtoolsError
from qtools.formats.fp8_block import SCALE_DTYPES
from qtools.numerics.fp8 import NonFiniteWeightError, block_row_scales, quantize_block_row


@dataclass
class ShardRecord:
    """A finished output shard: its size, SHA-256 and the tensors (name -> bytes) it holds."""

    file: str
    size: int
    sha256: str
    tensors: dict[str, int]
    source_bytes: int
    converted: int
    kept: int


def _scales(reader: SafetensorsReader, action: TensorAction, block, device) -> torch.Tensor:
    info = action.source
    bo, bi = block
    rows = [
        block_row_scales(reader.read_rows(info.name, first, bo).to(device), bi) for first in range(0, info.shape[0], bo)
    ]
    return torch.stack(rows) if rows else torch.empty(0, (info.shape[1] + bi - 1) // bi)


def convert_shard(
    source: Path,
    destination: Path,
    actions: list[TensorAction],
    block: tuple[int, int],
    scale_dtype: str,
    device: str = "cpu",
    on_bytes: Callable[[int], None] | None = None,
) -> ShardRecord:
    """Convert the shard file `source` into `destination` (written atomically) following `actions`."""
    reader = SafetensorsReader(source)
    producers: dict[str, tuple[str, TensorAction]] = {}
    for action in actions:
        for index, spec in enumerate(action.outputs):
            producers[spec.name] = ("scale" if index == 1 else "main", action)
    specs = [spec for action in actions for spec in action.outputs]
    writer = StreamingWriter(destination, specs, metadata={"format": "pt"})
    scales: dict[str, torch.Tensor] = {}
    bo, bi = block
    try:
        while (spec := writer.pending) is not None:
            role, action = producers[spec.name]
            info = action.source
            try:
                if not action.quantize:
                    writer.copy_part(spec.name, source, info.start, info.nbytes)
                    _report(on_bytes, info.nbytes)
                elif role == "scale":
                    # Codes are computed with the scale exactly as stored, so a bf16 scale is rounded first.
                    stored = _scales(reader, action, block, device).to(SCALE_DTYPES[scale_dtype])
                    scales[info.name] = stored.float()
                    writer.write(spec.name, stored.cpu())
                else:
                    row_scales = scales.pop(info.name)
                    for block_row, first in enumerate(range(0, info.shape[0], bo)):
                        rows = reader.read_rows(info.name, first, bo).to(device)
                        writer.write_part(spec.name, quantize_block_row(rows, row_scales[block_row], bi).cpu())
                        _report(on_bytes, rows.numel() * rows.element_size())
            except NonFiniteWeightError as error:
                raise QtoolsError(f"{source}: tensor {info.name!r}: {error}") from error
        sha256 = writer.close()
    except BaseException:
        writer.abort()
        raise
    return ShardRecord(
        file=destination.name,
        size=writer.size,
        sha256=sha256,
        tensors={spec.name: spec.nbytes for spec in specs},
        source_bytes=sum(a.source.nbytes for a in actions),
        converted=sum(a.quantize for a in actions),
        kept=sum(not a.quantize for a in actions),
    )


def _report(on_bytes: Callable[[int], None] | None, nbytes: int) -> None:
    if on_bytes is not None:
        on_bytes(nbytes)
