"""The output shards of a calibrated conversion: the source's shards, tensor for tensor, with each quantised
weight's tensors taken from its finished layer file.

Each output shard holds what the model-free converter's would (`ConversionPlan`: same names, dtypes, shapes,
same file layout); passthrough tensors are copied byte for byte from the source (checked for NaN/Inf on the
way), quantised ones written from `DST/.qtools/layers/`. Each shard gets the record the converter's shards get,
so `finalize_checkpoint` writes config, extras and index the same way.
"""

from __future__ import annotations

from pathlib import Path

from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.qwen3_moe import layer_and_expert
from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter
from qtools.checkpoint.writer import PT_METADATA
from qtools.convert.plan import ConversionPlan
from qtools.convert.shard import ShardRecord, finite_check
from qtools.convert.state import save_record, source_identity
from qtools.errors import QtoolsError
from qtools.gptq.layer_files import layer_file


def write_shard(checkpoint: Checkpoint, destination: Path, plan: ConversionPlan, shard: str) -> ShardRecord:
    """Write output shard `shard` (atomically) and its record; every layer it holds quantised tensors of must be
    finished."""
    source = checkpoint.root / shard
    before = source_identity(source)
    actions = plan.actions[shard]
    specs = [spec for action in actions for spec in action.outputs]
    writer = StreamingWriter(destination / shard, specs, PT_METADATA)
    readers: dict[int, SafetensorsReader] = {}
    try:
        for action in sorted(actions, key=lambda a: a.source.start):
            info = action.source
            if not action.quantize:
                writer.copy_part(info.name, source, info.start, info.nbytes, check_chunk=finite_check(source, info))
                continue
            layer, _ = layer_and_expert(info.name)
            if layer not in readers:
                readers[layer] = SafetensorsReader(layer_file(destination, layer))
            for spec in action.outputs:
                writer.write(spec.name, readers[layer].read(spec.name))
        sha256 = writer.close()
    except BaseException:
        writer.abort()
        raise
    if source_identity(source) != before:
        (destination / shard).unlink(missing_ok=True)
        raise QtoolsError(f"{source}: changed while it was being converted; rerun once nothing writes to it")
    record = ShardRecord(
        file=shard,
        size=writer.size,
        sha256=sha256,
        tensors={spec.name: spec.nbytes for spec in specs},
        source_bytes=sum(a.source.nbytes for a in actions),
        converted=sum(a.quantize for a in actions),
        kept=sum(not a.quantize for a in actions),
        source=before,
    )
    save_record(destination, record)
    return record
