"""The `qtools` command line: parses arguments, calls the public API, prints results."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from qtools.check.cli import check
from qtools.errors import QtoolsError
from qtools.toy.cli import toy_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Quantise and check Qwen3-Coder MoE checkpoints.")
console = Console(stderr=True)
# The default of `convert --recipe`: a recipe shipped inside the package (qtools/recipes/), so it is found
# wherever qtools is installed. Kept here, not imported from qtools.recipe, so `--help` imports no pydantic.
DEFAULT_RECIPE = "fp8-block"


def _fail(error: Exception) -> None:
    # Unwrapped: rich would otherwise fold or cut the long paths errors name, which users copy from the message.
    console.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="BF16 source checkpoint directory (never written to)")],
    dst: Annotated[Path, typer.Argument(help="output directory (new, empty, or an unfinished run to resume)")],
    recipe: Annotated[
        str,
        typer.Option(
            help="a shipped recipe's name (fp8-block, fp8-block-compressed-tensors, w4a16-rtn, w4a16-rtn-tp8, "
            "w4a16-rtn-fp8-attention, w4a16-gptq, w4a16-gptq-tp8) or the path of a recipe YAML; an unknown name "
            "lists the shipped ones"
        ),
    ] = DEFAULT_RECIPE,
    format: Annotated[
        str | None, typer.Option("--format", help="hf-fp8 or compressed-tensors (overrides the recipe)")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(min=0, help="worker processes on this machine (at most one per shard); 0 = one per core"),
    ] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N: where the quantisation arithmetic runs")] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="discard an earlier run with another recipe or source")] = False,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="calibrated recipes (w4a16-gptq*): a local JSONL / parquet / text folder or a Hub dataset; "
            "omitted: the built-in default set"
        ),
    ] = None,
    calibration_samples: Annotated[int, typer.Option(min=1, help="calibration sequences")] = 128,
    calibration_seq_len: Annotated[int, typer.Option(min=1, help="tokens per calibration sequence")] = 2048,
    calibration_seed: Annotated[int, typer.Option(help="seed choosing the calibration sequences")] = 0,
    calibration_split: Annotated[str, typer.Option(help="Hub dataset split")] = "train",
    calibration_column: Annotated[
        str | None, typer.Option(help="column holding the text or chat messages (default: messages, text, content)")
    ] = None,
    calibration_revision: Annotated[str | None, typer.Option(help="Hub dataset revision")] = None,
    calibration_batch: Annotated[int, typer.Option(min=1, help="calibration sequences per forward")] = 8,
    max_memory: Annotated[
        str | None,
        typer.Option(help="calibrated recipes: memory for hidden states (e.g. 16GiB) past which they spill to disk"),
    ] = None,
) -> None:
    """Convert a checkpoint shard by shard (resumable; under torchrun each rank takes a share of the shards);
    a calibrated recipe (method: gptq) converts layer by layer over calibration data instead."""
    from qtools.convert import ConversionInterrupted, ProgressHooks, convert_checkpoint
    from qtools.recipe import load_recipe

    try:
        parsed = load_recipe(recipe, format)
    except QtoolsError as error:
        _fail(error)
    if parsed.calibrated:
        _convert_calibrated(
            src, dst, parsed, device, overwrite,
            CalibrationRequest(
                calibration, calibration_samples, calibration_seq_len, calibration_seed, calibration_split,
                calibration_column, calibration_revision,
            ),
            calibration_batch, max_memory,
        )  # fmt: skip
        return
    rank = int(os.environ.get("RANK", "0"))
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[shards]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=rank != 0,
    )
    task = progress.add_task("convert", total=None, shards="")
    counts = {"done": 0, "total": 0}

    def on_start(total_bytes: int, shards: int, _reused: int) -> None:
        counts["total"] = shards
        progress.update(task, total=total_bytes, shards=f"shards 0/{shards}")

    def on_shard_done(_: str) -> None:
        counts["done"] += 1
        progress.update(task, shards=f"shards {counts['done']}/{counts['total']}")

    def on_warning(message: str) -> None:
        if rank == 0:
            console.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)

    hooks = ProgressHooks(on_start, lambda n: progress.advance(task, n), on_shard_done, on_warning)
    try:
        with progress:
            summary = convert_checkpoint(src, dst, parsed, workers, device, overwrite, hooks)
    except QtoolsError as error:
        _fail(error)
    except KeyboardInterrupt as interrupt:
        where = str(interrupt) if isinstance(interrupt, ConversionInterrupted) else "before converting began"
        console.print(f"[bold red]interrupted:[/] {where}; rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(code=130) from None
    if rank != 0:
        return
    table = Table(title=f"converted {src} -> {dst} ({parsed.format})", show_header=False)
    table.add_row("shards converted / reused", f"{summary.shards_converted} / {summary.shards_reused}")
    table.add_row("tensors converted / kept", f"{summary.tensors_converted} / {summary.tensors_kept}")
    table.add_row("bytes in (read this run)", f"{summary.source_bytes / 1e9:.3f} GB")
    table.add_row("bytes out (whole checkpoint)", f"{summary.output_bytes / 1e9:.3f} GB")
    table.add_row("seconds", f"{summary.seconds:.2f}")
    table.add_row("throughput", f"{summary.gb_per_second:.3f} GB/s of source read")
    Console().print(table)


_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_size(text: str) -> int:
    """Bytes of a size such as `16GiB`, `500MB` or `1000000`; QtoolsError for anything else."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise QtoolsError(f"--max-memory {text!r}: give a size such as 16GiB, 500MB or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class CalibrationRequest:
    """The --calibration* options: what `qtools.calibration.load_calibration` is asked for."""

    spec: str | None
    samples: int
    seq_len: int
    seed: int
    split: str
    column: str | None
    revision: str | None

    def load(self, src: Path):
        from qtools.calibration import load_calibration

        return load_calibration(
            self.spec, src, self.samples, self.seq_len, self.seed,
            split=self.split, column=self.column, revision=self.revision,
        )  # fmt: skip


