"""Converting one shard: stream its tensors into an output shard of the same name.

Tensors are visited in the order they lie in the source file, so the source is read once, front to back.
Quantised weights are read 128 rows at a time: each row of blocks gives its scales and codes at once, and the
codes go straight to their planned place in the output (the layout is fixed before any data is written).
Passthrough tensors are copied byte for byte, each chunk checked for NaN/Inf on its way through (a source that
holds any is refused before its output shard is finished). Memory stays at one row of blocks plus one copy chunk,
whatever the tensor or shard size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter, TensorInfo
from qtools.convert.plan import TensorAction
from qtools.errors import QtoolsError
from qtools.formats.fp8_block import SCALE_DTYPES
from qtools.numerics.finite import all_finite
from qtools.numerics.fp8 import NonFiniteWeightError, block_row_scales, quantize_block_row


@dataclass
class ShardRecord:
    """A finished output shard: its size, `shard_digest` and the tensors (name -> bytes) it holds."""

    file: str
    size: int
    sha256: str
    tensors: dict[str, int]
    source_bytes: int
    converted: int
    kept: int


def _quantize_tensor(
    reader: SafetensorsReader,
    writer: StreamingWriter,
    action: TensorAction,
    block: tuple[int, int],
    scale_dtype: torch.dtype,
    device: str,
    on_bytes: Callable[[int], None] | None,
) -> None:
    info = action.source
    codes_spec, scale_spec = action.outputs
    bo, bi = block
    scale_rows = []
    for first in range(0, info.shape[0], bo):
        rows = reader.read_rows(info.name, first, bo).to(device)
        # Codes are computed with the scale exactly as stored, so a bf16 scale is rounded first.
        scales = block_row_scales(rows, bi).to(scale_dtype)
        writer.write_part(codes_spec.name, quantize_block_row(rows, scales.float(), bi).cpu())
        scale_rows.append(scales.cpu())
        _report(on_bytes, rows.numel() * rows.element_size())
    writer.write(scale_spec.name, torch.stack(scale_rows) if scale_rows else torch.empty(scale_spec.shape))


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
    specs = [spec for action in actions for spec in action.outputs]
    writer = StreamingWriter(destination, specs, metadata={"format": "pt"})
    try:
        for action in sorted(actions, key=lambda a: a.source.start):
            info = action.source
            if not action.quantize:
                writer.copy_part(info.name, source, info.start, info.nbytes, check_chunk=_finite_check(source, info))
                _report(on_bytes, info.nbytes)
                continue
            try:
                _quantize_tensor(reader, writer, action, block, SCALE_DTYPES[scale_dtype], device, on_bytes)
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


def _finite_check(source: Path, info: TensorInfo) -> Callable[[memoryview], None] | None:
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
