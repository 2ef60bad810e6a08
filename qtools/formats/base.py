"""What every on-disk format provides, and the name matching their configs share.

A `LinearLayout` is how one quantised linear module `X` is stored: the tensors `X.<suffix>` it writes (planned
from shapes alone), how to tell from a shard header that a module is stored that way, its reference
dequantisation, the checks `qtools verify` runs on it and the streaming quantiser `qtools convert` runs. A
`Format` is a whole checkpoint's layout: its `quantization_config` (written by convert, detected by everyone
else), which modules it keeps unconverted and the linear layouts its quantised modules may use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Protocol

import torch

from qtools.checkpoint.safetensors_io import TensorInfo, TensorSpec
from qtools.numerics.workspace import Workspace

TensorLookup = Callable[[str], TensorInfo | None]
"""A tensor name -> its header entry, None when the checkpoint has no such tensor."""
TensorReader = Callable[[str], torch.Tensor]
"""A tensor name -> its data, as stored."""
# Largest finite float16: a dequantised weight past it overflows fp16 kernels, so a scale that allows it is damage.
FLOAT16_MAX = 65504.0
SCALE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class LinearLayout(Protocol):
    """One way of storing a quantised linear module `X` with weight [out, in] (see the module docstring)."""

    # The quantisation scheme, as recipes name it: "fp8-block" or "w4a16".
    scheme: str
    # Activation groups the served model quantises inputs in (dynamic FP8), None for weight-only layouts.
    act_group_size: int | None
    # True when the served model quantises this layout's inputs at run time (FP8 W8A8 dynamic).
    dynamic_activations: bool

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Every tensor suffix this layout writes, e.g. ("weight", "weight_scale_inv")."""
        ...

    @property
    def codes_suffix(self) -> str:
        """The suffix of the tensor holding the weight's codes ("weight", "weight_packed")."""
        ...

    @property
    def scale_suffixes(self) -> tuple[str, ...]:
        """The suffixes of its scale tensors (inspect counts them apart from the codes)."""
        ...

    def describe(self) -> str:
        """A few words for reports, e.g. "FP8 e4m3, 128x128 blocks"."""
        ...

    def codes_label(self) -> str:
        """What the codes are, for inspect's dtype column, e.g. "float8_e4m3fn" or "int4 g128"."""
        ...

    def shape_problem(self, shape: tuple[int, ...]) -> str | None:
        """Why a weight of `shape` cannot be stored this way, None when it can."""
        ...

    def tensor_specs(self, module: str, shape: tuple[int, int], dtype: torch.dtype) -> tuple[TensorSpec, ...]:
        """The tensors module `module` with a `dtype` weight of `shape` [out, in] is written as (no data)."""
        ...

    def stores(self, module: str, lookup: TensorLookup) -> bool:
        """Whether the checkpoint holds `module` in this layout, from header entries alone."""
        ...

    def storage_problems(self, module: str, lookup: TensorLookup) -> list[str]:
        """Tensors of this layout that are missing or contradict each other for `module` (empty when none)."""
        ...

    def logical_shape(self, module: str, lookup: TensorLookup, read: TensorReader) -> tuple[int, ...]:
        """The [out, in] of the dense weight `module` stands for."""
        ...

    def layout_problems(self, module: str, lookup: TensorLookup, shape: tuple[int, ...]) -> list[str]:
        """Dtype and shape problems of `module`'s stored tensors given the dense weight `shape` (headers only)."""
        ...

    def value_problems(self, module: str, read: TensorReader, shape: tuple[int, ...], deep: bool) -> list[str]:
        """Problems in the stored values: scales always (small), every code when `deep`."""
        ...

    def dequantize(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The dense weight `dtype` [out, in] from the stored tensors (suffix -> tensor): the reference every
        runtime path is compared with."""
        ...

    @property
    def rows_per_step(self) -> int:
        """How many weight rows the streaming quantiser takes at a time."""
        ...

    def quantize_rows(self, rows: torch.Tensor, workspace: Workspace | None = None) -> dict[str, torch.Tensor]:
        """Quantise the next `rows_per_step` (or fewer, at the end) rows [r, in] of a weight: suffix -> the
        following rows of that tensor. Raises NonFiniteWeightError for NaN/Inf. Outputs may be views of
        `workspace` buffers, valid until its next use (a streaming converter writes them out at once)."""
        ...

    def constant_tensors(self, shape: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Tensors that depend on the weight's shape only (suffix -> tensor), written once."""
        ...


class Format(Protocol):
    """A checkpoint's on-disk format: detected from config.json by readers, built from a recipe by convert."""

    # Family name: "dense", "hf-fp8" or "compressed-tensors".
    name: str

    @property
    def layouts(self) -> tuple[LinearLayout, ...]:
        """The layouts quantised modules of this checkpoint may use (one per scheme)."""
        ...

    @property
    def label(self) -> str:
        """The name reports show: the family, plus the scheme where the family holds several."""
        ...

    @property
    def dynamic_activations(self) -> bool:
        """True when the served model quantises linear inputs at run time (FP8 W8A8 dynamic)."""
        ...

    def lists_unconverted(self, module: str) -> bool:
        """Whether the detected config names linear module `module` as left unconverted."""
        ...

    def layout_of(self, module: str, lookup: TensorLookup) -> LinearLayout | None:
        """The layout `module` is stored in (by its tensors), None when it is dense."""
        ...

    def layout_for(self, module: str) -> LinearLayout:
        """The layout convert writes `module` in (write side: the recipe chose to quantise it)."""
        ...

    def cannot_hold(self, module: str) -> str | None:
        """Why this format cannot store linear module `module` quantised (None when it can)."""
        ...

    def quantization_config(self, kept_modules: list[str], num_layers: int, version: str) -> dict:
        """The config.json `quantization_config`; `kept_modules`: 2-D weights' modules left unconverted."""
        ...


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def listed(module: str, entries: tuple[str, ...] | list[str]) -> bool:
    """Whether a skip list (`modules_to_not_convert`, compressed-tensors `ignore`) names `module`: an entry equal
    to it (with or without the `model.` prefix, as SGLang reads them) or a `re:` regex matching all of it."""
    for entry in entries:
        if entry.startswith("re:"):
            if _compiled(entry[3:]).fullmatch(module):
                return True
        elif entry == module or entry == module.removeprefix("model."):
            return True
    return False


_ROUTER = re.compile(r"model\.layers\.\d+\.mlp\.gate")


def kept_by_every_loader(module: str) -> str | None:
    """Why no quantised format qtools writes may hold `module` quantised: the router, lm_head and the embedding
    stay BF16 (None for any other module).

    The configs written list them as unconverted (hf-fp8's `modules_to_not_convert` always names lm_head and
    every router, as the official release does; compressed-tensors' `ignore` always names lm_head and the
    embedding), and loaders build them unquantised whatever the config says, so quantised tensors there would
    contradict the config (verify rejects it) and fail to load. Norms are 1-D and refused earlier: only 2-D
    weights can be quantised.
    """
    if _ROUTER.fullmatch(module):
        return (
            "the MoE router (mlp.gate) stays BF16: vLLM and SGLang build it unquantised, and a quantised "
            "router fails to load"
        )
    if module == "lm_head":
        return (
            "lm_head stays BF16: the written config lists it as not converted and the loaders' LM head "
            "takes no quantised weights"
        )
    if module == "model.embed_tokens":
        return "the token embedding is no linear layer: the loaders keep it unquantised"
    return None


def scale_value_problem(name: str, scales: torch.Tensor, max_scale: float) -> str | None:
    """A problem with a scale tensor's values: every scale must be finite, positive and at most `max_scale`
    (beyond it the codes dequantise past float16's range: a damaged scale, since trained weights are far
    below 1 in magnitude)."""
    scales = scales.float()
    if not (torch.isfinite(scales).all() and (scales > 0).all()):
        return f"{name}: scales must be finite and positive"
    if (scales > max_scale).any():
        return (
            f"{name}: scale {scales.max().item():.3g} exceeds {max_scale:.4g}: its weights would dequantise past "
            "float16's range (a damaged scale)"
        )
    return None
