"""The compressed-tensors checkpoint container (`quant_method: compressed-tensors`, FACTS §3).

Its `quantization_config` holds `config_groups` (each a scheme for some `targets`), an `ignore` list, the
checkpoint-wide `format` (the groups' own when they share one, else "mixed-precision"), `quantization_status`
and `version`. qtools writes and reads two kinds of group: FP8_BLOCK (`float-quantized`,
`qtools.formats.fp8_block`) and W4A16 (`pack-quantized`, `qtools.formats.pack_quantized`), at most one layout
of each; which one stores a module is told by its tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtools.errors import QtoolsError
from qtools.formats.base import LinearLayout, TensorLookup, kept_by_every_loader, listed
from qtools.formats.fp8_block import fp8_block_layout_from_group
from qtools.formats.pack_quantized import int4_layout_from_group

# What a group's `targets` may name for the modules qtools quantises: the class every linear is, or names.
LINEAR_TARGET = "Linear"
MIXED_FORMAT = "mixed-precision"


@dataclass(frozen=True)
class ConfigGroup:
    """One config group: a linear layout and the modules it targets (`Linear`, names or `re:` regexes)."""

    layout: LinearLayout
    targets: tuple[str, ...] = (LINEAR_TARGET,)

    def targets_module(self, module: str) -> bool:
        return LINEAR_TARGET in self.targets or listed(module, self.targets)


@dataclass(frozen=True)
class CompressedTensorsFormat:
    """A compressed-tensors checkpoint: its config groups and (for a detected config) its `ignore` list."""

    groups: tuple[ConfigGroup, ...]
    ignore: tuple[str, ...] = ()
    name = "compressed-tensors"

    @property
    def layouts(self) -> tuple[LinearLayout, ...]:
        return tuple(group.layout for group in self.groups)

    @property
    def label(self) -> str:
        schemes = sorted({layout.scheme for layout in self.layouts})
        # FP8_BLOCK checkpoints were the only compressed-tensors ones qtools wrote, and reports name them so.
        return self.name if schemes == ["fp8-block"] else f"{self.name} {'+'.join(schemes)}"

    @property
    def dynamic_activations(self) -> bool:
        return any(layout.dynamic_activations for layout in self.layouts)

    def lists_unconverted(self, module: str) -> bool:
        return listed(module, self.ignore)

    def layout_of(self, module: str, lookup: TensorLookup) -> LinearLayout | None:
        return next((layout for layout in self.layouts if layout.stores(module, lookup)), None)

    def layout_for(self, module: str) -> LinearLayout:
        """The layout of the one group targeting `module`; raises ValueError when none or several do (a loader
        would pick one by the order of its own target map)."""
        matching = [group for group in self.groups if group.targets_module(module)]
        if len(matching) != 1:
            raise ValueError(f"{len(matching)} config groups target {module}: exactly one must")
        return matching[0].layout

    def cannot_hold(self, module: str) -> str | None:
        return kept_by_every_loader(module)

    def quantization_config(self, kept_modules: list[str], num_layers: int, version: str) -> dict:
        """`quantization_config` as llm-compressor writes it; `ignore` names every unconverted linear, plus the
        embedding: it is no Linear, so loaders skip it anyway, but listing it lets name-based tools
        (compressed-tensors' model-free dequantisers) know it carries no scale."""
        groups = {f"group_{i}": group.layout.config_group(list(group.targets)) for i, group in enumerate(self.groups)}
        formats = {group["format"] for group in groups.values()}
        return {
            "config_groups": groups,
            "format": formats.pop() if len(formats) == 1 else MIXED_FORMAT,
            "global_compression_ratio": None,
            "ignore": sorted(set(kept_modules) | {"lm_head", "model.embed_tokens"}),
            "kv_cache_scheme": None,
            "quant_method": "compressed-tensors",
            "quantization_status": "compressed",
            "sparsity_config": {},
            "transform_config": {},
            "version": version,
        }


def _layout_of_group(group: dict, default_format: str | None) -> LinearLayout | None:
    return fp8_block_layout_from_group(group, default_format) or int4_layout_from_group(group, default_format)


def detect_compressed_tensors(config: dict) -> CompressedTensorsFormat | None:
    """The compressed-tensors format a `quantization_config` describes; None when it describes another one
    or holds a group qtools cannot read (the caller then names what is supported). Raises QtoolsError for a
    group of a supported kind that qtools cannot run, or two layouts of one scheme (a module's tensors would
    not tell which applies)."""
    if config.get("quant_method") != "compressed-tensors":
        return None
    raw = config.get("config_groups") or {}
    if not isinstance(raw, dict) or not raw:
        return None
    default_format = None if config.get("format") == MIXED_FORMAT else config.get("format")
    groups: list[ConfigGroup] = []
    for group in raw.values():
        layout = _layout_of_group(group or {}, default_format) if isinstance(group, dict) else None
        if layout is None:
            return None
        targets = tuple(group.get("targets") or (LINEAR_TARGET,))
        same = [g for g in groups if g.layout.scheme == layout.scheme]
        if same and same[0].layout != layout:
            kind = "FP8 block" if layout.scheme == "fp8-block" else "INT4 group"
            raise QtoolsError(f"config.json: config_groups use different {kind} layouts; one is supported")
        if same:
            groups[groups.index(same[0])] = ConfigGroup(layout, same[0].targets + targets)
        else:
            groups.append(ConfigGroup(layout, targets))
    return CompressedTensorsFormat(tuple(groups), tuple(config.get("ignore") or ()))
