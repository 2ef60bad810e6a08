"""GPTQ of one decoder layer's targeted linears from its Hessians, and the layer rebuilt with the results.

Rows of linears that share an input share a Hessian and so one factorisation: an expert's gate_proj and up_proj
are quantised as one [2I, H] matrix, q/k/v as one [Q + 2K, H] matrix (GPTQ treats rows independently, so the
codes are those of separate calls). The experts of a projection go through `gptq_quantize_int4` together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qtools.errors import QtoolsError
from qtools.formats import Int4GroupLayout
from qtools.gptq.capture import ALL_TOKENS, BLEND, ROUTED, ExpertHessians, LayerHessians
from qtools.numerics.gptq import GPTQResult, gptq_quantize_int4
from qtools.numerics.hessian import blend_hessians
from qtools.recipe import Recipe
from qtools.runtime.layers import DecoderLayer
from qtools.runtime.weights import Int4GroupLinear

ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
# Experts calibrated as one group: their weights and Hessian stacks are held together and quantised by one batched
# GPTQ call. Bounds the memory (4 gate/up Hessians of the 480B: 0.6 GiB, and as much for the inverse factors); on
# the benchmark's synthetic layer 4 instead of 8 took peak RSS from 1.76 to 1.32 GiB for 4% more CPU time (the
# column sweep's per-call overhead). The codes do not depend on it: GPTQ treats experts independently.
EXPERTS_PER_STEP = 4


@dataclass(frozen=True)
class LayerTargets:
    """Which linears of layer `index` the recipe quantises: q/k/v (all or none), o_proj, and the experts whose
    gate/up/down it targets (all three or none: vLLM loads an MoE only when they share one scheme)."""

    index: int
    qkv: bool
    o_proj: bool
    experts: tuple[int, ...]

    @classmethod
    def of(cls, recipe: Recipe, index: int, num_experts: int) -> LayerTargets:
        prefix = f"model.layers.{index}"

        def targeted(names: list[str], what: str) -> bool:
            chosen = {recipe.quantizes(name) for name in names}
            if len(chosen) > 1:
                raise QtoolsError(
                    f"the recipe quantises some but not all of {', '.join(names)}: {what}; target all or none"
                )
            return chosen.pop()

        qkv = targeted([f"{prefix}.self_attn.{p}" for p in ATTENTION_INPUTS], "they share one input and Hessian")
        experts = tuple(
            e
            for e in range(num_experts)
            if targeted(
                [f"{prefix}.mlp.experts.{e}.{p}" for p in EXPERT_PROJECTIONS],
                "vLLM loads an MoE only when an expert's projections share one scheme",
            )
        )
        return cls(index, qkv, recipe.quantizes(f"{prefix}.self_attn.o_proj"), experts)

    def share(self, rank: int, world: int) -> LayerTargets:
        """What rank `rank` of `world` quantises: a contiguous block of the targeted experts (sizes differ by at
        most one), and the attention on rank 0."""
        count = len(self.experts)
        block = self.experts[rank * count // world : (rank + 1) * count // world]
        return LayerTargets(self.index, self.qkv and rank == 0, self.o_proj and rank == 0, block)


@dataclass
class LayerQuantization:
    """Quantised tensors of one layer (checkpoint name -> tensor, in the output format) and what happened: per
    targeted expert its routed tokens and, where GPTQ did not run on data, why (`fallbacks`: expert ->
    projection -> reason); `damp_raised`: (module, dampening used) where a Cholesky needed more than the recipe's."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    fallbacks: dict[int, dict[str, str]] = field(default_factory=dict)
    damp_raised: list[tuple[str, float]] = field(default_factory=list)
    modules_fallback: list[str] = field(default_factory=list)

    @classmethod
    def merged(cls, parts: list[LayerQuantization]) -> LayerQuantization:
        """One layer's results from the ranks' shares (disjoint modules), in the order one rank lists them."""
        whole = cls()
        for part in parts:
            whole.tensors.update(part.tensors)
            whole.fallbacks.update(part.fallbacks)
            whole.damp_raised += part.damp_raised
            whole.modules_fallback += part.modules_fallback
        whole.tensors = dict(sorted(whole.tensors.items()))
        whole.fallbacks = dict(sorted(whole.fallbacks.items()))
        whole.damp_raised.sort()
        whole.modules_fallback.sort()
        return whole


def _prior_strength(recipe: Recipe, routed_tokens: torch.Tensor) -> float:
    """The all-token prior's weight in tokens: `prior_strength` x the routed tokens of an average expert."""
    routed = float(routed_tokens.sum())
    return recipe.prior_strength * routed / max(1, routed_tokens.numel()) if routed else recipe.prior_strength