def _convert_calibrated(
    src: Path,
    dst: Path,
    recipe,
    device: str,
    overwrite: bool,
    calibration: CalibrationRequest,
    batch: int,
    max_memory: str | None,
) -> None:
    """`qtools convert` for a calibrated recipe: qtools.gptq, with one progress bar per layer phase."""
    from qtools.gptq import GPTQHooks, convert_gptq

    rank = int(os.environ.get("RANK", "0"))
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=rank != 0,
    )
    layers = {"total": 0}
    current = {"task": None}

    def on_start(total: int, finished: int, tokens: int) -> None:
        layers["total"] = total
        if rank != 0:
            return
        if finished:
            console.print(f"resuming: layers 0-{finished - 1} of {total} are finished and kept")
        console.print(f"calibrating on {tokens} tokens")

    def on_layer_start(layer: int, phase: str, units: int) -> None:
        if current["task"] is not None:
            progress.update(current["task"], visible=False)
        unit = "experts" if phase == "quantise" else "tokens"
        current["task"] = progress.add_task(f"layer {layer + 1}/{layers['total']} {phase}", total=units, unit=unit)

    def on_advance(units: int) -> None:
        if current["task"] is not None:
            progress.advance(current["task"], units)

    def on_warning(message: str) -> None:
        console.print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True, highlight=False)

    hooks = GPTQHooks(on_start, on_layer_start, on_advance, None, on_warning)
    try:
        limit = parse_size(max_memory) if max_memory is not None else None
        data = calibration.load(src)
        with progress:
            summary = convert_gptq(src, dst, recipe, data, device, overwrite, limit, batch, hooks)
    except QtoolsError as error:
        _fail(error)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted:[/] finished layers are kept; rerun the same command to resume")
        raise typer.Exit(code=130) from None
    if rank != 0:
        return
    table = Table(title=f"converted {src} -> {dst} (GPTQ, coverage {recipe.coverage})", show_header=False)
    table.add_row("layers calibrated / reused", f"{summary.layers_calibrated} / {summary.layers_reused}")
    table.add_row("experts calibrated / fallback", f"{summary.experts_calibrated} / {summary.experts_fallback}")
    table.add_row("calibration tokens", str(summary.report["calibration"]["tokens"]))
    table.add_row("seconds", f"{summary.seconds:.2f}")
    table.add_row("peak memory (RSS)", f"{summary.peak_rss_bytes / 2**30:.2f} GiB")
    if summary.peak_device_bytes:
        table.add_row("peak device memory", f"{summary.peak_device_bytes / 2**30:.2f} GiB")
    table.add_row("report", str(dst / ".qtools" / "calibration.json"))
    Console().print(table)


