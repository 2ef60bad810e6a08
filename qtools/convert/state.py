"""The resume state an output checkpoint carries in `DST/.qtools/`.

`plan.json` names the source, its fingerprint and the recipe; `shards/<file>.json` records each finished output
shard's size and digest (`shard_digest`: SHA-256 over the header and each tensor's XXH3-64). A rerun trusts
a shard only when its record exists and the file still matches it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from qtools.checkpoint.hf import INDEX_NAME, STATE_DIR, Checkpoint
from qtools.checkpoint.safetensors_io import shard_digest, write_atomic
from qtools.convert.shard import ShardRecord
from qtools.errors import QtoolsError


def source_fingerprint(checkpoint: Checkpoint) -> str:
    """Cheap identity of a source checkpoint: its index/config bytes and its shards' names and sizes."""
    digest = hashlib.sha256()
    for name in (INDEX_NAME, "config.json"):
        path = checkpoint.root / name
        if path.exists():
            digest.update(path.read_bytes())
    for shard in checkpoint.shard_names:
        digest.update(f"{shard}:{checkpoint.shard_bytes(shard)}".encode())
    return digest.hexdigest()


def prepare_destination(destination: Path, run_identity: dict, overwrite: bool) -> None:
    """Create or reuse `destination` for a run; refuse directories holding anything qtools did not write.

    A directory left by a run with a different identity (source, recipe) is cleared only with `overwrite`.
    """
    state = destination / STATE_DIR
    plan_path = state / "plan.json"
    if destination.exists() and not destination.is_dir():
        raise QtoolsError(f"{destination}: exists and is not a directory")
    if destination.exists() and any(destination.iterdir()):
        if not plan_path.exists():
            raise QtoolsError(
                f"{destination}: holds files qtools did not write; choose an empty or new output directory "
                "(nothing was changed)"
            )
        previous = json.loads(plan_path.read_text())
        if previous != run_identity:
            if not overwrite:
                changed = sorted(k for k in run_identity if previous.get(k) != run_identity[k])
                raise QtoolsError(
                    f"{destination}: holds a conversion with a different {', '.join(changed)}; "
                    "pass --overwrite to discard it and start over"
                )
            shutil.rmtree(destination)
        elif overwrite:
            shutil.rmtree(destination)
    (state / "shards").mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        write_atomic(plan_path, json.dumps(run_identity, indent=2, sort_keys=True).encode())


def record_path(destination: Path, shard: str) -> Path:
    return destination / STATE_DIR / "shards" / f"{shard}.json"


def save_record(destination: Path, record: ShardRecord) -> None:
    write_atomic(record_path(destination, record.file), json.dumps(dataclasses.asdict(record), indent=1).encode())


def load_record(destination: Path, shard: str) -> ShardRecord | None:
    path = record_path(destination, shard)
    if not path.exists():
        return None
    try:
        return ShardRecord(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError):
        return None


def finished_record(destination: Path, shard: str) -> ShardRecord | None:
    """The shard's record if the output file exists and matches its recorded size and digest, else None."""
    record = load_record(destination, shard)
    path = destination / shard
    if record is None or not path.is_file() or path.stat().st_size != record.size:
        return None
    try:
        return record if shard_digest(path) == record.sha256 else None
    except QtoolsError:
        return None
