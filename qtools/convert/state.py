"""The resume state an output checkpoint carries in `DST/.qtools/`.

`plan.json` names the source, its fingerprint, the recipe and every file a run writes into DST (`outputs`).
`shards/<file>.json` records each finished output shard's size and digest (`shard_digest`: SHA-256 over the header
and each tensor's XXH3-64) and the identity of the source shard it came from (size, mtime_ns, inode, header
SHA-256, and a digest of every byte read while converting it). A rerun trusts a shard only when its record exists,
the file still matches it and the source shard is unchanged. `--overwrite` deletes only what `outputs` names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from qtools.checkpoint.hf import CALIBRATION_REPORT, INDEX_NAME, STATE_DIR, Checkpoint
from qtools.checkpoint.safetensors_io import read_raw_header, shard_digest, write_atomic
from qtools.convert.lock import LOCK_NAME
from qtools.convert.shard import ShardRecord
from qtools.errors import QtoolsError, some_names

PLAN_NAME = "plan.json"
# Work files of a calibrated (layer-by-layer) conversion: finished layers and spilled hidden states.
WORK_DIRS = ("layers", "hidden")


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


def source_identity(path: Path) -> dict[str, int | str]:
    """What tells one source shard file from another without reading its data: size, mtime_ns and inode of the
    file (a link's target) and the SHA-256 of its header. Another fine-tune copied to the same path changes at
    least the mtime; a rewrite with other tensors changes the header."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    return {
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "inode": info.st_ino,
        "header_sha256": hashlib.sha256(read_raw_header(path)).hexdigest(),
    }


def source_change(record: ShardRecord, identity: dict[str, int | str]) -> str | None:
    """Why a finished shard's record does not match the source shard's `identity` now, or None when it does."""
    if not record.source:
        return "its record does not say which source it was converted from"
    changed = [key for key, value in identity.items() if record.source.get(key) != value]
    return f"{', '.join(changed)} changed since it was converted" if changed else None


def _files_in(destination: Path) -> list[str]:
    """Every entry under `destination` but directories and qtools's own state, relative, POSIX style."""
    found = []
    for directory, subdirectories, files in os.walk(destination):
        here = Path(directory).relative_to(destination)
        if here == Path("."):
            subdirectories[:] = [d for d in subdirectories if d != STATE_DIR]
        linked = [d for d in subdirectories if (Path(directory) / d).is_symlink()]
        found += [(here / name).as_posix() for name in [*files, *linked]]
    return sorted(found)


def refuse_foreign_destination(destination: Path) -> None:
    """Refuse, changing nothing, an output path qtools cannot use or that holds files it did not write.

    An existing directory is accepted when empty, when it holds qtools's `plan.json`, or when it holds only the
    lock a run killed before writing its plan left behind.
    """
    if destination.is_symlink() and not destination.exists():
        raise QtoolsError(
            f"{destination}: a symbolic link to {os.readlink(destination)}, which does not exist; remove it or "
            "point it at a directory"
        )
    if not destination.exists():
        return
    if not destination.is_dir():
        raise QtoolsError(f"{destination}: exists and is not a directory")
    state = destination / STATE_DIR
    try:
        entries = [entry.name for entry in destination.iterdir()]
        if not entries or (state / PLAN_NAME).exists():
            return
        leftover = entries == [STATE_DIR] and all(path.name == LOCK_NAME or path.is_dir() for path in state.rglob("*"))
    except OSError as error:
        raise QtoolsError(f"{destination}: cannot read ({error.strerror})") from error
    if not leftover:
        raise QtoolsError(
            f"{destination}: holds files qtools did not write; choose an empty or new output directory "
            "(nothing was changed)"
        )


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _read_plan(destination: Path) -> dict:
    path = destination / STATE_DIR / PLAN_NAME
    problem = None
    try:
        plan = json.loads(path.read_text())
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    except (ValueError, RecursionError) as error:
        plan, problem = None, f"not valid JSON ({error})"
    if problem is None and not isinstance(plan, dict):
        problem = "not a JSON object"
    elif problem is None and not _is_names(plan.get("outputs", [])):
        problem = "its outputs are not a list of file names"
    if problem:
        raise QtoolsError(
            f"{path}: corrupt ({problem}); it is qtools's record of what it wrote in {destination}, so qtools "
            "cannot resume or clear that directory: delete it yourself or choose another output directory "
            "(nothing was changed)"
        )
    return plan


def _recorded_outputs(destination: Path, plan: dict) -> set[str]:
    if "outputs" in plan:
        return set(plan["outputs"])
    # A plan written before qtools recorded its outputs: the shards it has records of, config and index.
    records = (destination / STATE_DIR / "shards").glob("*.json")
    return {path.name.removesuffix(".json") for path in records} | {"config.json", INDEX_NAME}


def _clear(destination: Path, plan: dict) -> None:
    """Delete every file qtools's records name; refuse, naming them, when DST holds anything else."""
    recorded = _recorded_outputs(destination, plan)
    ours = recorded | {name + ".partial" for name in recorded}
    foreign = [name for name in _files_in(destination) if name not in ours]
    if foreign:
        raise QtoolsError(
            f"{destination}: --overwrite deletes only files qtools wrote, and this directory also holds "
            f"{len(foreign)} other file(s): {some_names(foreign)}; move them out first (nothing was changed)"
        )
    for name in sorted(ours, key=lambda n: -n.count("/")):
        path = destination / name
        path.unlink(missing_ok=True)
        for parent in path.parents:
            if parent == destination or not parent.is_dir() or any(parent.iterdir()):
                break
            parent.rmdir()
    state = destination / STATE_DIR
    for record in (state / "shards").glob("*.json"):
        record.unlink()
    for work in WORK_DIRS:
        shutil.rmtree(state / work, ignore_errors=True)
    (state / CALIBRATION_REPORT).unlink(missing_ok=True)
    (state / PLAN_NAME).unlink(missing_ok=True)


def prepare_destination(destination: Path, run_identity: dict, outputs: list[str], overwrite: bool) -> None:
    """Create or reuse `destination` for a run; the caller holds its lock (`destination_lock`).

    A directory left by a run with a different identity (source, recipe) is cleared only with `overwrite`, and then
    only of the files qtools's records name. `outputs` (files this run will write, relative) join the record
    before any of them is written.
    """
    refuse_foreign_destination(destination)
    state = destination / STATE_DIR
    previous = _read_plan(destination) if (state / PLAN_NAME).exists() else None
    if previous is not None:
        if {key: previous.get(key) for key in run_identity} != run_identity and not overwrite:
            changed = sorted(k for k in run_identity if previous.get(k) != run_identity[k])
            raise QtoolsError(
                f"{destination}: holds a conversion with a different {', '.join(changed)}; "
                "pass --overwrite to discard it and start over"
            )
        if overwrite:
            _clear(destination, previous)
            previous = None
    recorded = sorted({*outputs, *(_recorded_outputs(destination, previous) if previous else ())})
    plan = {**run_identity, "outputs": recorded}
    try:
        (state / "shards").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise QtoolsError(f"{destination}: cannot write here ({error.strerror})") from error
    write_atomic(state / PLAN_NAME, json.dumps(plan, indent=2, sort_keys=True).encode())


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
    except (ValueError, TypeError, RecursionError):
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