@app.command()
def verify(
    ckpt: Annotated[Path, typer.Argument(help="checkpoint directory to check")],
    deep: Annotated[
        bool, typer.Option(help="also read every tensor (NaN codes, non-finite values) and check shard digests")
    ] = False,
) -> None:
    """Check a checkpoint: exit 0 when it passes, 1 naming each problem when it fails, 2 when it cannot be checked
    (no checkpoint there, or no usable config.json)."""
    from qtools.verify import verify_checkpoint

    report = verify_checkpoint(ckpt, deep=deep)
    if report.error is not None:
        _fail(report.error)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.ok:
        Console().print(
            f"[green]OK[/] {ckpt}: {report.tensors} tensors, {report.quantized_modules} quantised modules "
            f"({report.format})"
        )
        return
    for problem in report.problems:
        console.print(f"[red]problem:[/] {problem}")
    console.print(f"[bold red]FAILED[/] {ckpt}: {len(report.problems)} problem(s)")
    raise typer.Exit(code=1)


@app.command()
def inspect(ckpt: Annotated[Path, typer.Argument(help="checkpoint directory")]) -> None:
    """Print what a checkpoint holds: format per module family, bytes, layer and expert counts."""
    from qtools.inspect import inspect_checkpoint

    try:
        summary = inspect_checkpoint(ckpt)
    except QtoolsError as error:
        _fail(error)
    layouts = f" ({'; '.join(summary.layouts)})" if summary.layouts else ""
    table = Table(
        title=f"{ckpt}: {summary.quant_method}{layouts}, {summary.layers} layers, {summary.experts} experts, "
        f"{summary.shards} shards, {summary.total_bytes / 1e9:.3f} GB"
    )
    for column in ("family", "dtype", "tensors", "scales", "GB"):
        table.add_column(column, justify="right" if column in ("tensors", "scales", "GB") else "left")
    for name, fam in summary.families.items():
        table.add_row(name, ", ".join(sorted(fam.dtypes)), str(fam.tensors), str(fam.scales), f"{fam.bytes / 1e9:.4f}")
    Console().print(table)
    if summary.format_problem:
        console.print(f"[yellow]format:[/] {summary.format_problem}")
    if summary.config_problem:
        console.print(f"[yellow]config:[/] {summary.config_problem}")
    else:
        c = summary.config
        Console().print(
            f"config: {c.num_layers} layers of {c.num_experts} experts (top-{c.top_k}), hidden {c.hidden_size}, "
            f"{c.num_heads}/{c.num_kv_heads} heads of {c.head_dim}, expert width {c.moe_intermediate_size}, "
            f"vocab {c.vocab_size}, dtype {c.dtype or 'not declared'}"
        )
    if summary.calibration:
        _print_calibration(summary.calibration)


