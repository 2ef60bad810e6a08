"""Calibration data for GPTQ: token sequences of one length, and the identity of where they came from.

`CalibrationSet` is what the calibrated conversion consumes; the loaders that build one from local files, a Hub
dataset or the built-in default live beside it in this package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CalibrationSet"]


@dataclass(frozen=True)
class CalibrationSet:
    """`input_ids` int64 [N, T]: N sequences of T tokens each (every one a real token: no padding); `sha256` the
    hex digest of the data as used (source records, rendering and tokenisation included), recorded in the output
    for the model card; `source` a human-readable name of where it came from."""

    input_ids: torch.Tensor
    sha256: str
    source: str

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.dtype != torch.int64 or not self.input_ids.numel():
            raise ValueError(
                f"calibration input_ids must be a non-empty int64 [N, T] tensor, got {tuple(self.input_ids.shape)} "
                f"{self.input_ids.dtype}"
            )

    @property
    def samples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()
