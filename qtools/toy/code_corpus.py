"""Python source code to train and evaluate on: the running interpreter's own standard library.

The standard library is on every machine that runs the toolkit, needs no download and is plain, varied Python.
Files are the top-level `*.py` modules in name order; a file is held out (perplexity only) when the SHA-256 of
its name falls in a fixed bucket, so the split does not depend on which other files exist.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from qtools.errors import QtoolsError

HELDOUT_BUCKETS = 10  # about one file in ten is held out
MAX_FILE_CHARS = 60_000  # a few very long modules would otherwise dominate the mix


@dataclass(frozen=True)
class CodeFile:
    """One source file: its name relative to the standard library, and its text (possibly truncated)."""

    name: str
    text: str


def stdlib_dir() -> Path:
    """Directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(name: str) -> bool:
    """Whether the file `name` is kept out of training."""
    return hashlib.sha256(name.encode()).digest()[0] % HELDOUT_BUCKETS == 0


def load_code_files(heldout: bool) -> list[CodeFile]:
    """The training (or held-out) standard-library files, in name order, each cut at a line end near
    `MAX_FILE_CHARS`. Raises QtoolsError when the standard library sources are missing."""
    root = stdlib_dir()
    paths = sorted(root.glob("*.py"))
    if len(paths) < 50:
        raise QtoolsError(
            f"found only {len(paths)} Python files in {root}: the toy model trains on the standard "
            "library sources, install the full Python distribution (not a stripped one)"
        )
    files = []
    for path in paths:
        if is_heldout(path.name) != heldout:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if len(text) > MAX_FILE_CHARS:
            text = text[: text.rfind("\n", 0, MAX_FILE_CHARS) + 1]
        files.append(CodeFile(path.name, text))
    return files
