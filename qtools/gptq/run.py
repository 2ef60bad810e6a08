"""`convert_gptq`: a calibrated W4A16 conversion, layer by layer from the BF16 shards.

Validate everything up front and lock the output (qtools.convert's plan, lock and state); embed the calibration
tokens; then per decoder layer: load it dense (the runtime's loader), run the hidden states through it causally
with its modules' inputs captured into Hessians, GPTQ the targeted linears, save the layer's tensors (the resume
point), rebuild the layer with those INT4 weights and run it to produce the next layer's inputs (error
propagation), free it. A resumed run recomputes the hidden states through the finished layers from their files,
so it computes exactly what an uninterrupted run does. Last, the output shards are assembled, the calibration
report written to `DST/.qtools/calibration.json` and config and index written as the model-free converter does.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from qtools.calibration import CalibrationSet
from qtools.checkpoint.hf import CALIBRATION_REPORT, INDEX_NAME, STATE_DIR, Checkpoint
from qtools.checkpoint.safetensors_io import write_atomic
from qtools.convert.distributed import Group, session
from qtools.convert.lock import destination_lock
from qtools.convert.plan import plan_conversion
from qtools.convert.run import check_device, check_paths, finalize_checkpoint
from qtools.convert.state import (
    finished_record,
    prepare_destination,
    refuse_foreign_destination,
    source_change,
    source_fingerprint,
    source_identity,
)
from qtools.errors import QtoolsError
from qtools.formats import DenseFormat, detect, format_for_recipe
from qtools.gptq.assemble import write_shard
from qtools.gptq.capture import (
    ExpertHessians,
    LayerHessians,
    Routing,
    accumulate_down,
    accumulate_gate_up,
    add_expert_output,
    attend,
    capturing,
    routed_intermediates,
)
from qtools.gptq.hidden import hidden_stores
from qtools.gptq.layer_files import finished_layer, layers_dir, load_layer_tensors, save_layer
from qtools.gptq.memory import release_freed_memory
from qtools.gptq.quantize import (
    EXPERT_PROJECTIONS,
    EXPERTS_PER_STEP,
    LayerQuantization,
    LayerTargets,
    Quantizer,
    expert_weights,
    install_quantized,
    quantized_linear,
)
from qtools.recipe import Recipe
from qtools.runtime.layers import Expert
from qtools.runtime.loading import CheckpointLoader

DEFAULT_BATCH = 8
# Activations and dense weights: the served model's bfloat16 on CUDA; float32 on CPU, where bf16 matmuls without
# AMX run about 10x slower than float32 ones (and float32 of the BF16 weights is the more exact forward).
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def compute_dtype(name: str, device: str) -> torch.dtype:
    """The compute dtype `name` (auto, bfloat16 or float32) means on `device`."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise QtoolsError(f"compute dtype {name!r}: choose auto, bfloat16 or float32")
    return DTYPES[name]


@dataclass
class GPTQHooks:
    """Callbacks for a front end (the CLI's progress bars); all optional. Without `on_warning`, warnings go
    through `warnings.warn`."""

    on_start: Callable[[int, int, int], None] | None = None  # (layers, layers already finished, tokens)
    on_layer_start: Callable[[int, str, int], None] | None = None  # (layer, phase, units of work in the phase)
    on_advance: Callable[[int], None] | None = None  # units (tokens, or experts while quantising) done
    on_layer_done: Callable[[int, dict], None] | None = None  # (layer, its report)
    on_warning: Callable[[str], None] | None = None
    # (layer, "attention" | "o_proj" | "moe", inputs [N, in]): what the Hessians of a layer being calibrated see.
    on_inputs: Callable[[int, str, torch.Tensor], None] | None = None

    def warn(self, message: str) -> None:
        if self.on_warning:
            self.on_warning(message)
        else:
            import warnings

            warnings.warn(message, stacklevel=3)

    def phase(self, layer: int, name: str, units: int) -> None:
        if self.on_layer_start:
            self.on_layer_start(layer, name, units)

    def advance(self, units: int) -> None:
        if self.on_advance:
            self.on_advance(units)


