"""The model card `qtools publish` writes (README.md): front-matter the Hub parses, then what a reader needs to trust
and use the checkpoint, every figure taken from the checkpoint's own files and its check report.

Sections: a one-line summary (scheme, size against BF16, headline agreement), what is quantised how (per module
family: layout and bytes, from the format registry), quality against BF16 (report.json: KL, top-1, perplexity,
tool calls, FIM, the thresholds and the report's plots), serving (vLLM and SGLang commands fitted to the format,
`qtools.publish.serving`), reproduction (commands, recipe, calibration data and its hash, versions), limitations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

import qtools
from qtools.check.report.format import fmt, pct
from qtools.check.report.html import report_plots
from qtools.checkpoint.config import ModelConfig
from qtools.checkpoint.hf import CALIBRATION_REPORT, STATE_DIR, Checkpoint
from qtools.checkpoint.qwen3_moe import expected_shapes, family, module_of
from qtools.errors import QtoolsError
from qtools.formats import Format, detect
from qtools.publish.serving import ServingPlan, serving_plan, sglang_command, vllm_command
from qtools.recipe import load_recipe, shipped_recipes

PIPELINE_TAG = "text-generation"
LIBRARY_NAME = "transformers"
IMAGES_DIR = "images"
# Module families in the order the card lists them (anything else follows, sorted).
FAMILY_ORDER = ("experts.gate_proj", "experts.up_proj", "experts.down_proj", "self_attn.q_proj", "self_attn.k_proj")
FAMILY_ORDER += ("self_attn.v_proj", "self_attn.o_proj", "router", "lm_head", "embed_tokens", "norm")
SCHEME_TAGS = {"fp8-block": ("fp8", "fp8-block", "w8a8"), "w4a16": ("int4", "w4a16", "weight-only")}


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
    candidates = [checkpoint / "README.md"]
    if (plan or {}).get("source"):
        candidates.append(Path(plan["source"]) / "README.md")
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


def _size(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def front_matter(inputs: CardInputs) -> dict:
    """The YAML metadata block: what the Hub indexes (base model and relation, library, task, licence, tags)."""
    tags = ["qwen3_moe", "qwen3-coder", "quantized", "qtools", inputs.fmt.name]
    for scheme in inputs.schemes:
        tags += [tag for tag in SCHEME_TAGS.get(scheme, (scheme,)) if tag not in tags]
    if inputs.fmt.name == "compressed-tensors":
        tags.append("compressed-tensors")
    meta: dict = {}
    if inputs.base_model:
        meta["base_model"] = inputs.base_model
        meta["base_model_relation"] = "quantized"
    meta["library_name"] = LIBRARY_NAME
    meta["pipeline_tag"] = PIPELINE_TAG
    if inputs.license:
        meta["license"] = inputs.license
    meta["tags"] = list(dict.fromkeys(tags))
    return meta


def scheme_words(inputs: CardInputs) -> str:
    """The quantisation in a few words, e.g. "FP8 e4m3, 128x128 blocks (hf-fp8)"."""
    layouts = "; ".join(layout.describe() for layout in inputs.fmt.layouts) or "not quantised"
    return f"{layouts} ({inputs.fmt.name})"


def summary_line(inputs: CardInputs) -> str:
    """One sentence: scheme, size against BF16 and the headline agreement with BF16."""
    share = inputs.total_bytes / inputs.bf16_bytes if inputs.bf16_bytes else float("nan")
    line = (
        f"**{scheme_words(inputs)}**: {_size(inputs.total_bytes)}, {pct(share)} of BF16's {_size(inputs.bf16_bytes)}."
    )
    figures = (inputs.report or {}).get("figures", {})
    dist, tools = figures.get("distribution"), figures.get("tools")
    agreement = []
    if dist:
        agreement.append(f"top-1 agreement {pct(dist['top1_agreement'])}, mean KL {fmt(dist['kl']['mean'], 3)} nats")
    if tools:
        agreement.append(f"same tool call {pct(tools['same_calls'])}")
    if agreement:
        line += f" Against BF16: {', '.join(agreement)}."
    else:
        line += " Its behaviour against BF16 was not measured for this card (publish with --report)."
    return line


def quantisation_table(inputs: CardInputs) -> list[str]:
    rows = [
        "| module family | stored as | tensors | bytes | BF16 bytes | share of checkpoint |",
        "|---|---|---:|---:|---:|---:|",
    ]
    total = inputs.total_bytes or 1
    for name, row in inputs.families.items():
        rows.append(
            f"| {name} | {row.stored_as} | {row.tensors} | {_size(row.bytes)} | {_size(row.bf16_bytes)} | "
            f"{pct(row.bytes / total)} |"
        )
    rows.append(
        f"| **total** | | {sum(r.tensors for r in inputs.families.values())} | **{_size(inputs.total_bytes)}** | "
        f"{_size(inputs.bf16_bytes)} | |"
    )
    return rows


def quality_section(inputs: CardInputs, images: list[str]) -> list[str]:
    report = inputs.report
    if report is None:
        return [
            "Not measured for this card. `qtools check BF16_DIR THIS_DIR --report DIR` compares it with BF16 "
            "(token-level KL, top-1, tool calls, FIM); `qtools publish --report DIR` puts the figures here."
        ]
    figures, meta = report.get("figures", {}), report.get("meta", {})
    files = len(meta.get("quantised_identity", {}).get("files", {}))
    lines = [
        f"Measured by `qtools check` against the BF16 model on these exact files (the SHA-256 of all {files} "
        f"files matched at publish time); verdict: **{'PASSED' if report.get('passed') else 'FAILED'}** "
        f"({meta.get('engine', '?')} engine, {meta.get('dtype', '?')}, seed {meta.get('seed', '?')}).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    dist = figures.get("distribution")
    if dist:
        kl = dist["kl"]
        lines += [
            f"| tokens scored (held-out code) | {fmt(dist['tokens'])} |",
            f"| KL(BF16 ‖ quantised) mean / p99 (nats) | {fmt(kl['mean'], 3)} / {fmt(kl['p99'], 3)} |",
            f"| top-1 agreement | {pct(dist['top1_agreement'])} |",
            f"| perplexity ratio (quantised / BF16) | {fmt(dist['ppl_ratio'], 5)} |",
        ]
    tools = figures.get("tools")
    if tools:
        lines += [
            f"| tool calls: valid format BF16 / quantised | {pct(tools['valid_format_ref'])} / "
            f"{pct(tools['valid_format_quant'])} (of {tools['count']} prompts) |",
            f"| tool calls: same call (name and arguments) | {pct(tools['same_calls'])} |",
            f"| tool calls: flips correct↔wrong | {tools['flips']} ({pct(tools['flip_rate'])}) |",
        ]
    fim = figures.get("fim")
    if fim:
        lines += [
            f"| fill-in-the-middle: exact BF16 / quantised | {pct(fim['exact_ref'])} / {pct(fim['exact_quant'])} "
            f"(of {fim['count']} prompts) |",
            f"| fill-in-the-middle: same middle as BF16 | {pct(fim['same_as_reference'])} |",
        ]
    weights = figures.get("weights")
    if weights:
        lines.append(
            f"| weight SQNR min / median (dB) | {fmt(weights['sqnr_min_db'], 3)} / "
            f"{fmt(weights['sqnr_median_db'], 3)} |"
        )
    shown = [v for v in report.get("verdicts", []) if v.get("status") != "off"]
    if shown:
        lines += [
            "",
            "Thresholds the check gated on:",
            "",
            "| key | bound | threshold | value | status |",
            "|---|---|---:|---:|---|",
        ]
        lines += [
            f"| {v['key']} | {v['direction']} | {fmt(v['threshold'])} | {fmt(v['value'])} | {v['status'].upper()} |"
            for v in shown
        ]
    lines += [""] + [f"![{Path(image).stem.replace('_', ' ')}]({image})" for image in images]
    sources = meta.get("suite_sources") or {}
    if sources:
        lines += ["", "Suites: " + "; ".join(f"{name}: {text}" for name, text in sources.items()) + "."]
    return lines


def serving_section(inputs: CardInputs, plan: ServingPlan) -> list[str]:
    width = inputs.model.moe_intermediate_size
    lines = [
        f"The experts are {width} wide; tensor parallelism gives each rank {width}/TP of that width, which the "
        "fused-MoE kernels need to be a multiple of "
        + (", ".join(f"{multiple} ({name})" for name, multiple in plan.tiles.items()) or "nothing in particular")
        + ".",
        "",
        "| TP | per-rank expert width | experts by TP alone |",
        "|---:|---:|---|",
    ]
    lines += [
        f"| {o.tp} | {o.per_rank_width} | {'yes' if o.problem is None else 'no: ' + o.problem} |" for o in plan.options
    ]
    tp = plan.max_tp or 1
    lines += ["", f"Tensor parallel up to {tp} (vLLM):", "", "```bash", vllm_command(inputs.repo_id, tp, False), "```"]
    lines += ["", "SGLang:", "", "```bash", sglang_command(inputs.repo_id, tp, False), "```"]
    if plan.needs_expert_parallel:
        big = max(plan.needs_expert_parallel)
        lines += [
            "",
            f"At TP {', '.join(map(str, plan.needs_expert_parallel))} the split experts do not fit the kernels: "
            f"use expert parallelism, which keeps each expert whole on one rank (TP {big} shown):",
            "",
            "```bash",
            vllm_command(inputs.repo_id, big, True),
            "",
            sglang_command(inputs.repo_id, big, True),
            "```",
        ]
    lines += ["", "`--tool-call-parser qwen3_coder` parses the model's `<tool_call>` blocks into OpenAI tool calls."]
    return lines


def reproduction_section(inputs: CardInputs) -> list[str]:
    plan = inputs.plan or {}
    name = recipe_name(plan)
    recipe_arg = name if name else "recipe.yaml"
    lines = []
    base = inputs.base_model or "the BF16 model"
    # The local source path convert recorded is not published: it says nothing to a reader and may be private.
    lines.append(f"`BF16_DIR` is a local copy of {base}.")
    convert = f"qtools convert BF16_DIR OUT --recipe {recipe_arg}"
    calibration = (inputs.calibration or {}).get("calibration")
    if calibration:
        convert += (
            f" --calibration-samples {calibration.get('samples')} --calibration-seq-len {calibration.get('seq_len')}"
        )
        if not str(calibration.get("source", "")).startswith("built-in"):
            convert += " --calibration DATA  # DATA: the calibration data named below"
    commands = [convert, "qtools verify OUT --deep"]
    meta = (inputs.report or {}).get("meta", {})
    if inputs.report:
        sizes = meta.get("sizes", {})
        check = (
            f"qtools check BF16_DIR OUT --report check-report --code-tokens {sizes.get('code_tokens')} "
            f"--tool-prompts {sizes.get('tool_prompts')} --fim-prompts {sizes.get('fim_prompts')} "
            f"--seed {meta.get('seed')}"
        )
        commands.append(check)
    commands.append(f"qtools publish OUT --repo {inputs.repo_id}" + (" --report check-report" if inputs.report else ""))
    lines += ["", "```bash", *commands, "```"]
    if plan.get("recipe"):
        label = f"the shipped recipe `{name}`" if name else "the recipe (save as recipe.yaml)"
        lines += [
            "",
            f"Recipe, {label}:",
            "",
            "```yaml",
            yaml.safe_dump(plan["recipe"], sort_keys=True).rstrip(),
            "```",
        ]
    if calibration:
        lines += [
            "",
            f"Calibration data: {calibration.get('source')}; "
            f"{calibration.get('samples')} x {calibration.get('seq_len')} "
            f"tokens, sha256 `{calibration.get('sha256')}`. Experts calibrated / rounded to nearest: "
            f"{inputs.calibration.get('experts_calibrated')} / {inputs.calibration.get('experts_fallback')} "
            f"(coverage {inputs.calibration.get('coverage')}).",
        ]
    versions = {**(meta.get("versions") or {})}
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in {**versions, **inputs.versions}.items()) + "."]
    if meta.get("chat_template_sha256"):
        lines[-1] += f" Chat template sha256 `{meta['chat_template_sha256']}`."
    return lines


def limitations_section(inputs: CardInputs, plan: ServingPlan) -> list[str]:
    lines = []
    if inputs.report:
        sizes = inputs.report.get("meta", {}).get("sizes", {})
        lines.append(
            f"- The check is a sample: {sizes.get('code_tokens')} code tokens, {sizes.get('tool_prompts')} tool "
            f"prompts, {sizes.get('fim_prompts')} FIM prompts. It measures agreement with BF16, not task accuracy; "
            "a benchmark (HumanEval, SWE-bench, BFCL) is still the judge of usefulness."
        )
    else:
        lines.append("- Agreement with BF16 was not measured for this card.")
    if "w4a16" in inputs.schemes:
        lines.append(
            "- INT4 weights lose more on code than on general text in published evaluations; tool-call format is a "
            "quantisation-sensitive behaviour, so check the tool-call figures above for your use."
        )
    fallback = (inputs.calibration or {}).get("experts_fallback")
    if fallback:
        lines.append(f"- {fallback} experts saw too few calibration tokens and were rounded to nearest instead.")
    if plan.needs_expert_parallel:
        lines.append(f"- TP {', '.join(map(str, plan.needs_expert_parallel))} needs expert parallelism (see Serving).")
    if not inputs.base_model:
        lines.append("- The base model is not named (pass `--base-model ORG/NAME` to `qtools publish`).")
    return lines


def plot_images(report: dict | None) -> dict[str, str]:
    """The report's plots as SVG files for the card: relative path in the repository -> SVG text."""
    if not report:
        return {}
    return {f"{IMAGES_DIR}/{stem}.svg": svg for stem, svg in report_plots(report.get("figures", {})).items()}


