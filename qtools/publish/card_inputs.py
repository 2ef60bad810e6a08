"""What the model card is written from: a checkpoint's headers, config and `.qtools/` records (convert's plan, the
GPTQ calibration report), its check report, the base model and licence, the installed versions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

import qtools
from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import CALIBRATION_REPORT, STATE_DIR, Checkpoint
from qtools.checkpoint.identity import CARD_NAME
from qtools.checkpoint.qwen3_moe import expected_shapes, family, module_of
from qtools.errors import QtoolsError
from qtools.formats import Format, detect
from qtools.recipe import load_recipe, shipped_recipes

# Module families in the order the card lists them (anything else follows, sorted).
FAMILY_ORDER = ("experts.gate_proj", "experts.up_proj", "experts.down_proj", "self_attn.q_proj", "self_attn.k_proj")
FAMILY_ORDER += ("self_attn.v_proj", "self_attn.o_proj", "router", "lm_head", "embed_tokens", "norm")


@dataclass
class FamilyRow:
    """One module family of the checkpoint: how it is stored, its tensors and bytes, and its bytes in BF16."""

    stored_as: str
    tensors: int = 0
    bytes: int = 0
    bf16_bytes: int = 0


@dataclass
class CardInputs:
    """Everything the card is written from. `plan` is convert's `.qtools/plan.json` (source, recipe), None when
    the checkpoint has none; `calibration` the GPTQ report `.qtools/calibration.json`; `report` the check's
    report.json, None without `--report`."""

    repo_id: str
    checkpoint: Path
    config: dict
    model: ModelConfig
    fmt: Format
    families: dict[str, FamilyRow]
    plan: dict | None = None
    calibration: dict | None = None
    report: dict | None = None
    base_model: str | None = None
    license: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(row.bytes for row in self.families.values())

    @property
    def bf16_bytes(self) -> int:
        return sum(row.bf16_bytes for row in self.families.values())

    @property
    def schemes(self) -> list[str]:
        return sorted({layout.scheme for layout in self.fmt.layouts})


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _families(checkpoint: Checkpoint, fmt: Format, model: ModelConfig) -> dict[str, FamilyRow]:
    """Per module family: the layout (or dtype) its tensors are stored in, their count and bytes (headers only),
    and the bytes the same tensors take in BF16 (from the shapes the config implies)."""
    infos = checkpoint.tensor_infos()
    rows: dict[str, FamilyRow] = {}
    for name, info in infos.items():
        module = module_of(name)
        layout = fmt.layout_of(module, infos.get)
        key = family(name)
        if key not in rows:
            if layout is None:
                stored = f"{str(info.dtype).removeprefix('torch.')} (not quantised)"
            else:
                scales = [infos.get(f"{module}.{suffix}") for suffix in layout.scale_suffixes]
                scale_dtypes = sorted({str(s.dtype).removeprefix("torch.") for s in scales if s is not None})
                stored = f"{layout.describe()}, {'/'.join(scale_dtypes)} scales"
            rows[key] = FamilyRow(stored)
        rows[key].tensors += 1
        rows[key].bytes += info.nbytes
    for name, shape in expected_shapes(model).items():
        if family(name) in rows:
            rows[family(name)].bf16_bytes += 2 * math.prod(shape)
    order = {name: i for i, name in enumerate(FAMILY_ORDER)}
    return dict(sorted(rows.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def base_model_from(config: dict, plan: dict | None) -> str | None:
    """The Hub id of the model this checkpoint was converted from: config.json's `_name_or_path` when it is a Hub
    id (`ORG/NAME`), else a Hugging Face cache snapshot path recorded as convert's source; None when unknown."""
    named = config.get("_name_or_path")
    if isinstance(named, str) and _is_repo_id(named):
        return named
    source = Path(str((plan or {}).get("source", "")))
    for part in source.parts:
        if part.startswith("models--") and part.count("--") >= 2:
            return "/".join(part.removeprefix("models--").split("--", 1))
    return None


def _is_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def license_from(checkpoint: Path, plan: dict | None) -> str | None:
    """The licence named in the front-matter of a README.md: the checkpoint's own (convert copies the base model's
    card) or else that of the source convert recorded, when it is still there; None when neither names one."""
    candidates = [checkpoint / CARD_NAME]
    if (plan or {}).get("source"):
        candidates.append(Path(plan["source"]) / CARD_NAME)
    for path in candidates:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if not text.startswith("---\n") or "\n---" not in text[4:]:
            continue
        try:
            front = yaml.safe_load(text[4 : text.index("\n---", 4)])
        except yaml.YAMLError:
            continue
        value = front.get("license") if isinstance(front, dict) else None
        if isinstance(value, str):
            return value
    return None


def _versions() -> dict[str, str]:
    found = {"qtools": qtools.__version__}
    for name in ("huggingface_hub", "torch", "transformers", "safetensors"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def gather_card_inputs(
    checkpoint: str | Path, repo_id: str, report: dict | None = None, base_model: str | None = None
) -> CardInputs:
    """Read what the card says about `checkpoint` (headers, config, `.qtools/` records) and `report`. Raises
    QtoolsError for an unreadable checkpoint or one whose config is not a usable Qwen3-MoE config."""
    opened = Checkpoint.open(checkpoint)
    fmt = detect(opened.config)
    plan = _read_json(opened.root / STATE_DIR / "plan.json")
    return CardInputs(
        repo_id=repo_id,
        checkpoint=opened.root,
        config=opened.config,
        model=opened.model_config,
        fmt=fmt,
        families=_families(opened, fmt, opened.model_config),
        plan=plan,
        calibration=_read_json(opened.root / STATE_DIR / CALIBRATION_REPORT),
        report=report,
        base_model=base_model or base_model_from(opened.config, plan),
        license=license_from(opened.root, plan),
        versions=_versions(),
    )


def recipe_name(plan: dict | None) -> str | None:
    """The shipped recipe (name, `--format` override or not) whose fingerprint convert recorded, None if none."""
    recorded = (plan or {}).get("recipe")
    if not isinstance(recorded, dict):
        return None
    for name in shipped_recipes():
        for override in (None, "hf-fp8", "compressed-tensors"):
            try:
                candidate = load_recipe(name, override)
            except QtoolsError:
                continue
            if json.loads(candidate.fingerprint()) == recorded:
                return (
                    name if override is None or override == load_recipe(name).format else f"{name} --format {override}"
                )
    return None
