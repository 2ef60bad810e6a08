"""Checkpoints without `quantization_config`: every linear is a dense floating-point weight."""

from __future__ import annotations

from dataclasses import dataclass

from qtools.formats.base import LinearLayout, TensorLookup


@dataclass(frozen=True)
class DenseFormat:
    """A BF16 (or FP16 / FP32) checkpoint: nothing is quantised, nothing is listed."""

    name = "dense"
    label = "dense"
    dynamic_activations = False

    @property
    def layouts(self) -> tuple[LinearLayout, ...]:
        return ()

    def lists_unconverted(self, module: str) -> bool:
        return False

    def layout_of(self, module: str, lookup: TensorLookup) -> LinearLayout | None:
        return None

    def layout_for(self, module: str) -> LinearLayout:
        raise ValueError("a dense checkpoint quantises nothing")

    def cannot_hold(self, module: str) -> str | None:
        return "a dense checkpoint holds no quantised module"

    def quantization_config(self, kept_modules: list[str], num_layers: int, version: str) -> dict:
        raise ValueError("a dense checkpoint has no quantization_config")


def detect_dense(config: dict | None) -> DenseFormat | None:
    """The dense format when config.json has no (or an empty) `quantization_config`."""
    return DenseFormat() if not config else None