def _expert_hessian(
    recipe: Recipe,
    layer_hessians: LayerHessians,
    group: ExpertHessians,
    projection: str,
    experts: list[int],
    prior_tokens: float,
) -> torch.Tensor:
    """The Hessian(s) `projection` ("gate_up" or "down") of `experts` (a group) get under the recipe's
    coverage: [G, in, in], or [in, in] when one all-token gate/up Hessian serves every expert."""
    slots = [group.slot[e] for e in experts]
    # The whole stack in slot order (the usual case) is used as it is: no copy.
    index = slice(None) if slots == list(range(len(group.slot))) else torch.tensor(slots)
    routed = group.gate_up_routed if projection == "gate_up" else group.down_routed
    if recipe.coverage == ROUTED:
        return routed.mean[index]
    prior = layer_hessians.gate_up_all.mean if projection == "gate_up" else group.down_all.mean[index]
    if recipe.coverage == ALL_TOKENS:
        return prior
    assert recipe.coverage == BLEND
    tokens = layer_hessians.routed_tokens[torch.tensor(experts)]
    return blend_hessians(routed.mean[index], tokens, prior, prior_tokens)


class Quantizer:
    """GPTQ of a layer's modules into one `LayerQuantization` (`result`): output tensors and what happened."""

    def __init__(self, recipe: Recipe, layout: Int4GroupLayout, device: str, index: int, dtype_of):
        self.recipe, self.layout, self.device, self.dtype_of = recipe, layout, device, dtype_of
        self.prefix = f"model.layers.{index}"
        self.result = LayerQuantization()

    def run(self, module: str, weight: torch.Tensor, hessian: torch.Tensor, tokens: torch.Tensor | None) -> GPTQResult:
        """GPTQ of weight [E, out, in] or [out, in]; scales in the dtype `module` is stored in at the source (the
        model dtype: the layer may compute in float32, an exact widening of the BF16 weights)."""
        return gptq_quantize_int4(
            weight.to(self.device),
            hessian.to(self.device),
            group_size=self.layout.group_size,
            damp=self.recipe.damp,
            tokens=None if tokens is None else tokens.to(self.device),
            min_tokens=1,
            scale_dtype=self.dtype_of(f"{self.prefix}.{module}"),
            actorder=self.recipe.actorder,
        )

    def store(self, module: str, codes: torch.Tensor, scales: torch.Tensor) -> None:
        """The output tensors of `module` from its codes int8 [out, in] and scales [out, in / group]."""
        name = f"{self.prefix}.{module}"
        for suffix, tensor in self.layout.encode(codes.cpu(), scales.cpu()).items():
            self.result.tensors[f"{name}.{suffix}"] = tensor.contiguous()
        for suffix, tensor in self.layout.constant_tensors(tuple(codes.shape)).items():
            self.result.tensors[f"{name}.{suffix}"] = tensor

    def note_damp(self, module: str, result: GPTQResult, index: int) -> None:
        used = float(result.damp[index])
        if used > self.recipe.damp * 1.5:
            self.result.damp_raised.append((f"{self.prefix}.{module}", used))

    def attention(self, layer: DecoderLayer, hessians: LayerHessians, targets: LayerTargets) -> None:
        """GPTQ of the targeted attention linears (q/k/v as one matrix, o_proj) of the dense `layer`."""
        attn = layer.self_attn
        if targets.qkv:
            weights = [getattr(attn, p).weight for p in ATTENTION_INPUTS]
            out = self.run("self_attn.q_proj", torch.cat(weights), hessians.attention.mean, None)
            start = 0
            for projection, weight in zip(ATTENTION_INPUTS, weights, strict=True):
                rows = slice(start, start + weight.shape[0])
                self.store(f"self_attn.{projection}", out.codes[0, rows], out.scales[0, rows])
                start += weight.shape[0]
                self.note_damp(f"self_attn.{projection}", out, 0)
            if bool(out.fallback[0]):
                self.result.modules_fallback.append(f"{self.prefix}.self_attn.qkv")
        if targets.o_proj:
            out = self.run("self_attn.o_proj", attn.o_proj.weight, hessians.o_proj.mean, None)
            self.store("self_attn.o_proj", out.codes[0], out.scales[0])
            self.note_damp("self_attn.o_proj", out, 0)
            if bool(out.fallback[0]):
                self.result.modules_fallback.append(f"{self.prefix}.self_attn.o_proj")

    def experts(
        self,
        weight: torch.Tensor,
        experts: list[int],
        layer_hessians: LayerHessians,
        group: ExpertHessians,
        projection: str,
    ) -> None:
        """GPTQ of one projection ("gate_up" or "down") of a group of experts, batched: weight [G, out, in] as
        stored (gate_up: each expert's gate_proj rows, then its up_proj rows), `experts` in stack order.

        An expert routed fewer than `recipe.rtn_below_tokens` tokens is rounded to nearest (asked for); one whose
        Hessian holds no data (routed coverage, no token routed to it) or whose Cholesky fails at every
        dampening is rounded to nearest by the core (never zeroed); each is recorded in `fallbacks`.
        """
        recipe, result = self.recipe, self.result
        routed = layer_hessians.routed_tokens[torch.tensor(experts)]
        forced = routed < recipe.rtn_below_tokens
        tokens = None if not bool(forced.any()) else (~forced).long()
        prior_tokens = _prior_strength(recipe, layer_hessians.routed_tokens)
        hessian = _expert_hessian(recipe, layer_hessians, group, projection, experts, prior_tokens)
        out = self.run(f"mlp.experts.{experts[0]}.down_proj", weight, hessian, tokens)
        del hessian
        width = weight.shape[1] // 2
        for slot, expert in enumerate(experts):
            names = ("gate_proj", "up_proj") if projection == "gate_up" else ("down_proj",)
            for part, name in enumerate(names):
                rows = slice(part * width, (part + 1) * width) if projection == "gate_up" else slice(None)
                self.store(f"mlp.experts.{expert}.{name}", out.codes[slot, rows], out.scales[slot, rows])
                self.note_damp(f"mlp.experts.{expert}.{name}", out, slot)
            reason = None
            if bool(forced[slot]):
                reason = f"round-to-nearest as asked ({int(routed[slot])} routed tokens < {recipe.rtn_below_tokens})"
            elif bool(out.no_data[slot]):
                reason = "round-to-nearest: no calibration data (no token routed to it)"
            elif bool(out.cholesky_failed[slot]):
                reason = "round-to-nearest: Cholesky failed at every dampening tried"
            if reason:
                result.fallbacks.setdefault(expert, {})[projection] = reason


