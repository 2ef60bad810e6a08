"""Weight formats the runtime loads. A format is one module with a `detect(quantization_config)` function
returning an object whose `load_linear` builds that format's linear layer; add new ones to `_DETECTORS`."""

from __future__ import annotations

from qtools.errors import QtoolsError
from qtools.runtime.weights import dense, fp8_block
from qtools.runtime.weights.base import LinearBackend, LoadOptions, RuntimeLinear, WeightFormat
from qtools.runtime.weights.dense import DenseLinear
from qtools.runtime.weights.fp8_block import Fp8BlockLinear
from qtools.runtime.weights.source import WeightSource

_DETECTORS = (dense.detect, fp8_block.detect)
SUPPORTED = "dense BF16/FP16/FP32, hf-fp8 block-wise, compressed-tensors FP8_BLOCK (float-quantized)"


def detect_format(config: dict) -> WeightFormat:
    """The weight format of a checkpoint from its config.json; raises QtoolsError for an unsupported one."""
    quantization_config = config.get("quantization_config")
    for detector in _DETECTORS:
        found = detector(quantization_config)
        if found is not None:
            return found
    method = quantization_config.get("quant_method")
    layout = quantization_config.get("format")
    raise QtoolsError(
        f"config.json: quantization_config quant_method={method!r} format={layout!r} is not supported by the "
        f"runtime yet (supported: {SUPPORTED})"
    )


__all__ = [
    "DenseLinear",
    "Fp8BlockLinear",
    "LinearBackend",
    "LoadOptions",
    "RuntimeLinear",
    "SUPPORTED",
    "WeightFormat",
    "WeightSource",
    "detect_format",
]
