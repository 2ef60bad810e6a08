"""Checks of a check's inputs that need no model, run before the tokenizer or any weight is read: a bad
argument then costs seconds, not the hours a 480B pair takes to run before its report is written.

- `check_device`, `check_dtype`: values the runtime can run on.
- `check_pair`: the two checkpoints are not one (refused) and not swapped (warned: a quantised reference
  against a dense "quantised" checkpoint).
- `prepare_report_dir`: the report directory exists or is created, is a directory, and takes a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from qtools.check.report import REPORT_FILES
from qtools.check.thresholds import PROFILES
from qtools.checkpoint.hf import Checkpoint
from qtools.errors import QtoolsError
from qtools.runtime.weights import detect_format

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
DEVICE_TYPES = ("cpu", "cuda")


def check_device(device: str) -> torch.device:
    """`device` as a torch.device the runtime runs on (cpu, cuda, cuda:N with N a visible GPU); QtoolsError
    for anything else (`tpu`, `meta`, a CUDA device torch does not see)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise QtoolsError(f"--device {device!r} is not a device: qtools check runs on cpu or cuda[:N]") from None
    if parsed.type not in DEVICE_TYPES:
        raise QtoolsError(f"--device {device!r}: qtools check runs on cpu or cuda[:N], not on {parsed.type}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise QtoolsError(
                f"--device {device}: torch sees no CUDA device (torch {torch.__version__}); use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise QtoolsError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return parsed


def check_dtype(dtype: torch.dtype | None, device: str) -> torch.dtype:
    """The compute dtype to run in: `dtype` when it is one the check supports (bfloat16 as served, or float32);
    for None ("auto"), float32 on a CPU and bfloat16 on a GPU. CPUs with and without avx512_bf16 round bf16
    matmuls differently, so a bf16 check on a CPU could flip a near-tie greedy token on one machine and not on
    another; in float32 both models' figures are the same on every CPU. QtoolsError for any other dtype."""
    if dtype is None:
        return torch.float32 if torch.device(device).type == "cpu" else torch.bfloat16
    if dtype not in DTYPES.values():
        raise QtoolsError(f"--dtype must be one of {', '.join(DTYPES)}, got {str(dtype).removeprefix('torch.')}")
    return dtype


def _file_ids(checkpoint: Checkpoint) -> set[tuple[int, int]]:
    ids = set()
    for shard in checkpoint.shard_names:
        status = os.stat(checkpoint.root / shard)
        ids.add((status.st_dev, status.st_ino))
    return ids


def check_pair(ref: Path, quant: Path) -> list[str]:
    """Refuse comparing a checkpoint with itself; return warnings about the pair (config and headers only).

    The same checkpoint: one directory (or a link to it), or every weight file of one the same file as the
    other's (hard links; symlinks into one blob store). Such a check measures nothing and always passes.
    Swapped: the reference is quantised and the other checkpoint is dense. Warned rather than refused: the
    distance between the two is still measured (comparing a dequantised BF16 export with its FP8 source is
    a use), but the figures' labels are the wrong way round and a swapped release gate is a mistake.
    """
    ref_checkpoint, quant_checkpoint = Checkpoint.open(ref), Checkpoint.open(quant)
    same_directory = ref.resolve() == quant.resolve() or os.path.samefile(ref, quant)
    if same_directory or _file_ids(ref_checkpoint) == _file_ids(quant_checkpoint):
        what = "is the same directory as" if same_directory else "holds the same weight files (links) as"
        raise QtoolsError(
            f"{quant} {what} the reference {ref}: a checkpoint checked against itself passes whatever it "
            "holds; pass the BF16 reference first and the quantised checkpoint second"
        )
    ref_format = detect_format(ref_checkpoint.config).name
    quant_format = detect_format(quant_checkpoint.config).name
    if ref_format != "dense" and quant_format == "dense":
        return [
            f"arguments look swapped: the reference {ref} is quantised ({ref_format}) and the checkpoint judged, "
            f"{quant}, is dense (BF16); the usual order is `qtools check BF16 QUANTISED`"
        ]
    return []


def check_profile(profile: str, quant: Path) -> str:
    """The threshold profile to judge `quant` by: `profile` itself, or for "auto" the one its format calls for
    ("int4" when any of its layouts is W4A16, mixed FP8-attention checkpoints included; else "fp8")."""
    if profile != "auto" and profile not in PROFILES:
        raise QtoolsError(f"--profile must be one of {', '.join(('auto', *PROFILES))}, got {profile!r}")
    if profile != "auto":
        return profile
    layouts = detect_format(Checkpoint.open(quant).config).layouts
    return "int4" if any(layout.scheme == "w4a16" for layout in layouts) else "fp8"


def prepare_report_dir(directory: Path) -> None:
    """Create `directory` (and its parents) and prove a file can be written there; QtoolsError naming what
    is in the way (a file, a report name taken by a directory, no permission, a read-only filesystem)."""
    if directory.exists() and not directory.is_dir():
        raise QtoolsError(f"--report {directory}: exists and is not a directory; pass a directory (created if absent)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise QtoolsError(f"--report {directory}: cannot create the directory ({error.strerror})") from None
    for name in REPORT_FILES.values():
        if (directory / name).exists() and not (directory / name).is_file():
            raise QtoolsError(f"--report {directory}: {name} there is not a file, so the report cannot be written")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".qtools-check-probe-"):
            pass
    except OSError as error:
        raise QtoolsError(f"--report {directory}: cannot write there ({error.strerror})") from None