def expert_weights(read, prefix: str, experts: list[int], projection: str) -> torch.Tensor:
    """The stacked weights [G, out, in] of `projection` ("gate_up": gate_proj rows then up_proj rows, or "down")
    of `experts` of layer `prefix`, as stored; read(name) -> tensor."""
    names = ("gate_proj", "up_proj") if projection == "gate_up" else ("down_proj",)
    parts = [[read(f"{prefix}.mlp.experts.{e}.{name}.weight") for name in names] for e in experts]
    first = parts[0][0]
    stack = torch.empty(len(experts), first.shape[0] * len(names), first.shape[1], dtype=first.dtype)
    for slot, tensors in enumerate(parts):
        for part, tensor in enumerate(tensors):
            stack[slot, part * first.shape[0] : (part + 1) * first.shape[0]] = tensor
    return stack.to(first.device)


def quantized_linear(
    tensors: dict[str, torch.Tensor], layout: Int4GroupLayout, module: str, backend, device,
    cache_dtype: torch.dtype | None = None,
) -> Int4GroupLinear:  # fmt: skip
    """The runtime's INT4 linear for checkpoint module `module` (e.g. `model.layers.3.mlp.experts.5.up_proj`)
    from its tensors in `tensors`: what the runtime computes for the output checkpoint."""
    return Int4GroupLinear(
        tensors[f"{module}.{layout.codes_suffix}"].to(device),
        tensors[f"{module}.{layout.scale_suffixes[0]}"].to(device),
        layout,
        backend,
        cache_dtype,
    )


def quantized_modules(tensors: dict[str, torch.Tensor], layout: Int4GroupLayout, prefix: str) -> list[str]:
    """Modules under `prefix` (relative names, sorted) that `tensors` holds INT4 weights for."""
    packed = layout.codes_suffix
    return sorted(name[len(prefix) + 1 : -len(packed) - 1] for name in tensors if name.endswith(f".{packed}"))


def install_quantized(layer: DecoderLayer, tensors: dict[str, torch.Tensor], layout: Int4GroupLayout, prefix: str):
    """Replace each linear present in `layer` that `tensors` (checkpoint names under `prefix`, e.g.
    `model.layers.3`) holds INT4 weights for with the runtime's INT4 linear on those tensors (modules `layer` does
    not hold, e.g. experts read one at a time, are left to the caller)."""
    present = {name for name, _ in layer.named_modules()}
    for module in quantized_modules(tensors, layout, prefix):
        if module not in present:
            continue
        parent, _, child = module.rpartition(".")
        old = layer.get_submodule(module)
        new = quantized_linear(tensors, layout, f"{prefix}.{module}", old.backend, old.weight.device)
        setattr(layer.get_submodule(parent), child, new)