@dataclass
class GPTQSummary:
    """What a calibrated conversion did: layers calibrated this run or reused from an interrupted one, experts
    calibrated by GPTQ on data or rounded to nearest (with the reasons in `report`), time and peak memory."""

    destination: Path
    layers: int
    layers_calibrated: int = 0
    layers_reused: int = 0
    experts: int = 0
    experts_calibrated: int = 0
    experts_fallback: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_device_bytes: int = 0
    report: dict = field(default_factory=dict)


def _validate(checkpoint: Checkpoint, recipe: Recipe, calibration: CalibrationSet, batch_size: int) -> None:
    if not recipe.calibrated:
        raise QtoolsError(f"recipe method {recipe.method!r} is not calibrated: use qtools.convert.convert_checkpoint")
    fmt = detect(checkpoint.config)
    if not isinstance(fmt, DenseFormat):
        raise QtoolsError(
            f"{checkpoint.root}: is already quantised ({fmt.label}); GPTQ calibrates from the BF16 checkpoint"
        )
    config = checkpoint.model_config
    ids = calibration.input_ids
    if int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size:
        raise QtoolsError(
            f"calibration {calibration.source}: token ids must lie in [0, {config.vocab_size}) (the model's "
            f"vocabulary), got {int(ids.min())}..{int(ids.max())}: tokenised for another model?"
        )
    if batch_size <= 0:
        raise QtoolsError(f"calibration batch size must be positive, got {batch_size}")


def _expert_outcome(report: dict) -> tuple[int, int]:
    """(experts calibrated, experts rounded to nearest) in a layer report."""
    fallback = len(report["fallbacks"])
    return report["experts"] - fallback, fallback


def _layer_report(index: int, routed: list[int], experts: int, quantized: LayerQuantization, tokens: int) -> dict:
    return {
        "layer": index,
        "tokens": tokens,
        "experts": experts,
        "routed_tokens": routed,
        "fallbacks": {str(e): reasons for e, reasons in sorted(quantized.fallbacks.items())},
        "damp_raised": [[module, damp] for module, damp in quantized.damp_raised],
        "modules_fallback": quantized.modules_fallback,
    }


def _full_report(recipe: Recipe, calibration: CalibrationSet, reports: list[dict]) -> dict:
    calibrated = sum(_expert_outcome(r)[0] for r in reports)
    fallback = sum(_expert_outcome(r)[1] for r in reports)
    reasons: dict[str, int] = {}
    for report in reports:
        for projections in report["fallbacks"].values():
            for reason in sorted(set(projections.values())):
                key = reason.split(" (")[0].split(":")[-1].strip()
                reasons[key] = reasons.get(key, 0) + 1
    return {
        "calibration": {
            "sha256": calibration.sha256,
            "source": calibration.source,
            "samples": calibration.samples,
            "seq_len": calibration.seq_len,
            "tokens": calibration.tokens,
        },
        "method": recipe.method,
        "coverage": recipe.coverage,
        "damp": recipe.damp,
        "prior_strength": recipe.prior_strength,
        "rtn_below_tokens": recipe.rtn_below_tokens,
        "group_size": recipe.group_size,
        "experts": calibrated + fallback,
        "experts_calibrated": calibrated,
        "experts_fallback": fallback,
        "fallback_reasons": dict(sorted(reasons.items())),
        "damp_raised": sum(len(r["damp_raised"]) for r in reports),
        "layers": reports,
    }


def _warn_fallbacks(hooks: GPTQHooks, report: dict, damp: float) -> None:
    for expert, projections in report["fallbacks"].items():
        tokens = report["routed_tokens"][int(expert)]
        described = "; ".join(f"{projection}: {reason}" for projection, reason in projections.items())
        hooks.warn(
            f"layer {report['layer']} expert {expert}: {described} ({tokens} of {report['tokens']} calibration "
            "tokens routed to it)"
        )
    for module, used in report["damp_raised"]:
        hooks.warn(f"{module}: the Cholesky factorisation needed dampening {used:g} (the recipe's: {damp:g})")
    for module in report["modules_fallback"]:
        hooks.warn(f"{module}: rounded to nearest (no data or Cholesky failed)")


