"""What each linear of a decoder layer sees in the runtime's own (causal) forward, accumulated into Hessians.

A layer is calibrated in two stages, computing exactly what `DecoderLayer.forward` computes:
- attention, a batch of sequences at a time (`attend`): the residual h = x + attention(norm(x)) through the
  layer's own `attend`, with forward pre-hooks on q_proj and o_proj observing their inputs (q/k/v share one
  Hessian, o_proj has its own); then the MoE input m = norm(h) of every token, which is the all-token gate/up
  Hessian's input (one matrix shared by every expert), and the router's choice (`Routing`);
- experts, a group at a time, each over all the calibration tokens routed to it: its gate_proj and up_proj see m
  of its tokens (`accumulate_gate_up`: one Hessian for the two); once they are quantised, its down_proj sees
  `silu(gate) * up` of those tokens through the INT4 gate/up (`accumulate_down`: the inputs it will be served,
  as GPTQModel's true-sequential order gives them), and the same intermediates then give the expert's output for
  propagation. Expert-major order holds one group of experts' Hessians at a time instead of the whole layer's
  and runs each expert's gate/up once per layer. An all-token down Hessian runs the expert on every token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from qtools.numerics.hessian import HessianAccumulator
from qtools.runtime.layers import DecoderLayer, Expert

ROUTED, ALL_TOKENS, BLEND = "routed", "all-tokens", "blend"


@dataclass
class Routing:
    """The router's choice for N tokens among `experts`: `weights` float32 [N, k] and `ids` int64 [N, k]."""

    weights: torch.Tensor
    ids: torch.Tensor
    experts: int
    _order: torch.Tensor = field(init=False, repr=False)
    _starts: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        flat = self.ids.reshape(-1)
        # (token, slot) pairs grouped by expert, tokens ascending within an expert: the order in which
        # `MoeBlock.reference_experts` finds them with `(ids == expert).nonzero()`.
        self._order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.experts).tolist()
        self._starts = [0]
        for count in counts:
            self._starts.append(self._starts[-1] + count)

    @classmethod
    def concat(cls, parts: list[tuple[torch.Tensor, torch.Tensor]], experts: int) -> Routing:
        """One routing from the (weights, ids) of consecutive batches of tokens."""
        return cls(torch.cat([w for w, _ in parts]), torch.cat([i for _, i in parts]), experts)

    def counts(self) -> torch.Tensor:
        """int64 [experts] on CPU: tokens routed to each expert."""
        return torch.tensor([b - a for a, b in zip(self._starts, self._starts[1:], strict=False)], dtype=torch.int64)

    def tokens(self, expert: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token indices int64 [n] ascending, their slots int64 [n]) routed to `expert`."""
        chosen = self._order[self._starts[expert] : self._starts[expert + 1]]
        k = self.ids.shape[1]
        return chosen // k, chosen % k


@dataclass
class LayerHessians:
    """The layer-wide Hessians, accumulated in the attention stage: `attention` [H, H] (q/k/v), `o_proj` [Q, Q],
    `gate_up_all` [H, H] (every token's MoE input: the gate/up Hessian of every expert under all-token coverage);
    each None when the recipe's coverage or targets do not need it. `routed_tokens` int64 [E]."""

    experts: int
    attention: HessianAccumulator | None = None
    o_proj: HessianAccumulator | None = None
    gate_up_all: HessianAccumulator | None = None
    routed_tokens: torch.Tensor = field(default=None)  # type: ignore[assignment]

    @classmethod
    def for_layer(
        cls, layer: DecoderLayer, experts: int, coverage: str, attention: bool, o_proj: bool, any_expert: bool
    ) -> LayerHessians:
        """Empty accumulators (float32, on the layer's device) for what the targets (`attention`: q/k/v,
        `o_proj`, `any_expert`) need under `coverage` (routed, all-tokens or blend)."""
        attn = layer.self_attn
        device = layer.input_layernorm.weight.device

        def make(features: int, wanted: bool) -> HessianAccumulator | None:
            return HessianAccumulator(features, device=device) if wanted else None

        return cls(
            experts=experts,
            attention=make(attn.q_proj.in_features, attention),
            o_proj=make(attn.o_proj.in_features, o_proj),
            gate_up_all=make(attn.q_proj.in_features, any_expert and coverage in (ALL_TOKENS, BLEND)),
            routed_tokens=torch.zeros(experts, dtype=torch.int64),
        )


@dataclass
class ExpertHessians:
    """Per-expert Hessian stacks of one group of experts (`slot`: expert -> index in the stacks):
    `gate_up_routed` [G, H, H], `down_routed` [G, I, I], `down_all` [G, I, I]; None when the coverage does not
    need them."""

    slot: dict[int, int]
    gate_up_routed: HessianAccumulator | None = None
    down_routed: HessianAccumulator | None = None
    down_all: HessianAccumulator | None = None

    @classmethod
    def for_group(
        cls, experts: list[int], hidden: int, width: int, coverage: str, device: torch.device | str
    ) -> ExpertHessians:
        routed, everything = coverage in (ROUTED, BLEND), coverage in (ALL_TOKENS, BLEND)

        def make(features: int, wanted: bool) -> HessianAccumulator | None:
            return HessianAccumulator(features, len(experts), device=device) if wanted else None

        return cls(
            slot={expert: index for index, expert in enumerate(experts)},
            gate_up_routed=make(hidden, routed),
            down_routed=make(width, routed),
            down_all=make(width, everything),
        )


Observer = Callable[[str, torch.Tensor], None]


@contextmanager
def capturing(layer: DecoderLayer, hessians: LayerHessians, observer: Observer | None = None) -> Iterator[None]:
    """Within the block, every forward of `layer`'s attention adds the inputs of q_proj (q/k/v) and o_proj to
    `hessians`; `observer(where, x)`, when given, sees them too ("attention", "o_proj")."""

    def sink(where: str, accumulator: HessianAccumulator | None):
        def hook(_module, args) -> None:
            x = args[0].detach()
            if observer is not None:
                observer(where, x)
            if accumulator is not None:
                accumulator.add(x)

        return hook

    attn = layer.self_attn
    handles = [
        attn.q_proj.register_forward_pre_hook(sink("attention", hessians.attention)),
        attn.o_proj.register_forward_pre_hook(sink("o_proj", hessians.o_proj)),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def attend(
    layer: DecoderLayer,
    hidden: torch.Tensor,
    positions: torch.Tensor,
    hessians: LayerHessians | None = None,
    observer: Observer | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The attention stage for hidden [B, T, H]: (h = layer.attend(hidden) [B, T, H], the router's (weights,
    ids) [B * T, k]). The MoE input of every token goes to `hessians.gate_up_all` and to `observer("moe", m)`;
    run inside `capturing` for the attention Hessians."""
    h = layer.attend(hidden, positions)
    moe = layer.post_attention_layernorm(h).reshape(-1, h.shape[-1])
    if observer is not None:
        observer("moe", moe)
    if hessians is not None and hessians.gate_up_all is not None:
        hessians.gate_up_all.add(moe)
    return h, layer.mlp.route(moe)


def moe_inputs(layer: DecoderLayer, residual: torch.Tensor) -> torch.Tensor:
    """The MoE input of residual rows [n, H] (h after attention): post_attention_layernorm, row by row."""
    return layer.post_attention_layernorm(residual)


Rows = Callable[[torch.Tensor], torch.Tensor]


def accumulate_gate_up(
    layer: DecoderLayer, experts: list[int], rows: Rows, routing: Routing, hessians: ExpertHessians, chunk: int
) -> None:
    """Add the MoE inputs of the tokens routed to each of `experts` to its gate/up Hessian (routed coverage and
    blend). rows(index int64 [n]) -> the residual h of those tokens [n, H]; chunk: tokens per GEMM."""
    if hessians.gate_up_routed is None:
        return
    for expert in experts:
        chosen, _ = routing.tokens(expert)
        for first in range(0, chosen.numel(), chunk):
            hessians.gate_up_routed.add(moe_inputs(layer, rows(chosen[first : first + chunk])), hessians.slot[expert])


# An expert's `silu(gate) * up` on its routed tokens, chunk by chunk: (token indices, slots, values).
Intermediates = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def routed_intermediates(
    layer: DecoderLayer, expert: int, module: Expert, rows: Rows, routing: Routing, chunk: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(token indices [n], slots [n], silu(gate) * up [n, I]) of the tokens routed to `expert`, `chunk` tokens at a
    time, through `module`'s gate/up: the one computation calibration (down Hessians) and propagation share."""
    chosen, slots = routing.tokens(expert)
    for first in range(0, chosen.numel(), chunk):
        index = chosen[first : first + chunk]
        yield index, slots[first : first + chunk], module.intermediate(moe_inputs(layer, rows(index)))


def accumulate_down(
    layer: DecoderLayer,
    experts: dict[int, Expert],
    rows: Rows,
    tokens: int,
    routing: Routing,
    hessians: ExpertHessians,
    chunk: int,
    keep: bool = False,
) -> dict[int, Intermediates]:
    """Add each expert's down_proj inputs to its down Hessians: `silu(gate) * up` through the given modules (the
    expert with its gate/up already quantised) of its routed tokens (routed stack) and of every token (all-token
    stack). With `keep`, the routed intermediates are returned for propagation (expert -> chunks)."""
    kept: dict[int, Intermediates] = {}
    for expert, module in experts.items():
        slot = hessians.slot[expert]
        if hessians.down_routed is not None or keep:
            for index, slots, values in routed_intermediates(layer, expert, module, rows, routing, chunk):
                if hessians.down_routed is not None:
                    hessians.down_routed.add(values, slot)
                if keep:
                    kept.setdefault(expert, []).append((index, slots, values))
        if hessians.down_all is not None:
            for first in range(0, tokens, chunk):
                index = torch.arange(first, min(first + chunk, tokens))
                hessians.down_all.add(module.intermediate(moe_inputs(layer, rows(index))), slot)
    return kept


def add_expert_output(
    out: torch.Tensor, routing: Routing, index: torch.Tensor, slots: torch.Tensor, values: torch.Tensor
) -> None:
    """out float32 [N, H] += an expert's output values [n, H] for tokens `index` weighted by their router weights
    (`slots`): `MoeBlock.reference_experts`' accumulation, expert by expert in ascending order."""
    out.index_add_(0, index, values.to(torch.float32) * routing.weights[index, slots, None])
