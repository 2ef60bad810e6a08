"""The identity of a checkpoint: the SHA-256 and size of every file it would publish.

`qtools check` records it in report.json and `qtools publish --report` recomputes it, so a report vouches only for
the exact bytes it measured. SHA-256 is the digest the Hub itself shows for LFS files (their oid), so a reader can
compare a published shard with the card. Files are hashed in threads (hashlib releases the GIL while it hashes), in
16 MiB pieces, so no file is ever held in memory whole.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from qtools.checkpoint.hf import INDEX_NAME, Checkpoint
from qtools.errors import QtoolsError, some_names

IDENTITY_ALGORITHM = "sha256"
# The model card: written by `qtools publish`, so it is not part of what a check measured.
CARD_NAME = "README.md"
_CHUNK_BYTES = 16 << 20
_THREADS = 8


def checkpoint_files(root: str | Path) -> list[str]:
    """Every file of checkpoint `root` (POSIX paths relative to it, sorted): its shards, index and every other
    file `Checkpoint.extra_files` accepts (top-level dot entries such as `.qtools/` left out). Raises QtoolsError
    for a file that is not a regular file inside the checkpoint."""
    checkpoint = Checkpoint.open(root)
    names = {*checkpoint.shard_names, *(path.as_posix() for path in checkpoint.extra_files())}
    if (checkpoint.root / INDEX_NAME).exists():
        names.add(INDEX_NAME)
    return sorted(names)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at `path`, read in pieces."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                digest.update(chunk)
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    return digest.hexdigest()


def checkpoint_identity(root: str | Path) -> dict:
    """{"algorithm": "sha256", "files": {name: {"size": bytes, "sha256": hex}}, "total_bytes": n} over
    `checkpoint_files(root)` except the model card (README.md)."""
    root = Path(root)
    names = [name for name in checkpoint_files(root) if name != CARD_NAME]
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        digests = list(pool.map(lambda name: file_sha256(root / name), names))
    files = {
        name: {"size": (root / name).stat().st_size, "sha256": digest}
        for name, digest in zip(names, digests, strict=True)
    }
    return {"algorithm": IDENTITY_ALGORITHM, "files": files, "total_bytes": sum(f["size"] for f in files.values())}


def identity_difference(recorded: dict, current: dict) -> str | None:
    """What differs between two identities, as a sentence naming the files; None when they are the same."""
    if recorded.get("algorithm") != current.get("algorithm") or not isinstance(recorded.get("files"), dict):
        return f"the report records no {IDENTITY_ALGORITHM} identity of its checkpoint"
    old, new = recorded["files"], current["files"]
    added = sorted(set(new) - set(old))
    missing = sorted(set(old) - set(new))
    changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
    parts = [
        f"{label} {some_names(names)}"
        for label, names in (("changed:", changed), ("not in the checked checkpoint:", added), ("gone:", missing))
        if names
    ]
    return "; ".join(parts) or None
