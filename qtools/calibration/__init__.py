"""Calibration data for GPTQ: token sequences of one length, and the identity of where they came from.

`CalibrationSet` is what the calibrated conversion consumes; `load_calibration` (in `load.py`) builds one from
local files, a Hub dataset or the built-in default, with the modules beside it: `sources` (reading records),
`documents` (records to text, chat rendered with the checkpoint's template), `packing` (tokens into rows, the
hash), `builtin` with `stdlib_code` and `tool_chats` (the default mix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qtools._lazy import lazy_getattr

__all__ = ["CalibrationSet", "load_calibration"]

# load_calibration pulls in transformers and datasets: imported on first use so `import qtools.calibration`
# (which the conversion pipeline does for the CalibrationSet type) stays cheap.
__getattr__ = lazy_getattr(__name__, {"load_calibration": "qtools.calibration.load"})


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
