"""Serving advice for a quantised checkpoint: which tensor-parallel sizes its experts allow, and the vLLM and SGLang
commands that fit them.

Tensor parallelism splits each expert's intermediate dimension (`moe_intermediate_size`, 2560 on the 480B) across
ranks, so every rank holds width / TP columns of gate/up and rows of down. The fused-MoE kernels need that per-rank
width to be a multiple of the quantisation tile: the FP8 block edge (vLLM and SGLang refuse "not divisible by
block_n = 128") or, for INT4, max(64, group size) (the Marlin MoE kernels). Expert parallelism keeps experts whole on
each rank, so the constraint disappears; it is the advice where TP alone does not divide.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtools.checkpoint.config import ModelConfig
from qtools.formats import Format, Fp8BlockLayout, Int4GroupLayout

TP_SIZES = (1, 2, 4, 8)
TOOL_PARSER = "qwen3_coder"


@dataclass(frozen=True)
class TpOption:
    """One tensor-parallel size: the per-rank expert width and why the kernels refuse it (None: they accept it)."""

    tp: int
    per_rank_width: int
    problem: str | None


@dataclass(frozen=True)
class ServingPlan:
    """The tile each quantised layout needs the per-rank expert width to divide into, each TP size's verdict, the
    largest TP the experts allow without expert parallelism (`max_tp`, 0 when none) and the sizes that need it."""

    tiles: dict[str, int]
    options: tuple[TpOption, ...]

    @property
    def max_tp(self) -> int:
        return max((option.tp for option in self.options if option.problem is None), default=0)

    @property
    def needs_expert_parallel(self) -> tuple[int, ...]:
        return tuple(option.tp for option in self.options if option.problem is not None)


def layout_tile(layout: object) -> tuple[str, int] | None:
    """(description, multiple) the per-rank expert width must be for `layout`'s MoE kernel; None for a layout
    with no such constraint."""
    if isinstance(layout, Int4GroupLayout):
        return f"INT4 g{layout.group_size}: Marlin MoE needs max(64, group)", max(64, layout.group_size)
    if isinstance(layout, Fp8BlockLayout):
        return f"FP8 block {layout.block[0]}x{layout.block[1]}", max(layout.block)
    return None


def serving_plan(fmt: Format, config: ModelConfig) -> ServingPlan:
    """The TP sizes `TP_SIZES` judged for the experts of a checkpoint in format `fmt` with `config`."""
    tiles = dict(tile for tile in map(layout_tile, fmt.layouts) if tile is not None)
    width = config.moe_intermediate_size
    options = []
    for tp in TP_SIZES:
        problems = []
        if width % tp:
            problems.append(f"expert width {width} does not split into {tp} ranks")
        else:
            problems += [
                f"{width // tp} is not a multiple of {multiple} ({name})"
                for name, multiple in tiles.items()
                if (width // tp) % multiple
            ]
        options.append(TpOption(tp, width // tp, "; ".join(problems) or None))
    return ServingPlan(tiles, tuple(options))


def vllm_command(repo_id: str, tp: int, expert_parallel: bool) -> str:
    """`vllm serve` for `repo_id` at tensor-parallel size `tp`, with Qwen3-Coder's tool-call parser."""
    parts = [f"vllm serve {repo_id}", f"--tensor-parallel-size {tp}"]
    if expert_parallel:
        parts.append("--enable-expert-parallel")
    parts += ["--enable-auto-tool-choice", f"--tool-call-parser {TOOL_PARSER}"]
    return " \\\n  ".join(parts)


def sglang_command(repo_id: str, tp: int, expert_parallel: bool) -> str:
    """`sglang.launch_server` for `repo_id` at tensor-parallel size `tp`, with Qwen3-Coder's tool-call parser."""
    parts = [f"python -m sglang.launch_server --model-path {repo_id}", f"--tp {tp}"]
    if expert_parallel:
        parts.append(f"--ep-size {tp}")
    parts.append(f"--tool-call-parser {TOOL_PARSER}")
    return " \\\n  ".join(parts)
