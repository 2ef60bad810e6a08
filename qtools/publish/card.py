"""The model card `qtools publish` writes (README.md): front-matter the Hub parses, then what a reader needs to trust
and use the checkpoint, every figure taken from the checkpoint's own files and its check report
(`qtools.publish.card_inputs` gathers them).

Sections: a one-line summary (scheme, size against BF16, headline agreement), what is quantised how (per module
family: layout and bytes, from the format registry), quality against BF16 (report.json: KL, top-1, perplexity,
tool calls, FIM, the thresholds and the report's plots), serving (vLLM and SGLang commands fitted to the format,
`qtools.publish.serving`), reproduction (commands, recipe, calibration data and its hash, versions), limitations.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from qtools.check.report.format import fmt, pct
from qtools.check.report.html import report_plots
from qtools.publish.card_inputs import CardInputs, recipe_name
from qtools.publish.serving import ServingPlan, serving_plan, sglang_command, vllm_command

PIPELINE_TAG = "text-generation"
LIBRARY_NAME = "transformers"
IMAGES_DIR = "images"
SCHEME_TAGS = {"fp8-block": ("fp8", "fp8-block", "w8a8"), "w4a16": ("int4", "w4a16", "weight-only")}


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
