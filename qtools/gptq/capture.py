"""What each linear of a decoder layer sees in the runtime's own (causal) forward, accumulated into Hessians.

Forward pre-hooks on the layer's modules observe their inputs while `DecoderLayer.forward` runs, so the
calibration activations are exactly those the served model computes: q/k/v see `input_layernorm`'s output (one
Hessian for the three), o_proj the attention output, each expert's gate_proj (and so up_proj: one Hessian for the
two) the tokens routed to it, each down_proj its routed `silu(gate) * up`. The router's input is every token's MoE
input: the all-token gate/up Hessian, one matrix shared by every expert. An all-token down_proj Hessian needs every
expert run on every token (`run_all_experts`), which the routed forward does not do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from qtools.numerics.hessian import HessianAccumulator
from qtools.runtime.layers import DecoderLayer

ROUTED, ALL_TOKENS, BLEND = "routed", "all-tokens", "blend"


@dataclass
class LayerHessians:
    """The Hessians one decoder layer needs, one per distinct input, and the tokens routed to each expert.

    `attention` [H, H] (q/k/v), `o_proj` [Q, Q]; experts: `gate_up_all` [H, H] (the MoE input of every token,
    shared by every expert's gate/up), `gate_up_routed` [E, H, H], `down_routed` [E, I, I], `down_all` [E, I, I];
    each None when the recipe's coverage or targets do not need it. `routed_tokens` int64 [E].
    """

    experts: int
    # The experts whose Hessians are kept (this rank's share), in stack order: expert -> slot in the stacks.
    slot: dict[int, int] = field(default_factory=dict)
    attention: HessianAccumulator | None = None
    o_proj: HessianAccumulator | None = None
    gate_up_all: HessianAccumulator | None = None
    gate_up_routed: HessianAccumulator | None = None
    down_routed: HessianAccumulator | None = None
    down_all: HessianAccumulator | None = None
    routed_tokens: torch.Tensor = field(default=None)  # type: ignore[assignment]

    @classmethod
    def for_layer(
        cls, layer: DecoderLayer, coverage: str, attention: bool, o_proj: bool, experts: tuple[int, ...]
    ) -> LayerHessians:
        """Empty accumulators for `layer` (float32, on its device): those the targeted modules (`attention`:
        q/k/v, `o_proj`, the `experts` listed) need under `coverage` (routed, all-tokens or blend). Per-expert
        stacks hold the listed experts only."""
        attn, mlp = layer.self_attn, layer.mlp
        device = layer.input_layernorm.weight.device
        hidden, width = attn.q_proj.in_features, mlp.experts[0].down_proj.in_features
        kept = len(experts)

        def make(features: int, stack: bool, wanted: bool) -> HessianAccumulator | None:
            return HessianAccumulator(features, kept if stack else None, device=device) if wanted else None

        routed, everything = coverage in (ROUTED, BLEND), coverage in (ALL_TOKENS, BLEND)
        experts_wanted = bool(experts)
        return cls(
            experts=len(mlp.experts),
            slot={expert: index for index, expert in enumerate(experts)},
            attention=make(hidden, False, attention),
            o_proj=make(attn.o_proj.in_features, False, o_proj),
            gate_up_all=make(hidden, False, experts_wanted and everything),
            gate_up_routed=make(hidden, True, experts_wanted and routed),
            down_routed=make(width, True, experts_wanted and routed),
            down_all=make(width, True, experts_wanted and everything),
            routed_tokens=torch.zeros(len(mlp.experts), dtype=torch.int64),
        )


class _Sink:
    """Receives the captured inputs and adds them to `hessians`; `all_experts` marks the extra all-token expert
    runs, whose down inputs go to the all-token stack and whose gate inputs (the MoE input again) are skipped."""

    def __init__(self, hessians: LayerHessians, observer=None):
        self.hessians, self.observer = hessians, observer
        self.all_experts = False
        # The MoE input [N, H] of the latest forward, for `run_all_experts`.
        self.last_moe: torch.Tensor | None = None

    def attention(self, x: torch.Tensor) -> None:
        self._observe("attention", x)
        if self.hessians.attention is not None:
            self.hessians.attention.add(x)

    def o_proj(self, x: torch.Tensor) -> None:
        self._observe("o_proj", x)
        if self.hessians.o_proj is not None:
            self.hessians.o_proj.add(x)

    def moe(self, x: torch.Tensor) -> None:
        if self.all_experts:
            return
        self.last_moe = x
        self._observe("moe", x)
        if self.hessians.gate_up_all is not None:
            self.hessians.gate_up_all.add(x)

    def gate(self, expert: int, x: torch.Tensor) -> None:
        if self.all_experts:
            return
        self.hessians.routed_tokens[expert] += x.reshape(-1, x.shape[-1]).shape[0]
        slot = self.hessians.slot.get(expert)
        if self.hessians.gate_up_routed is not None and slot is not None:
            self.hessians.gate_up_routed.add(x, slot)

    def down(self, expert: int, x: torch.Tensor) -> None:
        target = self.hessians.down_all if self.all_experts else self.hessians.down_routed
        slot = self.hessians.slot.get(expert)
        if target is not None and slot is not None:
            target.add(x, slot)

    def _observe(self, where: str, x: torch.Tensor) -> None:
        if self.observer is not None:
            self.observer(where, x)


@contextmanager
def capturing(layer: DecoderLayer, hessians: LayerHessians, observer=None) -> Iterator[_Sink]:
    """Within the block, every forward of `layer` adds its modules' inputs to `hessians`. `observer(where, x)`,
    when given, also sees the attention input, o_proj input and MoE input ("attention", "o_proj", "moe")."""
    sink = _Sink(hessians, observer)
    attn, mlp = layer.self_attn, layer.mlp

    def first_input(call):
        return lambda _module, args: call(args[0].detach())

    handles = [
        attn.q_proj.register_forward_pre_hook(first_input(sink.attention)),
        attn.o_proj.register_forward_pre_hook(first_input(sink.o_proj)),
        mlp.gate.register_forward_pre_hook(first_input(sink.moe)),
    ]
    for index, expert in enumerate(mlp.experts):
        handles.append(expert.gate_proj.register_forward_pre_hook(first_input(lambda x, e=index: sink.gate(e, x))))
        handles.append(expert.down_proj.register_forward_pre_hook(first_input(lambda x, e=index: sink.down(e, x))))
    try:
        yield sink
    finally:
        for handle in handles:
            handle.remove()


def run_all_experts(layer: DecoderLayer, sink: _Sink) -> None:
    """Run every expert whose Hessians `sink` keeps (this rank's) on every token of the latest forward's MoE
    input (outputs discarded) so their down_proj inputs reach the all-token stack: the expert's own forward, as
    the served model runs it on its routed tokens."""
    x = sink.last_moe
    sink.all_experts = True
    try:
        for expert in sink.hessians.slot:
            layer.mlp.experts[expert](x)
    finally:
        sink.all_experts = False
