"""A Hugging Face checkpoint directory read lazily: config, index, shard headers, non-weight files.

Nothing here loads tensor data; `SafetensorsReader` reads single tensors on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.safetensors_io import SafetensorsReader, TensorInfo, read_header
from qtools.errors import QtoolsError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Directory qtools keeps its own state in, inside an output checkpoint.
STATE_DIR = ".qtools"


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    except json.JSONDecodeError as error:
        raise QtoolsError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise QtoolsError(f"{path}: expected a JSON object")
    return data


@dataclass
class Checkpoint:
    """A checkpoint directory: `weight_map` (tensor name -> shard file name) and the shard files' headers."""

    root: Path
    weight_map: dict[str, str]
    shard_names: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path) -> Checkpoint:
        """Open a checkpoint directory holding an index and shards, or a single `model.safetensors`.

        Raises QtoolsError when the directory, the index or a shard it names is missing or unsafe.
        """
        root = Path(root)
        if not root.is_dir():
            raise QtoolsError(f"{root}: not a directory")
        index_path = root / INDEX_NAME
        if index_path.exists():
            index = _load_json(index_path)
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise QtoolsError(f"{index_path}: no weight_map")
        elif (root / SINGLE_NAME).exists():
            weight_map = {name: SINGLE_NAME for name in read_header(root / SINGLE_NAME)[0]}
        else:
            raise QtoolsError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME}: not a safetensors checkpoint")
        shard_names = sorted(set(weight_map.values()))
        resolved_root = root.resolve()
        for shard in shard_names:
            path = (root / shard).resolve()
            if not isinstance(shard, str) or Path(shard).is_absolute() or path.parent != resolved_root:
                raise QtoolsError(f"{index_path}: shard {shard!r} is outside the checkpoint directory")
            if not path.is_file():
                raise QtoolsError(f"{index_path}: names shard {shard!r}, which does not exist")
        return cls(root=root, weight_map=dict(weight_map), shard_names=shard_names)

    @cached_property
    def config(self) -> dict:
        """config.json as a dict ({} when absent)."""
        path = self.root / "config.json"
        return _load_json(path) if path.exists() else {}

    @cached_property
    def model_config(self) -> ModelConfig:
        """config.json parsed as a Qwen3-MoE model; QtoolsError naming the file and key when absent or unusable."""
        path = self.root / "config.json"
        if not path.exists():
            raise QtoolsError(
                f"{path}: missing; qtools needs the model's config.json (from its release) beside the weights"
            )
        return ModelConfig.from_dict(self.config, source=str(path))

    def reader(self, shard: str) -> SafetensorsReader:
        """A reader for one shard; validates its header and that it holds every tensor the index gives it."""
        reader = SafetensorsReader(self.root / shard)
        missing = [name for name, file in self.weight_map.items() if file == shard and name not in reader.tensors]
        if missing:
            raise QtoolsError(
                f"{self.root / shard}: index lists {len(missing)} tensor(s) this shard does not hold, "
                f"e.g. {missing[0]!r}"
            )
        return reader

    def tensor_infos(self) -> dict[str, TensorInfo]:
        """Header entries of every indexed tensor, reading only shard headers."""
        infos: dict[str, TensorInfo] = {}
        for shard in self.shard_names:
            tensors = self.reader(shard).tensors
            infos.update({name: tensors[name] for name, file in self.weight_map.items() if file == shard})
        return infos

    def shard_bytes(self, shard: str) -> int:
        return (self.root / shard).stat().st_size

    def extra_files(self) -> list[Path]:
        """Every non-weight file (config, tokenizer, generation_config, template, licence, README...), relative."""
        skip = {INDEX_NAME, *self.shard_names}
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = path.relative_to(self.root)
            if relative.parts[0].startswith(".") or not path.is_file():
                continue
            if relative.name in skip or relative.suffix == ".safetensors" or path.name.endswith(".partial"):
                continue
            found.append(relative)
        return found
