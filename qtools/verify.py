"""`verify_checkpoint`: is a converted checkpoint complete, readable and consistent with its config?"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qtools.checkpoint.hf import INDEX_NAME, Checkpoint
from qtools.checkpoint.qwen3_moe import check_against_config, expected_shapes
from qtools.errors import QtoolsError
from qtools.numerics.fp8 import FP8_DTYPE, scale_shape

SCALE_SUFFIXES = {"fp8": "weight_scale_inv", "compressed-tensors": "weight_scale"}
_FP8_NAN_CODES = (0x7F, 0xFF)


@dataclass
class VerifyReport:
    """Problems found (empty when the checkpoint passes) and what was looked at."""

    path: Path
    method: str = "none"
    problems: list[str] = field(default_factory=list)
    tensors: int = 0
    quantized_modules: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


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
    """Check every index entry is present and readable, shapes/dtypes agree with config.json and the format,
    every scale is finite and positive, and the config lists exactly the unconverted linear modules.

    `deep` also reads every FP8 weight and rejects NaN codes.
    """
    report = VerifyReport(Path(path))
    problems = report.problems
    root = Path(path)
    partials = sorted(p.name for p in root.glob("*.partial")) if root.is_dir() else []
    if partials:
        problems.append(f"{root}: unfinished writes left behind: {', '.join(partials)}")
    if not (root / INDEX_NAME).exists() and root.is_dir() and not (root / "model.safetensors").exists():
        problems.append(f"{root}: no {INDEX_NAME}: the conversion did not finish")
        return report
    try:
        checkpoint = Checkpoint.open(root)
        config = checkpoint.config
        if not config:
            problems.append(f"{root}: no config.json")
            return report
        method, block, skip = _format_of(config.get("quantization_config") or {})
        report.method = method
        if method not in ("fp8", "compressed-tensors", "none"):
            problems.append(f"config.json: quant_method {method!r} is not one qtools writes")
            return report
        if method == "fp8" and (config["quantization_config"].get("activation_scheme") != "dynamic"):
            problems.append("config.json: block-wise FP8 needs activation_scheme 'dynamic'")
        infos = {}
        readers = {}
        for shard in checkpoint.shard_names:
            try:
                readers[shard] = checkpoint.reader(shard)
            except QtoolsError as error:
                problems.append(str(error))
                continue
            unindexed = [n for n in readers[shard].tensors if checkpoint.weight_map.get(n) != shard]
            if unindexed:
                problems.append(f"{root / shard}: holds {len(unindexed)} tensor(s) the index does not list")
            infos.update(
                {n: (shard, readers[shard].tensors[n]) for n, f in checkpoint.weight_map.items() if f == shard}
            )
    except QtoolsError as error:
        problems.append(str(error))
        return report
    report.tensors = len(infos)
    scale_suffix = SCALE_SUFFIXES.get(method)
    for name in sorted(expected_shapes(config)):
        if name not in infos:
            problems.append(f"{name}: missing (config.json implies it)")
    for name, (shard, info) in sorted(infos.items()):
        if scale_suffix and name.endswith("." + scale_suffix):
            module = name[: -len(scale_suffix) - 1]
            weight = infos.get(module + ".weight")
            if weight is None:
                problems.append(f"{name}: scale without a weight")
                continue
            expected = scale_shape(weight[1].shape, block) if len(weight[1].shape) == 2 else None
            if info.shape != expected:
                problems.append(f"{name}: shape {list(info.shape)}, expected {list(expected or ())}")
                continue
            if not info.dtype.is_floating_point or info.dtype == FP8_DTYPE:
                problems.append(f"{name}: scale dtype {info.dtype} is not float32/bfloat16/float16")
                continue
            scales = readers[shard].read(name).float()
            if not (torch.isfinite(scales).all() and (scales > 0).all()):
                problems.append(f"{name}: scales must be finite and positive")
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
                codes = readers[shard].read(name).view(torch.uint8)
                if torch.isin(codes, torch.tensor(_FP8_NAN_CODES, dtype=torch.uint8)).any():
                    problems.append(f"{name}: holds NaN codes")
        elif method != "none" and name.endswith(".weight") and len(info.shape) == 2:
            if module != "model.embed_tokens" and not _listed(module, skip):
                problems.append(
                    f"{name}: kept {info.dtype} but quantization_config does not list {module} as not converted"
                )
    if method != "none" and report.quantized_modules == 0:
        problems.append("config.json declares quantization but no tensor is quantised")
    return report
