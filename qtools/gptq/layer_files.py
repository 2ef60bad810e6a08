"""Finished layers of a calibrated conversion, the state it resumes from: `DST/.qtools/layers/`.

Layer L's quantised tensors go to `layer-0000L.safetensors` (atomically), then its record `layer-0000L.json`
(the file's `shard_digest`, size and the layer's calibration report). A layer is finished exactly when its record
exists and the file matches it, so a run killed at any point redoes at most the layer it was in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qtools.checkpoint.hf import STATE_DIR
from qtools.checkpoint.safetensors_io import SafetensorsReader, save_tensors, shard_digest, write_atomic
from qtools.errors import QtoolsError

LAYERS_DIR = "layers"


def layers_dir(destination: Path) -> Path:
    return destination / STATE_DIR / LAYERS_DIR


def layer_file(destination: Path, layer: int) -> Path:
    return layers_dir(destination) / f"layer-{layer:05d}.safetensors"


def _record_file(destination: Path, layer: int) -> Path:
    return layers_dir(destination) / f"layer-{layer:05d}.json"


def save_layer(destination: Path, layer: int, tensors: dict[str, torch.Tensor], report: dict) -> None:
    """Write layer `layer`'s quantised tensors, then its record (last: the layer counts as finished from then)."""
    path = layer_file(destination, layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = save_tensors(path, dict(sorted(tensors.items())), {"format": "pt"})
    record = {"sha256": digest, "size": path.stat().st_size, "report": report}
    write_atomic(_record_file(destination, layer), json.dumps(record, indent=1, sort_keys=True).encode())


def finished_layer(destination: Path, layer: int) -> dict | None:
    """The report of layer `layer` if it is finished (record present, file intact), else None."""
    record_path, path = _record_file(destination, layer), layer_file(destination, layer)
    try:
        record = json.loads(record_path.read_text())
        if not path.is_file() or path.stat().st_size != record["size"]:
            return None
        return record["report"] if shard_digest(path) == record["sha256"] else None
    except (OSError, ValueError, KeyError, TypeError, QtoolsError):
        return None


def load_layer_tensors(destination: Path, layer: int) -> dict[str, torch.Tensor]:
    """The quantised tensors of a finished layer, by checkpoint name."""
    reader = SafetensorsReader(layer_file(destination, layer))
    return {name: reader.read(name) for name in sorted(reader.tensors)}
