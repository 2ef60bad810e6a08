"""`verify_checkpoint`: is a converted checkpoint complete, readable and consistent with its config?

Two outcomes besides a pass: `problems` (the checkpoint is wrong: `qtools verify` exits 1) and `error` (it could
not be checked: no checkpoint at the path, or a config.json that is missing, unreadable or not a usable Qwen3-MoE
config, without which nothing can be compared; exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import INDEX_NAME, SINGLE_NAME, STATE_DIR, Checkpoint
from qtools.checkpoint.qwen3_moe import check_against_config, expected_shapes
from qtools.checkpoint.safetensors_io import SafetensorsReader, TensorInfo, shard_digest
from qtools.convert.shard import ShardRecord
from qtools.convert.state import load_record
from qtools.errors import QtoolsError
from qtools.numerics.finite import all_finite
from qtools.numerics.fp8 import FP8_DTYPE, FP8_MAX, scale_shape

SCALE_SUFFIXES = {"fp8": "weight_scale_inv", "compressed-tensors": "weight_scale"}
_FP8_NAN_CODES = (0x7F, 0xFF)
# Largest plausible block scale: its codes (|q| <= 448) then dequantise to at most 65504, float16's largest finite
# value. Trained weights are far below 1 in magnitude (scales of order 1e-4); a scale past this bound overflows
# fp16 kernels and is damage, not data. An all-zero block's scale is 1.0 (docs/conversion.md).
MAX_SCALE = 65504.0 / FP8_MAX
# Kept tensors are read for NaN/Inf in pieces of about this size, so a 2 GB embedding never sits in memory whole.
_FINITE_CHUNK_BYTES = 64 << 20
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class VerifyReport:
    """Problems found (empty when the checkpoint passes), `error` when it could not be checked, notes on what
    was not checked, and what was looked at."""

    path: Path
    method: str = "none"
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    tensors: int = 0
    quantized_modules: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and self.error is None


def _format_of(quant: dict) -> tuple[str, tuple[int, int], list[str]]:
    """(quant_method, block, modules listed as not converted) from a quantization_config."""
    method = quant.get("quant_method", "none")
    if method == "fp8":
        return (
            method,
            tuple(quant.get("weight_block_size") or (128, 128)),
            list(quant.get("modules_to_not_convert") or []),
        )
    if method == "compressed-tensors":
        groups = quant.get("config_groups") or {}
        weights = next(iter(groups.values()), {}).get("weights") or {}
        return method, tuple(weights.get("block_structure") or (128, 128)), list(quant.get("ignore") or [])
    return method, (128, 128), []


def _listed(module: str, skip: list[str]) -> bool:
    for entry in skip:
        if entry.startswith("re:"):
            if re.fullmatch(entry[3:], module):
                return True
        elif entry == module or entry == module.removeprefix("model."):
            return True
    return False


def verify_checkpoint(path: str | Path, deep: bool = False) -> VerifyReport:
    """Check every index entry is present and readable, each shard file is exactly its header and tensors (and
    matches its record in `.qtools/` where convert left one), shapes and dtypes agree with config.json and the
    format, every scale is finite, positive and at most MAX_SCALE, and the config lists exactly the unconverted
    linear modules.

    `deep` also reads every tensor: FP8 weights must hold no NaN code, kept tensors only finite values, and each
    shard must match the digest convert recorded (a note says when there are none).
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
    method, block, skip = _format_of(checkpoint.config.get("quantization_config") or {})
    report.method = method
    if method not in ("fp8", "compressed-tensors", "none"):
        problems.append(f"config.json: quant_method {method!r} is not one qtools writes")
        return
    if method == "fp8" and (checkpoint.config["quantization_config"].get("activation_scheme") != "dynamic"):
        problems.append("config.json: block-wise FP8 needs activation_scheme 'dynamic'")
    readers = _open_shards(checkpoint, problems, deep, report.notes)
    infos = {
        name: (shard, readers[shard].tensors[name]) for name, shard in checkpoint.weight_map.items() if shard in readers
    }
    report.tensors = len(infos)
    for name in sorted(expected_shapes(config)):
        if name not in checkpoint.weight_map:
            problems.append(f"{name}: missing (config.json implies it)")
    model_dtype = _model_dtype(config, infos)
    scale_suffix = SCALE_SUFFIXES.get(method)
    for name, (shard, info) in sorted(infos.items()):
        reader = readers[shard]
        if scale_suffix and name.endswith("." + scale_suffix):
            _check_scale(name, info, infos, block, reader, problems)
            continue
        module = name.removesuffix(".weight")
        quantized = info.dtype == FP8_DTYPE
        has_scale = scale_suffix is not None and f"{module}.{scale_suffix}" in infos
        if quantized and not has_scale:
            problems.append(f"{name}: FP8 weight without its {scale_suffix or 'scale'} tensor")
        if has_scale and not quantized:
            problems.append(f"{name}: has a scale but is {info.dtype}, not float8_e4m3fn")
        problem = check_against_config(name, info.shape, config)
        if problem:
            problems.append(problem)
        if quantized:
            report.quantized_modules += 1
            if _listed(module, skip):
                problems.append(f"{name}: converted, but quantization_config lists {module} as not converted")
            if deep:
                codes = reader.read(name).view(torch.uint8)
                if torch.isin(codes, torch.tensor(_FP8_NAN_CODES, dtype=torch.uint8)).any():
                    problems.append(f"{name}: holds NaN codes")
            continue
        _check_kept(name, info, model_dtype, reader, deep, problems)
        if method != "none" and name.endswith(".weight") and len(info.shape) == 2:
            if module != "model.embed_tokens" and not _listed(module, skip):
                problems.append(
                    f"{name}: kept {info.dtype} but quantization_config does not list {module} as not converted"
                )
    if method != "none" and report.quantized_modules == 0:
        problems.append("config.json declares quantization but no tensor is quantised")


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


def _check_scale(
    name: str,
    info: TensorInfo,
    infos: dict[str, tuple[str, TensorInfo]],
    block: tuple[int, int],
    reader: SafetensorsReader,
    problems: list[str],
) -> None:
    suffix = name.rsplit(".", 1)[1]
    weight = infos.get(name.removesuffix(suffix) + "weight")
    if weight is None:
        problems.append(f"{name}: scale without a weight")
        return
    expected = scale_shape(weight[1].shape, block) if len(weight[1].shape) == 2 else None
    if info.shape != expected:
        problems.append(f"{name}: shape {list(info.shape)}, expected {list(expected or ())}")
        return
    if not info.dtype.is_floating_point or info.dtype == FP8_DTYPE:
        problems.append(f"{name}: scale dtype {info.dtype} is not float32/bfloat16/float16")
        return
    scales = reader.read(name).float()
    if not (torch.isfinite(scales).all() and (scales > 0).all()):
        problems.append(f"{name}: scales must be finite and positive")
    elif (scales > MAX_SCALE).any():
        problems.append(
            f"{name}: scale {scales.max().item():.3g} exceeds {MAX_SCALE:.4g}: its weights would dequantise past "
            "float16's range (a damaged scale)"
        )
