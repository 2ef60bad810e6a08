"""A Hugging Face checkpoint directory read lazily: config, index, shard headers, non-weight files.

Nothing here loads tensor data; `SafetensorsReader` reads single tensors on demand. Every file is read through
one rule: it must be a regular file whose real path lies inside the checkpoint directory or, for a snapshot of
the Hugging Face hub cache (`models--ORG--NAME/snapshots/REV/* -> ../../blobs/SHA`), inside that repository's
`blobs/`. Anything else (a link leaving the checkpoint, a dangling link, a pipe) is refused, naming the link and
its target, so a secret or `/proc/self/environ` never ends up in a converted checkpoint.
"""

from __future__ import annotations

import json
import os
import stat
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
# The report a calibrated conversion writes into STATE_DIR: calibration data, per-expert tokens, fallbacks.
CALIBRATION_REPORT = "calibration.json"


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QtoolsError(f"{path}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise QtoolsError(f"{path}: not valid JSON (nested too deeply)") from error
    if not isinstance(data, dict):
        raise QtoolsError(f"{path}: expected a JSON object")
    return data


def _allowed_roots(root: Path) -> list[Path]:
    """Where the files of checkpoint `root` may really live: the directory itself, plus `blobs/` for a
    snapshot of the Hugging Face hub cache."""
    resolved = root.resolve()
    blobs = resolved.parent.parent / "blobs"
    if resolved.parent.name == "snapshots" and blobs.is_dir():
        return [resolved, blobs.resolve()]
    return [resolved]


def _link_text(path: Path) -> str:
    return f" links to {os.readlink(path)}" if path.is_symlink() else ""


def _regular_file(root: Path, relative: str | Path, allowed: list[Path]) -> Path:
    """The real path of `root / relative`, refusing anything but a regular file inside `allowed`."""
    path = root / relative
    try:
        resolved = path.resolve(strict=True)
        mode = resolved.stat().st_mode
    except FileNotFoundError as error:
        if path.is_symlink():
            raise QtoolsError(f"{path}{_link_text(path)}, which does not exist: remove the link") from error
        raise QtoolsError(f"{path}: does not exist") from error
    except (OSError, RuntimeError) as error:
        raise QtoolsError(f"{path}{_link_text(path)}: cannot resolve it ({error})") from error
    if not any(resolved == base or base in resolved.parents for base in allowed):
        where = " or its hub cache's blobs/" if len(allowed) > 1 else ""
        raise QtoolsError(
            f"{path}{_link_text(path)} ({resolved}), outside the checkpoint directory{where}: refusing to read or "
            "copy it; copy the file into the checkpoint if it belongs there"
        )
    if not stat.S_ISREG(mode):
        raise QtoolsError(f"{path}{_link_text(path)}: not a regular file; refusing to read or copy it")
    return resolved


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _weight_map(index_path: Path, index: dict) -> dict[str, str]:
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise QtoolsError(f"{index_path}: weight_map must be a non-empty object (tensor name -> shard file name)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise QtoolsError(f"{index_path}: weight_map[{name!r}] is {shard!r}, not a shard file name")
        if not _is_plain_name(shard):
            raise QtoolsError(
                f"{index_path}: shard {shard!r} (for {name!r}) is not a plain file name; shards sit in the "
                "checkpoint directory itself, and a path could read outside the checkpoint directory"
            )
    return weight_map


@dataclass
class Checkpoint:
    """A checkpoint directory: `weight_map` (tensor name -> shard file name) and the shard files' headers."""

    root: Path
    weight_map: dict[str, str]
    shard_names: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path) -> Checkpoint:
        """Open a checkpoint directory holding an index and shards, or a single `model.safetensors`; a snapshot
        of the Hugging Face hub cache (files linked into the repository's `blobs/`) is one too.

        Raises QtoolsError when the directory, the index or a shard it names is missing or unsafe.
        """
        root = Path(root)
        if not root.is_dir():
            raise QtoolsError(f"{root}: not a directory")
        allowed = _allowed_roots(root)
        index_path = root / INDEX_NAME
        if index_path.exists() or index_path.is_symlink():
            weight_map = _weight_map(index_path, _load_json(_regular_file(root, INDEX_NAME, allowed)))
        elif (root / SINGLE_NAME).exists() or (root / SINGLE_NAME).is_symlink():
            header = read_header(_regular_file(root, SINGLE_NAME, allowed))[0]
            weight_map = dict.fromkeys(header, SINGLE_NAME)
        else:
            raise QtoolsError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME}: not a safetensors checkpoint")
        shard_names = sorted(set(weight_map.values()))
        for shard in shard_names:
            if not (root / shard).exists() and not (root / shard).is_symlink():
                raise QtoolsError(f"{index_path}: names shard {shard!r}, which does not exist")
            _regular_file(root, shard, allowed)
        return cls(root=root, weight_map=dict(weight_map), shard_names=shard_names)

    @cached_property
    def config(self) -> dict:
        """config.json as a dict ({} when absent)."""
        path = self.root / "config.json"
        if not path.exists() and not path.is_symlink():
            return {}
        return _load_json(_regular_file(self.root, "config.json", _allowed_roots(self.root)))

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
        """Every non-weight file (config, tokenizer, generation_config, template, licence, README...), relative.

        Entries at the top level whose names start with a dot (`.git`, `.cache`) are left out. Raises QtoolsError,
        naming the entry, for one that is not a regular file inside the checkpoint (see the module docstring).
        """
        skip = {INDEX_NAME, *self.shard_names}
        allowed = _allowed_roots(self.root)
        found = []
        for directory, subdirectories, files in os.walk(self.root):
            here = Path(directory).relative_to(self.root)
            if here == Path("."):
                subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
                files = [f for f in files if not f.startswith(".")]
            # os.walk lists links to directories among the subdirectories without entering them.
            linked = [d for d in subdirectories if (Path(directory) / d).is_symlink()]
            for name in sorted([*files, *linked]):
                relative = here / name
                if name in skip or relative.suffix == ".safetensors" or name.endswith(".partial"):
                    continue
                _regular_file(self.root, relative, allowed)
                found.append(relative)
        return sorted(found)
