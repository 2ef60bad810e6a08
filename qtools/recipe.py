"""Recipes: small YAML files, validated by pydantic, that say what to quantise and how.

The recipes qtools ships live in `qtools/recipes/` (package data, so an installed wheel has them) and are found
by name (`fp8-block`); any other recipe is given as the path of its YAML file.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError, field_validator, model_validator

from qtools.errors import QtoolsError

FORMATS = ("hf-fp8", "compressed-tensors")
SCHEMES = ("fp8-block", "w4a16")
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
DEFAULT_RECIPE = "fp8-block"
_RECIPE_SUFFIXES = (".yaml", ".yml")
# Block edges a recipe may ask for: powers of two (Triton tiles and every block-FP8 kernel index blocks by
# power-of-two tiles) from 16 (smaller blocks store more scale than weight) to 512.
BLOCK_EDGES = tuple(2**power for power in range(4, 10))
# The official Qwen FP8 layout; vLLM's and SGLang's hf-fp8 loaders are tuned and tested for it (DeepGEMM and
# CUTLASS block-FP8 GEMMs take 128x128 only), and so are the qtools kernels.
HF_FP8_BLOCK = (128, 128)
# INT4 group sizes vLLM's Marlin / Triton WNA16 MoE kernels take; 128 is llm-compressor's W4A16 default.
INT4_GROUP_SIZES = (32, 64, 128)
INT4_DEFAULT_GROUP = 128
_FP8_ONLY = ("block_size", "scale_dtype")
METHODS = ("rtn", "gptq")
COVERAGES = ("routed", "all-tokens", "blend")
# What a `method: gptq` recipe gets for the calibration settings it leaves out (see `Recipe`); an rtn recipe has
# none of them (None, left out of its fingerprint).
GPTQ_DEFAULTS = {"coverage": "routed", "damp": 0.01, "prior_strength": 0.1, "rtn_below_tokens": 0, "actorder": True}
_GPTQ_ONLY = tuple(GPTQ_DEFAULTS)


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def matches(pattern: str, module: str) -> bool:
    """`re:REGEX` must match the whole module name; any other pattern must equal it."""
    if pattern.startswith("re:"):
        return _compiled(pattern[3:]).fullmatch(module) is not None
    return pattern == module


class Recipe(BaseModel):
    """What a conversion does.

    `scheme` is what quantised modules become: `fp8-block` (FP8 e4m3 weights in `block_size` blocks with
    `scale_dtype` scales, dynamic FP8 activations) or `w4a16` (INT4 weights, symmetric, one scale per row and
    `group_size` input channels in the model dtype, round-to-nearest; written as compressed-tensors
    `pack-quantized`, the format's default for this scheme). `targets` and `ignore` hold module names (a weight
    `X.weight` belongs to module `X`) or `re:` regexes that must match the whole name. A module is quantised
    when a target matches it and no ignore entry does. A w4a16 recipe may also name `fp8_targets`: modules
    written FP8 block-wise (`block_size`, `scale_dtype`) in a second config group of the same checkpoint (a
    `mixed-precision` compressed-tensors checkpoint, e.g. FP8 attention beside INT4 experts).

    `method` is how INT4 codes are chosen: `rtn` (round-to-nearest, model-free, shard by shard) or `gptq`
    (calibrated, layer by layer over calibration data: `qtools.gptq`). A gptq recipe also sets `coverage`, which
    tokens each expert's Hessians see (`routed`: the tokens routed to it; `all-tokens`: every token; `blend`: its
    routed tokens plus an all-token prior worth `prior_strength` times an average expert's routed tokens, so a cold
    expert leans on the prior), `damp` (fraction of mean(diag H) added to the diagonal; a failed Cholesky retries
    with 10x more), `rtn_below_tokens` (experts routed fewer tokens than this are rounded to nearest instead,
    counted; 0: never) and `actorder` (true by default: quantise columns in descending diag H order; the scales are
    fixed before the sweep, so the stored layout does not change).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Literal["fp8-block", "w4a16"] = "fp8-block"
    format: Literal["hf-fp8", "compressed-tensors"] = "hf-fp8"
    # StrictInt: YAML `true` is no block edge (it became 1) and neither is `1e20` or `128.0`.
    block_size: tuple[StrictInt, StrictInt] = HF_FP8_BLOCK
    scale_dtype: Literal["float32", "bfloat16"] = "float32"
    # w4a16 only (None for fp8-block, so FP8 recipes' fingerprints are what they were before INT4 existed).
    group_size: StrictInt | None = None
    targets: list[str]
    # w4a16 only: modules stored FP8 block-wise instead (empty: none; left out of the fingerprint when empty).
    fp8_targets: list[str] = []
    ignore: list[str] = []
    method: Literal["rtn", "gptq"] = "rtn"
    # gptq only (None for rtn, so round-to-nearest recipes' fingerprints are what they were before GPTQ existed).
    coverage: Literal["routed", "all-tokens", "blend"] | None = None
    damp: float | None = None
    prior_strength: float | None = None
    rtn_below_tokens: StrictInt | None = None
    # GPTQ's column order: descending diag H (act-order) with the scales fixed beforehand, so the stored layout is
    # the plain one (quantization_config `actorder: null`); halves the toy's KL against the natural order.
    actorder: StrictBool | None = None

    @model_validator(mode="before")
    @classmethod
    def _infer_w4a16_defaults(cls, raw: object) -> object:
        """A w4a16 recipe that names no format or group size gets compressed-tensors and group 128; a gptq recipe
        gets `GPTQ_DEFAULTS` for the calibration settings it leaves out."""
        if isinstance(raw, dict) and raw.get("scheme") == "w4a16":
            raw = {"format": "compressed-tensors", "group_size": INT4_DEFAULT_GROUP, **raw}
        if isinstance(raw, dict) and raw.get("method") == "gptq":
            raw = {**GPTQ_DEFAULTS, **raw}
        return raw

    @field_validator("targets", "fp8_targets", "ignore")
    @classmethod
    def _valid_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as error:
                    raise ValueError(f"bad regex {pattern!r}: {error}") from error
        return patterns

    @field_validator("block_size")
    @classmethod
    def _sane_block(cls, block: tuple[int, int]) -> tuple[int, int]:
        if any(edge not in BLOCK_EDGES for edge in block):
            raise ValueError(
                f"block_size entries must be powers of two from 16 to 512 ({', '.join(map(str, BLOCK_EDGES))}), "
                f"got {list(block)}; the usual FP8 block is [128, 128]"
            )
        return block

    @model_validator(mode="after")
    def _settings_of_the_method(self) -> Recipe:
        if self.method == "rtn":
            given = sorted(name for name in _GPTQ_ONLY if getattr(self, name) is not None)
            if given:
                raise ValueError(f"{', '.join(given)}: calibration settings; set method: gptq to use them")
            return self
        if self.scheme != "w4a16":
            raise ValueError("method gptq calibrates INT4 weights: use scheme: w4a16")
        if self.fp8_targets:
            raise ValueError(
                "fp8_targets with method gptq is not supported yet (FP8 modules are not calibrated); use "
                "w4a16-rtn-fp8-attention, or leave attention BF16"
            )
        if not 0 < self.damp <= 1:
            raise ValueError(f"damp {self.damp}: a fraction of mean(diag H) in (0, 1]; 0.01 is the usual")
        if self.prior_strength < 0:
            raise ValueError(f"prior_strength {self.prior_strength}: must be >= 0 (0: routed Hessians only)")
        if self.rtn_below_tokens < 0:
            raise ValueError(f"rtn_below_tokens {self.rtn_below_tokens}: must be >= 0 (0: never round to nearest)")
        return self

    @model_validator(mode="after")
    def _settings_of_the_scheme(self) -> Recipe:
        if self.scheme == "w4a16":
            if self.format != "compressed-tensors":
                raise ValueError(
                    f"format {self.format!r}: w4a16 is written as compressed-tensors pack-quantized only (hf-fp8 "
                    "holds FP8 weights); use format: compressed-tensors"
                )
            given = sorted(self.model_fields_set & set(_FP8_ONLY))
            if given and not self.fp8_targets:
                raise ValueError(
                    f"{', '.join(given)}: fp8-block settings; a w4a16 recipe sets group_size (scales are in the "
                    "model dtype), and block_size / scale_dtype only for the modules of its fp8_targets"
                )
            if self.group_size not in INT4_GROUP_SIZES:
                raise ValueError(
                    f"group_size {self.group_size!r}: w4a16 takes {', '.join(map(str, INT4_GROUP_SIZES))} (what "
                    "vLLM's INT4 MoE kernels load); 128 is the usual, 64 loads at TP8"
                )
            return self
        if self.group_size is not None:
            raise ValueError("group_size is a w4a16 setting; fp8-block recipes set block_size")
        if self.fp8_targets:
            raise ValueError("fp8_targets is a w4a16 setting (FP8 modules beside INT4 ones); use targets")
        if self.format == "hf-fp8" and self.block_size != HF_FP8_BLOCK:
            raise ValueError(
                f"block_size {list(self.block_size)}: hf-fp8 (the official Qwen FP8 layout) is loaded by vLLM and "
                "SGLang with [128, 128] blocks only; use block_size: [128, 128], or format: compressed-tensors "
                "(its block_structure records any block) for other blocks"
            )
        return self

    def quantizes(self, module: str) -> bool:
        """Whether this recipe converts `module` (to its scheme, or FP8 for an `fp8_targets` module)."""
        targeted = any(matches(p, module) for p in [*self.targets, *self.fp8_targets])
        return targeted and not any(matches(p, module) for p in self.ignore)

    @property
    def calibrated(self) -> bool:
        """Whether this recipe needs calibration data (`method: gptq`)."""
        return self.method == "gptq"

    def fingerprint(self) -> str:
        """Canonical JSON of the recipe, for resume checks (an unset `group_size`, empty `fp8_targets`, `method:
        rtn` and unset calibration settings are left out, so a recipe's fingerprint is the same as before those
        fields existed)."""
        unset = {name for name in ("group_size", *_GPTQ_ONLY) if getattr(self, name) is None}
        unset |= set() if self.fp8_targets else {"fp8_targets"}
        unset |= {"method"} if self.method == "rtn" else set()
        return self.model_dump_json(exclude=unset)


