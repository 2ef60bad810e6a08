"""A checkpoint laid out the way the Hugging Face hub cache stores it, for tests.

`hub/models--ORG--NAME/blobs/<sha256>` hold the file contents; `snapshots/<revision>/<path>` are relative
symbolic links into `blobs/`; `refs/main` names the revision.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hf_cache_copy(checkpoint: str | Path, hub: str | Path, repo_id: str, revision: str = REVISION) -> Path:
    """Copy the files of `checkpoint` into a hub cache at `hub` as repository `repo_id`; returns the snapshot
    directory (what `huggingface_hub.snapshot_download` returns)."""
    checkpoint, hub = Path(checkpoint), Path(hub)
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for path in sorted(checkpoint.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(checkpoint)
        blob = blobs / hashlib.sha256(path.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