class _LayerRunner:
    """Runs one conversion's layers over the calibration hidden states.

    Per layer: the attention stage over batches of sequences writes the post-attention residual of every token
    into `following` and keeps the router's choice; then, expert-major, each expert runs once on all its tokens:
    calibration (Hessians from its BF16 weights, GPTQ a group of experts at a time) and propagation (its INT4
    weights, read back from the layer file, on the MoE inputs of its tokens, accumulated in float32 in ascending
    expert order as the runtime's MoE does); `following` then holds the layer's output.
    """

    def __init__(
        self, group: Group, checkpoint, destination, recipe, calibration, device, dtype, max_memory, batch_size, hooks
    ):
        self.group, self.destination, self.recipe, self.hooks = group, destination, recipe, hooks
        self.device, self.batch, self.dtype = torch.device(device), batch_size, dtype
        self.loader = CheckpointLoader(checkpoint, device, dtype, "torch", act_quant=False)
        self.config = self.loader.config
        self.layout = format_for_recipe(recipe).layout_for("model.layers.0.mlp.experts.0.gate_proj")
        self.ids = calibration.input_ids
        samples, length = self.ids.shape
        shape = (samples, length, self.config.hidden_size)
        self.current, self.following = hidden_stores(
            shape, dtype, max_memory, destination / STATE_DIR / "hidden" / f"rank-{group.rank}"
        )
        self.positions = torch.arange(length, device=self.device)
        self.tokens = samples * length
        self._moe_out: torch.Tensor | None = None  # the MoE output of a fused calibration (see `_calibrate_share`)
        # Tokens per expert GEMM: one calibration batch's worth.
        self.chunk = batch_size * length

    def stored_dtype(self, module: str) -> torch.dtype:
        return self.loader.source.info(f"{module}.weight").dtype

    def batches(self) -> list[tuple[int, int]]:
        samples = self.ids.shape[0]
        return [(first, min(self.batch, samples - first)) for first in range(0, samples, self.batch)]

    def residual_rows(self, index: torch.Tensor) -> torch.Tensor:
        """The post-attention residual of tokens `index` (flat token positions) [n, H], on the device."""
        return self.following.rows(index, self.device)

    def embed(self) -> None:
        c = self.config
        table = self.loader.source.read_shape_checked(
            "model.embed_tokens.weight", (c.vocab_size, c.hidden_size), self.device, self.dtype
        )
        for first, count in self.batches():
            self.current.write(first, F.embedding(self.ids[first : first + count].to(self.device), table))

    def attention_stage(self, layer, hessians=None, observer=None) -> Routing:
        """h = x + attention(norm(x)) of every token into `following`; the router's choice for every token."""
        parts = []
        for first, count in self.batches():
            h, routing = attend(layer, self.current.read(first, count, self.device), self.positions, hessians, observer)
            self.following.write(first, h)
            parts.append(routing)
            self.hooks.advance(count * self.ids.shape[1])
        return Routing.concat(parts, self.config.num_experts)

    def calibrate(self, index: int, layer, targets: LayerTargets) -> tuple[dict, Routing]:
        """Hessians and GPTQ of this rank's share of the layer's targets (every rank runs every token through
        the attention; each calibrates and quantises its own experts); rank 0 saves the merged layer."""
        mine = targets.share(self.group.rank, self.group.world)
        parts = self.group.run_and_gather(lambda: self._calibrate_share(index, layer, mine))
        quantized = LayerQuantization.merged([part for part, _ in parts])
        report = _layer_report(index, parts[0][1], len(targets.experts), quantized, self.ids.numel())
        self.group.run_on_rank0_then_share(lambda: save_layer(self.destination, index, quantized.tensors, report))
        return report, self._routing

    def _calibrate_share(self, index: int, layer, mine: LayerTargets) -> tuple[LayerQuantization, list[int]]:
        c = self.config
        hessians = LayerHessians.for_layer(
            layer, c.num_experts, self.recipe.coverage, mine.qkv, mine.o_proj, bool(mine.experts)
        )
        observer = None
        if self.hooks.on_inputs is not None:
            observer = lambda where, x: self.hooks.on_inputs(index, where, x)  # noqa: E731
        self.hooks.phase(index, "calibrate", self.ids.numel())
        with capturing(layer, hessians, observer):
            routing = self.attention_stage(layer, hessians, observer)
        self._routing = routing
        hessians.routed_tokens = routing.counts()
        quantizer = Quantizer(self.recipe, self.layout, str(self.device), index, self.stored_dtype)
        self.hooks.phase(index, "quantise", len(mine.experts))
        quantizer.attention(layer, hessians, mine)
        # One process, attention kept BF16, a layer to propagate: the intermediates of the down Hessians are the
        # MoE inputs propagation needs, so each expert's output is computed here, once.
        fused = self.group.world == 1 and not (mine.qkv or mine.o_proj) and index + 1 < c.num_layers
        self._moe_out = torch.zeros(self.tokens, c.hidden_size, device=self.device) if fused else None
        prefix = f"model.layers.{index}"
        backend = layer.mlp.gate.backend
        for first in range(0, len(mine.experts), EXPERTS_PER_STEP):
            step = list(mine.experts[first : first + EXPERTS_PER_STEP])
            stacks = ExpertHessians.for_group(
                step, c.hidden_size, c.moe_intermediate_size, self.recipe.coverage, self.device
            )
            accumulate_gate_up(layer, step, self.residual_rows, routing, stacks, self.chunk)
            quantizer.experts(self._weights(prefix, step, "gate_up"), step, hessians, stacks, "gate_up")
            tensors = quantizer.result.tensors
            half = {e: self._expert(tensors, prefix, e, backend, ("gate_proj", "up_proj")) for e in step}
            kept = accumulate_down(
                layer, half, self.residual_rows, self.tokens, routing, stacks, self.chunk, keep=fused
            )
            del half
            quantizer.experts(self._weights(prefix, step, "down"), step, hessians, stacks, "down")
            del stacks
            for expert, chunks in kept.items():
                down = quantized_linear(
                    tensors, self.layout, f"{prefix}.mlp.experts.{expert}.down_proj", backend, self.device, self.dtype
                )
                for rows, slots, values in chunks:
                    add_expert_output(self._moe_out, routing, rows, slots, down(values))
            del kept
            release_freed_memory()
            self.hooks.advance(len(step))
        return quantizer.result, hessians.routed_tokens.tolist()

    def _weights(self, prefix: str, experts: list[int], projection: str) -> torch.Tensor:
        """The experts' stacked `projection` weights as stored (bf16), on the device: what GPTQ quantises."""
        return expert_weights(lambda name: self.loader.source.read(name, self.device), prefix, experts, projection)

    def _expert(self, tensors, prefix: str, expert: int, backend, quantized: tuple[str, ...]) -> Expert:
        """Expert `expert` with the projections in `quantized` as INT4 from `tensors` (dequantised once, in the
        compute dtype); without down_proj among them, the module serves `intermediate` only."""
        linears = {
            p: quantized_linear(
                tensors, self.layout, f"{prefix}.mlp.experts.{expert}.{p}", backend, self.device, self.dtype
            )
            for p in quantized
        }
        return Expert(linears["gate_proj"], linears["up_proj"], linears.get("down_proj"))

    def propagate(self, index: int, layer, tensors: dict[str, torch.Tensor], routing: Routing | None) -> None:
        """`following` <- the output of layer `index` as the output checkpoint holds it (`tensors`: its INT4
        tensors). `routing`: that of an attention stage just run on the same attention weights, or None to run it
        (a resumed run, or quantised attention). Each expert computes exactly what the fused calibration computes
        (`routed_intermediates` through its INT4 gate/up, then its INT4 down_proj), so both give the same bits."""
        prefix = f"model.layers.{index}"
        self.hooks.phase(index, "propagate", self.ids.numel() * (2 if routing is None else 1))
        if routing is None:
            install_quantized(layer, tensors, self.layout, prefix)
            routing = self.attention_stage(layer)
        out = torch.zeros(self.tokens, self.config.hidden_size, dtype=torch.float32, device=self.device)
        backend = layer.mlp.gate.backend
        for expert in range(self.config.num_experts):
            if routing.tokens(expert)[0].numel() == 0:
                continue
            if f"{prefix}.mlp.experts.{expert}.gate_proj.{self.layout.codes_suffix}" in tensors:
                module = self._expert(tensors, prefix, expert, backend, EXPERT_PROJECTIONS)
            else:
                module = self.loader.expert(index, expert)
            for rows, slots, values in routed_intermediates(
                layer, expert, module, self.residual_rows, routing, self.chunk
            ):
                add_expert_output(out, routing, rows, slots, module.down_proj(values))
            del module
        self.finish_layer(out)

    def finish_layer(self, out: torch.Tensor) -> None:
        """`following` (the post-attention residual) += the MoE output out float32 [N, H], in the compute dtype
        (the runtime's `hidden + mlp(...)`); it becomes the next layer's input."""
        length = self.ids.shape[1]
        out = out.view(-1, length, self.config.hidden_size)
        for first, count in self.batches():
            self.following.add(first, out[first : first + count].to(self.dtype))
            self.hooks.advance(count * length)
        self.current, self.following = self.following, self.current

    def run(self, first_todo: int) -> list[dict]:
        """Every layer's report; layers before `first_todo` are finished and only propagated through."""
        reports = []
        layers = self.config.num_layers
        with torch.no_grad():
            self.embed()
            for index in range(layers):
                targets = LayerTargets.of(self.recipe, index, self.config.num_experts)
                report = finished_layer(self.destination, index) if index < first_todo else None
                if report is None and index < first_todo:
                    raise QtoolsError(f"{layers_dir(self.destination)}: layer {index} changed during the run")
                layer = self.loader.layer(index, experts=False)
                routing = None
                if report is None:
                    report, routing = self.calibrate(index, layer, targets)
                    if self.group.rank == 0:
                        _warn_fallbacks(self.hooks, report, self.recipe.damp)
                    if self.hooks.on_layer_done:
                        self.hooks.on_layer_done(index, report)
                    if targets.qkv or targets.o_proj:
                        routing = None  # the attention changed: its stage runs again on the INT4 weights
                reports.append(report)
                if index + 1 < layers and self._moe_out is not None:
                    self.hooks.phase(index, "propagate", self.ids.numel())
                    self.finish_layer(self._moe_out)
                elif index + 1 < layers:
                    # The layer as the output checkpoint holds it, read back from its file: a resumed run
                    # propagates through exactly the weights an uninterrupted one did.
                    self.propagate(index, layer, load_layer_tensors(self.destination, index), routing)
                self._moe_out = None
                release_freed_memory()
                del layer
        self.current.close()
        self.following.close()
        return reports


