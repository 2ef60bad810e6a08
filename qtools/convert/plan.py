"""Planning a conversion from shard headers alone: what each tensor becomes, checked before any data is read."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qtools.checkpoint.hf import INDEX_NAME, Checkpoint
from qtools.checkpoint.qwen3_moe import check_against_config, expected_shapes
from qtools.checkpoint.safetensors_io import TensorInfo, TensorSpec
from qtools.errors import QtoolsError, some_names
from qtools.formats import Format, LinearLayout, format_for_recipe
from qtools.recipe import Recipe


@dataclass(frozen=True)
class TensorAction:
    """What happens to one source tensor: `quantize` (into the tensors of `layout`) or `copy` (bit-identical)."""

    source: TensorInfo
    quantize: bool
    outputs: tuple[TensorSpec, ...]
    layout: LinearLayout | None = None


@dataclass
class ConversionPlan:
    """Per source shard, the actions on its tensors; plus the module lists the output config needs."""

    actions: dict[str, list[TensorAction]] = field(default_factory=dict)
    converted_modules: list[str] = field(default_factory=list)
    kept_linear_modules: list[str] = field(default_factory=list)

    def shard_source_bytes(self, shard: str) -> int:
        return sum(action.source.nbytes for action in self.actions[shard])


def check_complete(checkpoint: Checkpoint) -> None:
    """Refuse a checkpoint whose index lacks a tensor config.json implies (a tied `lm_head` may be absent).

    Reads nothing but the index and config.json, so an incomplete source fails before any work.
    """
    config = checkpoint.config
    tied = config.get("tie_word_embeddings") is True
    present = checkpoint.weight_map
    missing = [n for n in expected_shapes(config) if n not in present and not (tied and n == "lm_head.weight")]
    if missing:
        listing = INDEX_NAME if (checkpoint.root / INDEX_NAME).exists() else "the checkpoint"
        raise QtoolsError(
            f"{checkpoint.root}: incomplete checkpoint: {len(missing)} tensor(s) config.json implies are not in "
            f"{listing}: {some_names(missing)}"
        )


def _check_expressible(fmt: Format, module: str, recipe: Recipe) -> None:
    """QtoolsError when the recipe quantises a module that `fmt` cannot hold quantised (see `cannot_hold`)."""
    reason = fmt.cannot_hold(module)
    if reason:
        raise QtoolsError(
            f"the recipe quantises {module!r}, which {fmt.name} cannot express: {reason}; add it to the recipe's "
            f"ignore list (the shipped recipes ignore lm_head, model.embed_tokens, 're:.*\\.mlp\\.gate' and "
            f"'re:.*norm')"
        )


def plan_conversion(checkpoint: Checkpoint, recipe: Recipe) -> ConversionPlan:
    """Decide every tensor's fate from headers and config.json; raise QtoolsError on any inconsistency.

    Checks: config.json is a usable Qwen3-MoE config (`Checkpoint.model_config`), the index holds every tensor it
    implies, shard headers are valid and hold exactly what the index says, tensor shapes agree with config.json,
    every quantised tensor is a 2-D floating-point `.weight` of a module the output format can hold quantised (not
    the router, lm_head or the embedding) in a shape its layout takes (INT4: whole groups), and the recipe
    matches at least one tensor.
    """
    fmt = format_for_recipe(recipe)
    config = checkpoint.model_config
    check_complete(checkpoint)
    plan = ConversionPlan()
    for shard in checkpoint.shard_names:
        reader = checkpoint.reader(shard)
        unindexed = sorted(n for n in reader.tensors if checkpoint.weight_map.get(n) != shard)
        if unindexed:
            raise QtoolsError(
                f"{checkpoint.root / shard}: holds {len(unindexed)} tensor(s) the index does not list for this "
                f"shard, which a conversion would drop: {some_names(unindexed)}; list them in {INDEX_NAME} or "
                "remove them from the shard"
            )
        actions = []
        for name in sorted(n for n, f in checkpoint.weight_map.items() if f == shard):
            info = reader.tensors[name]
            problem = check_against_config(name, info.shape, config)
            if problem:
                raise QtoolsError(f"{checkpoint.root / shard}: {problem}")
            module = name.removesuffix(".weight")
            wanted = name.endswith(".weight") and recipe.quantizes(module)
            if wanted:
                _check_expressible(fmt, module, recipe)
                if not info.dtype.is_floating_point or info.dtype == torch.float8_e4m3fn or len(info.shape) != 2:
                    raise QtoolsError(
                        f"{checkpoint.root / shard}: tensor {name!r} is {info.dtype} {list(info.shape)}; "
                        "the recipe targets it but only 2-D floating-point (bf16/fp16/fp32) weights can be quantised"
                    )
                try:
                    layout = fmt.layout_for(module)
                except ValueError as error:
                    raise QtoolsError(
                        f"the recipe's targets and fp8_targets both match {module!r} ({error}); make them disjoint"
                    ) from None
                problem = layout.shape_problem(info.shape)
                if problem:
                    raise QtoolsError(
                        f"{checkpoint.root / shard}: tensor {name!r} {list(info.shape)} cannot be stored as "
                        f"{layout.describe()}: {problem}; leave the module out of the recipe's targets or choose "
                        "another group size"
                    )
                outputs = layout.tensor_specs(module, info.shape, info.dtype)
                plan.converted_modules.append(module)
            else:
                layout = None
                outputs = (TensorSpec(name, info.dtype, info.shape),)
                if name.endswith(".weight") and len(info.shape) == 2 and module != "model.embed_tokens":
                    plan.kept_linear_modules.append(module)
            actions.append(TensorAction(info, wanted, outputs, layout))
        plan.actions[shard] = actions
    if not plan.converted_modules:
        raise QtoolsError(
            f"the recipe matches no tensor of {checkpoint.root}: check its targets and ignore patterns "
            f"(targets: {recipe.targets})"
        )
    plan.converted_modules.sort()
    plan.kept_linear_modules.sort()
    return plan