def _print_calibration(report: dict) -> None:
    """The calibration report of a GPTQ output: data, coverage, per layer the routed tokens and fallbacks."""
    data = report.get("calibration", {})
    Console().print(
        f"calibration: {report.get('method')} coverage {report.get('coverage')}, {data.get('samples')} x "
        f"{data.get('seq_len')} tokens from {data.get('source')} (sha256 {str(data.get('sha256'))[:16]}...); "
        f"experts calibrated {report.get('experts_calibrated')} / fallback {report.get('experts_fallback')}"
    )
    table = Table(title="routed calibration tokens per expert")
    for column in ("layer", "min", "median", "max", "experts with none", "fallback"):
        table.add_column(column, justify="right" if column != "fallback" else "left")
    for layer in report["layers"]:
        counts = sorted(layer.get("routed_tokens") or [0])
        fallbacks = ", ".join(f"expert {e} ({', '.join(p)})" for e, p in layer.get("fallbacks", {}).items())
        table.add_row(
            str(layer.get("layer")), str(counts[0]), str(counts[len(counts) // 2]), str(counts[-1]),
            str(sum(c == 0 for c in counts)), fallbacks or "-",
        )  # fmt: skip
    Console().print(table)


@app.command()
def publish(
    ckpt: Annotated[Path, typer.Argument(help="quantised checkpoint directory (qtools verify must pass on it)")],
    repo: Annotated[str, typer.Option(help="Hub model repository ORG/NAME (created when missing)")],
    report: Annotated[
        Path | None,
        typer.Option(
            help="`qtools check --report` directory of THIS checkpoint: it must have passed; its figures "
            "and plots go into the card"
        ),
    ] = None,
    private: Annotated[bool, typer.Option(help="create the repository private")] = False,
    revision: Annotated[str | None, typer.Option(help="branch to commit to (created from main when missing)")] = None,
    create_pr: Annotated[bool, typer.Option(help="open a pull request against main instead of committing")] = False,
    dry_run: Annotated[bool, typer.Option(help="stage the card and list what would be sent; send nothing")] = False,
    base_model: Annotated[
        str | None, typer.Option(help="Hub id of the BF16 model (default: from config.json / the recorded source)")
    ] = None,
    card_overwrite: Annotated[
        bool, typer.Option(help="replace a README.md of the checkpoint's own (or the repository's) with the card")
    ] = False,
    stage_dir: Annotated[
        Path | None, typer.Option(help="where to stage the card and links to the files (default CKPT/.qtools/publish)")
    ] = None,
) -> None:
    """Publish a quantised checkpoint with a model card to the Hugging Face Hub (resumable: rerun after an
    interruption and files already uploaded are not sent again). Token: HF_TOKEN or `hf auth login`."""
    from qtools.checkpoint.identity import CARD_NAME
    from qtools.publish import PublishRequest, publish_checkpoint

    # HF_ENDPOINT read now, not when huggingface_hub was imported, so the command follows the environment it runs in.
    request = PublishRequest(
        ckpt, repo, report, private, revision, create_pr, dry_run, base_model, card_overwrite, stage_dir,
        endpoint=os.environ.get("HF_ENDPOINT"),
    )  # fmt: skip
    try:
        summary = publish_checkpoint(request, say=lambda message: console.print(escape(message), highlight=False))
    except QtoolsError as error:
        _fail(error)
    for warning in summary.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)
    plan = summary.plan
    skipped = {f.path_in_repo for f in plan.skipped} if plan else set()
    stored = {f.path_in_repo for f in plan.stored} if plan else set()
    title = f"{'dry run: would send' if dry_run else 'published'} {ckpt} -> {repo}"
    table = Table(title=title)
    for column in ("file", "bytes", "status"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for staged in summary.files:
        status = "would send" if plan is None else (
            "skipped (already there)" if staged.path_in_repo in skipped else
            "committed (bytes already stored)" if staged.path_in_repo in stored else "sent"
        )  # fmt: skip
        table.add_row(staged.path_in_repo, str(staged.size), status)
    Console().print(table)
    Console().print(f"card: {summary.stage_dir / CARD_NAME}")
    if plan is None:
        Console().print(f"{len(summary.files)} files, {summary.total_bytes} bytes would be sent (nothing was sent)")
        return
    sent_bytes = plan.bytes_to_send
    skipped_bytes = sum(f.size for f in plan.skipped)
    Console().print(
        f"sent {len(plan.send) - len(plan.stored)} file(s) ({sent_bytes} bytes); skipped {len(plan.skipped)} "
        f"already in the repository ({skipped_bytes} bytes) and {len(plan.stored)} whose bytes were already stored"
    )
    Console().print(f"commit: {summary.pr_url or summary.commit_url}")


app.command()(check)
app.add_typer(toy_app, name="toy")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