def render_card(inputs: CardInputs, images: list[str]) -> str:
    """The model card: YAML front-matter, then the sections (see the module docstring). `images` are the
    relative paths of the plot files placed beside it."""
    plan = serving_plan(inputs.fmt, inputs.model)
    title = inputs.repo_id.split("/")[-1]
    body = [
        f"# {title}",
        "",
        summary_line(inputs),
        "",
        f"Quantised from {inputs.base_model or 'a BF16 Qwen3-MoE checkpoint'} with "
        f"qtools {inputs.versions.get('qtools', '')}: "
        f"{inputs.model.num_layers} layers of {inputs.model.num_experts} experts (top-{inputs.model.top_k}), "
        f"hidden {inputs.model.hidden_size}, expert width {inputs.model.moe_intermediate_size}.",
        "",
        "## What is quantised how",
        "",
        *quantisation_table(inputs),
        "",
        "## Quality against BF16",
        "",
        *quality_section(inputs, images),
        "",
        "## Serving",
        "",
        *serving_section(inputs, plan),
        "",
        "## Reproduction",
        "",
        *reproduction_section(inputs),
        "",
        "## Limitations",
        "",
        *limitations_section(inputs, plan),
    ]
    front = yaml.safe_dump(front_matter(inputs), sort_keys=False).rstrip()
    return f"---\n{front}\n---\n\n" + "\n".join(body).rstrip() + "\n"
