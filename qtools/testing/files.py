"""File helpers for tests and benchmarks: digests of directory trees, tensor edits inside shards."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from qtools.checkpoint.safetensors_io import save_tensors
from qtools.checkpoint.writer import PT_METADATA

REPO_ROOT = Path(__file__).resolve().parents[2]
# The toy model build committed to the repository (see docs/toy.md).
TOY_MODEL_DIR = REPO_ROOT / "models" / "toy-qwen3-coder"


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under `root`, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def edit_shard(shard: Path, pick: Callable[[str], bool], edit: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Rewrite the first tensor (by name order) of `shard` that `pick` accepts with `edit`; returns its name."""
    tensors = load_file(shard)
    name = next(n for n in sorted(tensors) if pick(n))
    tensors[name] = edit(tensors[name])
    save_tensors(shard, tensors, PT_METADATA)
    return name


def poison_nan(tensor: torch.Tensor) -> torch.Tensor:
    """Put one NaN into a 2-D tensor (an `edit` for `edit_shard`)."""
    tensor[min(5, tensor.shape[0] - 1), min(7, tensor.shape[1] - 1)] = float("nan")
    return tensor