def shipped_recipes() -> dict[str, Path]:
    """The recipes that ship with qtools: name (file name without `.yaml`) -> file, sorted by name."""
    return dict(sorted((path.stem, path) for path in RECIPES_DIR.glob("*.yaml")))


def recipe_path(recipe: str | Path) -> Path:
    """Where recipe `recipe` lives: a string that is a bare name (no directory, no `.yaml`/`.yml`) names a
    shipped recipe, looked up in the package and never in the working directory; anything else (a `Path`
    included) is the path of a YAML file.

    Raises QtoolsError for an unknown name, listing the shipped ones.
    """
    text = str(recipe)
    is_name = isinstance(recipe, str) and Path(text).name == text and not text.endswith(_RECIPE_SUFFIXES)
    if not is_name:
        return Path(recipe)
    shipped = shipped_recipes()
    if text not in shipped:
        raise QtoolsError(
            f"no recipe named {text!r}; shipped recipes: {', '.join(shipped)} (or give the path of a recipe YAML)"
        )
    return shipped[text]


def load_recipe(recipe: str | Path, format_override: str | None = None) -> Recipe:
    """Load and validate a recipe: a shipped recipe's name or a YAML file's path (see `recipe_path`);
    `format_override` (from the CLI) replaces its `format`."""
    path = recipe_path(recipe)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read recipe ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise QtoolsError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(raw, dict):
        raise QtoolsError(f"{path}: a recipe is a YAML mapping")
    if format_override is not None:
        raw["format"] = format_override
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        problems = [_problem(e) for e in error.errors()]
        hints = sorted({FIELD_HINTS[e["loc"][0]] for e in error.errors() if _is_type_error(e)})
        raise QtoolsError(f"{path}: invalid recipe: {'; '.join(problems + hints)}") from error


# How to write a field, added to the type errors pydantic reports for it.
FIELD_HINTS = {
    "block_size": "block_size is two integers, e.g. [128, 128]",
    "group_size": "group_size is an integer: 128, 64 or 32",
    "method": "method is rtn or gptq",
    "coverage": "coverage is routed, all-tokens or blend",
    "damp": "damp is a number, e.g. 0.01",
    "prior_strength": "prior_strength is a number, e.g. 0.1",
    "rtn_below_tokens": "rtn_below_tokens is an integer (0: never)",
    "actorder": "actorder is true or false",
}


def _is_type_error(error: dict) -> bool:
    return bool(error["loc"]) and error["loc"][0] in FIELD_HINTS and error["type"] not in ("value_error", "missing")


def _problem(error: dict) -> str:
    """One pydantic error as `field: what is wrong (got VALUE)`."""
    where = ".".join(str(part) for part in error["loc"]) or "recipe"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in ("value_error", "missing") or not error["loc"]:
        return f"{where}: {message}"
    return f"{where}: {message} (got {error['input']!r})"
