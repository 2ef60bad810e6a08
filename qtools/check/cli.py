"""The `qtools check` command: parses arguments, calls `run_check`, prints the verdicts, sets the exit code.

Exit codes: 0 every threshold met, 1 a threshold missed (the report is still written), 2 unusable input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qtools.errors import QtoolsError


def _parse_options(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` items -> {KEY: VALUE parsed as JSON, or kept as text when it is not JSON}."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QtoolsError(f"--vllm-option takes KEY=VALUE (e.g. tensor_parallel_size=4), got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _suite_sizes(model: type, values: dict[str, int]) -> Any:
    """`model(**values)` (SuiteSizes); QtoolsError naming the CLI option of each invalid value."""
    from pydantic import ValidationError

    try:
        return model(**values)
    except ValidationError as error:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')} {e['input']}: {e['msg']}" for e in error.errors())
        raise QtoolsError(problems) from None


def check(
    ref: Annotated[Path, typer.Argument(help="reference (BF16) checkpoint directory, with its tokenizer")],
    quant: Annotated[Path, typer.Argument(help="quantised checkpoint directory to judge")],
    suite: Annotated[str, typer.Option(help="comma-separated suites: code, tools, fim, weights")] = (
        "code,tools,fim,weights"
    ),
    report: Annotated[Path | None, typer.Option(help="directory for report.json, report.md, report.html")] = None,
    fail_under: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-under",
            help="threshold KEY=VALUE (repeatable; KEY=off disables); keys and defaults in docs/check.md",
        ),
    ] = None,
    suite_file: Annotated[
        list[Path] | None, typer.Option(help="JSONL of extra code/tools/fim records (repeatable)")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="qtools (own runtime), vllm (needs vLLM installed) or openai (served models)")
    ] = "qtools",
    ref_url: Annotated[
        str | None, typer.Option(help="--engine openai: base URL of the server of the reference model")
    ] = None,
    quant_url: Annotated[
        str | None, typer.Option(help="--engine openai: base URL of the server of the quantised model")
    ] = None,
    vllm_option: Annotated[
        list[str] | None,
        typer.Option(help="vllm.LLM argument KEY=VALUE, VALUE as JSON (e.g. tensor_parallel_size=4); repeatable"),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (qtools engine)")] = "cpu",
    stream_layers: Annotated[
        bool, typer.Option(help="keep one decoder layer of each model in memory (code and weights suites only)")
    ] = False,
    dtype: Annotated[
        str, typer.Option(help="compute dtype: auto (float32 on cpu, bfloat16 on cuda), bfloat16 or float32")
    ] = "auto",
    code_tokens: Annotated[int | None, typer.Option(help="held-out code tokens to score")] = None,
    tool_prompts: Annotated[int | None, typer.Option(help="most tool prompts to decode")] = None,
    fim_prompts: Annotated[int | None, typer.Option(help="FIM prompts to decode")] = None,
    seed: Annotated[int, typer.Option(help="seed of the suite sampling")] = 0,
    profile: Annotated[
        str,
        typer.Option(help="threshold preset: auto (from the checkpoint's format), fp8 or int4; --fail-under overrides"),
    ] = "auto",
) -> None:
    """Compare a quantised checkpoint with its reference; exits 1 when a threshold is missed."""
    from qtools.check.pipeline import run_check
    from qtools.check.preflight import DTYPES, check_profile
    from qtools.check.suites import SuiteSizes, parse_suite_names
    from qtools.check.thresholds import PROFILES

    console = Console(stderr=True)
    try:
        if dtype != "auto" and dtype not in DTYPES:
            raise QtoolsError(f"--dtype must be one of {', '.join(('auto', *DTYPES))}, got {dtype!r}")
        chosen = check_profile(profile, quant)
        console.print(f"[dim]thresholds: {chosen} profile[/]")
        thresholds = PROFILES[chosen].with_overrides(fail_under or [])
        vllm_options = _parse_options(vllm_option or [])
        overrides = {"code_tokens": code_tokens, "tool_prompts": tool_prompts, "fim_prompts": fim_prompts}
        sizes = _suite_sizes(SuiteSizes, {key: value for key, value in overrides.items() if value is not None})
        result = run_check(
            ref,
            quant,
            suites=parse_suite_names(suite),
            report_dir=report,
            thresholds=thresholds,
            engine=engine,
            device=device,
            stream_layers=stream_layers,
            sizes=sizes,
            seed=seed,
            suite_files=tuple(suite_file or ()),
            dtype=None if dtype == "auto" else DTYPES[dtype],
            vllm_options=vllm_options,
            urls=None if ref_url is None and quant_url is None else (ref_url or "", quant_url or ""),
            log=lambda message: console.print(
                f"[bold yellow]{message}[/]" if message.startswith("warning:") else f"[dim]{message}[/]"
            ),
        )
    except QtoolsError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from None
    table = Table(title=f"qtools check {quant} against {ref}")
    for column in ("key", "bound", "threshold", "value", "status"):
        table.add_column(column)
    colours = {"pass": "green", "fail": "bold red", "skipped": "yellow"}
    for verdict in result.verdicts:
        if verdict["status"] == "off":
            continue
        colour = colours[verdict["status"]]
        table.add_row(
            verdict["key"],
            verdict["direction"],
            f"{verdict['threshold']:g}",
            "n/a" if verdict["value"] is None else f"{verdict['value']:.4g}",
            f"[{colour}]{verdict['status'].upper()}[/]",
        )
    Console().print(table)
    for kind, path in result.report_files.items():
        console.print(f"{kind} report: {path}")
    for warning in result.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    if not result.passed:
        console.print(f"[bold red]FAILED[/]: {', '.join(v['key'] for v in result.failures)}")
        raise typer.Exit(code=1)
    console.print(f"[green]PASSED[/] in {result.timings_s.get('total', 0):.0f}s")
