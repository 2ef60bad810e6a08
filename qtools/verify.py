"""`verify_checkpoint`: is a converted checkpoint complete, readable and consistent with its config?

Two outcomes besides a pass: `problems` (the checkpoint is wrong: `qtools verify` exits 1) and `error` (it could
not be checked: no checkpoint at the path, or a config.json that is missing, unreadable or not a usable Qwen3-MoE
config, without which nothing can be compared; exit 2).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import INDEX_NAME, SINGLE_NAME, STATE_DIR, Checkpoint
from qtools.checkpoint.qwen3_moe import check_against_config, expected_shapes, module_of
from qtools.checkpoint.safetensors_io import SafetensorsReader, TensorInfo, shard_digest
from qtools.convert.shard import ShardRecord
from qtools.convert.state import load_record
from qtools.errors import QtoolsError
from qtools.formats import Format, LinearLayout, detect
from qtools.numerics.finite import all_finite

# The quant_method values of the formats qtools writes ("none": no quantization_config).
_METHODS = ("fp8", "compressed-tensors", "none")
# Kept tensors are read for NaN/Inf in pieces of about this size, so a 2 GB embedding never sits in memory whole.
_FINITE_CHUNK_BYTES = 64 << 20
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class VerifyReport:
    """Problems found (empty when the checkpoint passes), `error` when it could not be checked, notes on what
    was not checked, and what was looked at."""

    path: Path
    method: str = "none"
    format: str = "dense"
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    quantized_modules: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None


def verify_checkpoint(path: str | Path, deep: bool = False) -> VerifyReport:
    """Check every index entry is present and readable, each shard file is exactly its header and tensors (and
    matches its record in `.qtools/` where convert left one), shapes and dtypes agree with config.json and the
    format (each quantised module's tensors as its layout in `qtools.formats` says, INT4 `weight_shape` included),
    every scale is finite, positive and small enough that its codes stay in float16's range, and the config
    lists exactly the unconverted linear modules.

    `deep` also reads every tensor: FP8 weights must hold no NaN code, INT4 weights no zeroed group, kept tensors
    only finite values, and each shard must match the digest convert recorded (a note says when there are none).
    """
    report = VerifyReport(Path(path))
    try:
        _verify(report, deep)
    except QtoolsError as error:
        report.error = str(error)
    return report


def _verify(report: VerifyReport, deep: bool) -> None:
    """Fill `report.problems`; raises QtoolsError when the checkpoint cannot be checked at all."""
    root, problems = report.path, report.problems
    if not root.is_dir():
        raise QtoolsError(f"{root}: not a directory")
    partials = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.partial") if not p.relative_to(root).parts[0].startswith(".")
    )
    if partials:
        problems.append(f"{root}: unfinished writes left behind: {', '.join(partials)}")
    if not (root / INDEX_NAME).exists() and not (root / SINGLE_NAME).exists():
        if (root / STATE_DIR).is_dir() or any(root.glob("*.safetensors")):
            problems.append(f"{root}: no {INDEX_NAME}: the conversion did not finish")
            return
        raise QtoolsError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME}: not a safetensors checkpoint")
    try:
        checkpoint = Checkpoint.open(root)
    except QtoolsError as error:
        problems.append(str(error))
        return
    config = checkpoint.model_config
    report.method = (checkpoint.config.get("quantization_config") or {}).get("quant_method", "none")
    if report.method not in _METHODS:
        problems.append(f"config.json: quant_method {report.method!r} is not one qtools writes")
        return
    try:
        fmt = detect(checkpoint.config)
    except QtoolsError as error:
        problems.append(str(error))
        return
    report.format = fmt.label
    readers = _open_shards(checkpoint, problems, deep, report.notes)
    infos = {
        name: (shard, readers[shard].tensors[name]) for name, shard in checkpoint.weight_map.items() if shard in readers
    }
    report.tensors = len(infos)
    tensors = _Tensors(infos, readers)
    for name in sorted(expected_shapes(config)):
        # A quantised module's dense weight may be stored as other tensors (INT4: weight_packed, ...).
        if name not in checkpoint.weight_map and fmt.layout_of(module_of(name), tensors.lookup) is None:
            problems.append(f"{name}: missing (config.json implies it)")
    model_dtype = _model_dtype(config, infos)
    # Tensors only a quantised layout writes (scales, packed codes): checked with their module, never as kept.
    layout_only = {suffix for layout in fmt.layouts for suffix in layout.suffixes} - {"weight"}
    modules: dict[str, list[str]] = defaultdict(list)
    for name in sorted(infos):
        modules[module_of(name)].append(name)
    for module, names in sorted(modules.items()):
        stored = [p for layout in fmt.layouts for p in layout.storage_problems(module, tensors.lookup)]
        problems += stored
        layout = fmt.layout_of(module, tensors.lookup)
        owned: set[str] = set()
        if layout is not None:
            report.quantized_modules += 1
            owned = {f"{module}.{suffix}" for suffix in layout.suffixes}
            if not stored:
                problems += _quantized_problems(module, layout, fmt, config, tensors, deep)
        for name in names:
            if name in owned or name[len(module) + 1 :] in layout_only:
                continue
            shard, info = infos[name]
            problem = check_against_config(name, info.shape, config)
            if problem:
                problems.append(problem)
            _check_kept(name, info, model_dtype, readers[shard], deep, problems)
            if fmt.name != "dense" and name.endswith(".weight") and len(info.shape) == 2:
                if module != "model.embed_tokens" and not fmt.lists_unconverted(module):
                    problems.append(
                        f"{name}: kept {info.dtype} but quantization_config does not list {module} as not converted"
                    )
    if fmt.name != "dense" and report.quantized_modules == 0:
        problems.append("config.json declares quantization but no tensor is quantised")


class _Tensors:
    """Header lookups and reads of the tensors whose shards opened."""

    def __init__(self, infos: dict[str, tuple[str, TensorInfo]], readers: dict[str, SafetensorsReader]):
        self.infos, self.readers = infos, readers

    def lookup(self, name: str) -> TensorInfo | None:
        entry = self.infos.get(name)
        return entry[1] if entry else None

    def read(self, name: str) -> torch.Tensor:
        return self.readers[self.infos[name][0]].read(name)


def _quantized_problems(
    module: str, layout: LinearLayout, fmt: Format, config: ModelConfig, tensors: _Tensors, deep: bool
) -> list[str]:
    """What is wrong with a quantised module whose tensors are all present: the dense shape it stands for
    against config.json, its listing, its tensors' shapes and dtypes, then its values."""
    shown = f"{module}.{layout.codes_suffix}"
    try:
        shape = layout.logical_shape(module, tensors.lookup, tensors.read)
    except QtoolsError as error:
        return [str(error)]
    problems = []
    problem = check_against_config(f"{module}.weight", shape, config, shown=shown)
    if problem:
        problems.append(problem)
    if fmt.lists_unconverted(module):
        problems.append(f"{shown}: converted, but quantization_config lists {module} as not converted")
    layout_problems = layout.layout_problems(module, tensors.lookup, shape)
    if layout_problems:
        return problems + layout_problems
    return problems + layout.value_problems(module, tensors.read, shape, deep)


def _open_shards(checkpoint: Checkpoint, problems: list[str], deep: bool, notes: list[str]) -> dict:
    """Readers of the shards that open, after checking each file is exactly its header and tensors and matches
    convert's record of it (size always, digest when `deep`)."""
    readers: dict[str, SafetensorsReader] = {}
    recorded = (checkpoint.root / STATE_DIR / "shards").is_dir()
    if deep and not recorded:
        notes.append(
            f"{checkpoint.root}: no shard digests in {STATE_DIR}/ (not written by qtools convert, or its state was "
            "removed): values were checked, bit-exactness against the conversion was not"
        )
    for shard in checkpoint.shard_names:
        path = checkpoint.root / shard
        try:
            reader = checkpoint.reader(shard)
        except QtoolsError as error:
            problems.append(str(error))
            continue
        readers[shard] = reader
        unindexed = [n for n in reader.tensors if checkpoint.weight_map.get(n) != shard]
        if unindexed:
            problems.append(f"{path}: holds {len(unindexed)} tensor(s) the index does not list")
        size = path.stat().st_size
        accounted = max((info.end for info in reader.tensors.values()), default=size)
        if size != accounted:
            problems.append(
                f"{path}: file is {size} bytes but its header and tensors account for {accounted} "
                "(bytes appended or a damaged header; safetensors refuses such a file)"
            )
            continue
        if recorded:
            record = load_record(checkpoint.root, shard)
            problem = _digest_problem(path, record, deep)
            if problem:
                problems.append(problem)
    return readers


def _digest_problem(path: Path, record: ShardRecord | None, deep: bool) -> str | None:
    """What is wrong with shard `path` against convert's record of it (size; digest when `deep`), else None."""
    if record is None:
        return f"{path}: no record in {STATE_DIR}/shards/, though convert left records for this checkpoint"
    size = path.stat().st_size
    if size != record.size:
        return f"{path}: {size} bytes, but convert recorded {record.size}"
    if deep:
        try:
            digest = shard_digest(path)
        except QtoolsError as error:
            return str(error)
        if digest != record.sha256:
            return f"{path}: content differs from what convert wrote (shard digest mismatch): damaged or modified"
    return None


def _kept_values_finite(reader: SafetensorsReader, name: str) -> bool:
    """Whether floating-point tensor `name` holds only finite values, read a bounded number of rows at a time."""
    info = reader.tensors[name]
    if len(info.shape) == 0 or info.shape[0] == 0:
        return all_finite(reader.read(name))
    rows = max(1, _FINITE_CHUNK_BYTES // max(1, info.nbytes // info.shape[0]))
    return all(all_finite(reader.read_rows(name, first, rows)) for first in range(0, info.shape[0], rows))


def _model_dtype(config: ModelConfig, infos: dict[str, tuple[str, TensorInfo]]) -> tuple[torch.dtype, str] | None:
    """(dtype every kept tensor must have, where it comes from): config.json's `dtype` / `torch_dtype`, else the
    embedding's dtype; None when neither is known."""
    if config.dtype is not None:
        return _DTYPES[config.dtype], f"config.json dtype {config.dtype}"
    embed = infos.get("model.embed_tokens.weight")
    if embed is not None:
        return embed[1].dtype, "the dtype of model.embed_tokens.weight"
    return None


def _check_kept(
    name: str,
    info: TensorInfo,
    model_dtype: tuple[torch.dtype, str] | None,
    reader: SafetensorsReader,
    deep: bool,
    problems: list[str],
) -> None:
    """A tensor kept as it was (router, norms, embeddings, lm_head, or anything in an unquantised checkpoint) has
    the model's dtype and, when `deep`, only finite values."""
    if model_dtype is not None and info.dtype != model_dtype[0]:
        problems.append(f"{name}: {info.dtype}, but the model's tensors are {model_dtype[0]} ({model_dtype[1]})")
        return
    if deep and info.dtype.is_floating_point and not _kept_values_finite(reader, name):
        problems.append(f"{name}: holds NaN or Inf values")