def _first_unfinished_layer(destination: Path, layers: int) -> int:
    for index in range(layers):
        if finished_layer(destination, index) is None:
            return index
    return layers


def convert_gptq(
    source: str | Path,
    destination: str | Path,
    recipe: Recipe,
    calibration: CalibrationSet,
    device: str = "cpu",
    overwrite: bool = False,
    max_memory: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    hooks: GPTQHooks | None = None,
    dtype: str = "auto",
) -> GPTQSummary:
    """Convert the BF16 checkpoint at `source` into `destination` with the calibrated recipe `recipe` (method
    gptq) over `calibration` (token ids [N, T]); resumable after any interruption, see the module docstring.

    device: where the layers and GPTQ run (cpu, cuda, cuda:N). max_memory: bytes the two sets of hidden states
    ([N, T, hidden] bf16 each) may take in memory, past which they are spilled to `DST/.qtools/hidden/` (None: no
    limit). batch_size: sequences per forward; dtype: compute dtype of activations and dense weights (auto:
    bfloat16 on CUDA, float32 on CPU). Both are part of the run's identity (they change the float rounding).
    Raises QtoolsError on bad input before anything is written.
    """
    source, destination = Path(source), Path(destination)
    hooks = hooks or GPTQHooks()
    started = time.perf_counter()
    check_device(device)
    torch_dtype = compute_dtype(dtype, device)
    check_paths(source, destination)
    checkpoint = Checkpoint.open(source)
    _validate(checkpoint, recipe, calibration, batch_size)
    plan = plan_conversion(checkpoint, recipe)
    config = checkpoint.model_config
    for index in range(config.num_layers):
        LayerTargets.of(recipe, index, config.num_experts)
    extras = checkpoint.extra_files()
    outputs = sorted({*checkpoint.shard_names, "config.json", INDEX_NAME, *(e.as_posix() for e in extras)})
    identity = {
        "source": str(source.resolve()),
        "source_fingerprint": source_fingerprint(checkpoint),
        "recipe": json.loads(recipe.fingerprint()),
        "calibration": {"sha256": calibration.sha256, "shape": list(calibration.input_ids.shape)},
        "calibration_batch": batch_size,
        "compute_dtype": str(torch_dtype).removeprefix("torch."),
    }
    summary = GPTQSummary(destination, config.num_layers)
    report_path = destination / STATE_DIR / CALIBRATION_REPORT
    with session(device) as group, ExitStack() as held:

        def prepare() -> None:
            refuse_foreign_destination(destination)
            held.enter_context(destination_lock(destination))
            prepare_destination(destination, identity, outputs, overwrite)

        group.run_on_rank0_then_share(prepare)
        todo = [
            shard
            for shard in checkpoint.shard_names
            if (record := finished_record(destination, shard)) is None
            or source_change(record, source_identity(checkpoint.root / shard))
        ]
        if todo or not report_path.exists():
            first_todo = _first_unfinished_layer(destination, config.num_layers)
            summary.layers_reused = first_todo
            summary.layers_calibrated = config.num_layers - first_todo
            if hooks.on_start:
                hooks.on_start(config.num_layers, first_todo, calibration.tokens)
            runner = _LayerRunner(
                group, checkpoint, destination, recipe, calibration, device, torch_dtype, max_memory, batch_size, hooks
            )
            reports = runner.run(first_todo)
            del runner
            mine = group.my_shards({shard: checkpoint.shard_bytes(shard) for shard in todo})
            group.run_everywhere(lambda: [write_shard(checkpoint, destination, plan, shard) for shard in mine])
            report = _full_report(recipe, calibration, reports)
            group.run_on_rank0_then_share(
                lambda: write_atomic(report_path, (json.dumps(report, indent=1) + "\n").encode())
            )
        else:
            summary.layers_reused = config.num_layers

        def finish() -> dict:
            finalize_checkpoint(
                checkpoint, destination, plan, recipe, extras, {"qtools_calibration_sha256": calibration.sha256}
            )
            shutil.rmtree(layers_dir(destination), ignore_errors=True)
            shutil.rmtree(destination / STATE_DIR / "hidden", ignore_errors=True)
            return json.loads(report_path.read_text())

        summary.report = group.run_on_rank0_then_share(finish)
    summary.experts = summary.report["experts"]
    summary.experts_calibrated = summary.report["experts_calibrated"]
    summary.experts_fallback = summary.report["experts_fallback"]
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.startswith("cuda"):
        summary.peak_device_bytes = torch.cuda.max_memory_allocated()
    return summary
