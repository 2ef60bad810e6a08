"""Dense floating-point weights (BF16, FP16, FP32 checkpoints and the unquantised modules of quantised ones)."""

from __future__ import annotations

import torch

from qtools.errors import QtoolsError
from qtools.runtime.weights.base import LinearBackend, LoadOptions, RuntimeLinear
from qtools.runtime.weights.source import WeightSource

_DENSE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class DenseLinear(RuntimeLinear):
    """A dense linear layer. Buffer: `weight` [out_features, in_features] in the compute dtype."""

    def __init__(self, weight: torch.Tensor, backend: LinearBackend):
        super().__init__(weight.shape[0], weight.shape[1], backend)
        self.register_buffer("weight", weight)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype)


def load_dense_linear(source: WeightSource, module: str, shape: tuple[int, int], options: LoadOptions) -> DenseLinear:
    """`module.weight` cast to the compute dtype; raises QtoolsError for a non-float or wrongly shaped weight."""
    name = f"{module}.weight"
    stored = source.info(name).dtype
    if stored not in _DENSE_DTYPES:
        raise QtoolsError(f"{source.checkpoint.root}: {name} is {stored}, expected a dense float weight")
    return DenseLinear(source.read_shape_checked(name, shape, options.device, options.dtype), options.backend)
