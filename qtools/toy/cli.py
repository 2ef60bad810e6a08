"""`qtools toy ...`: build the small trained Qwen3-Coder-shaped model used by offline tests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from qtools.errors import QtoolsError

toy_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Build the toy Qwen3-Coder model.")
console = Console(stderr=True)


@toy_app.command()
def build(
    out_dir: Annotated[Path, typer.Argument(help="directory to write the checkpoint and toy_gate.json into")],
    seed: Annotated[int, typer.Option(help="seed for data, initialisation and data order")] = 0,
    steps: Annotated[int | None, typer.Option(min=1, help="training steps (default: the CI recipe's)")] = None,
    no_gate: Annotated[bool, typer.Option("--no-gate", help="write the gate file but do not fail on it")] = False,
) -> None:
    """Train the toy model (about 8 minutes on two CPU cores), save it, and check its quality gate."""
    from qtools.toy import ToyRecipe, build_toy_model

    updates: dict[str, object] = {"enforce_gate": not no_gate}
    if steps is not None:
        updates["steps"] = steps
    try:
        figures = build_toy_model(out_dir, seed=seed, recipe=ToyRecipe().model_copy(update=updates), log=console.print)
    except QtoolsError as error:
        console.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(code=2) from error
    console.print(
        f"[bold green]toy model written to {out_dir}[/]: tool calls parseable {figures['tool_parseable']:.0%}, "
        f"right name {figures['tool_right_name']:.0%}, held-out code ppl {figures['heldout_code_ppl']:.1f} "
        f"(unigram {figures['unigram_ppl']:.1f}), {figures['timings_s']['total']:.0f}s"
    )
