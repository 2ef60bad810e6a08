"""Triton kernels for FP8 block-wise and INT4 W4A16 Qwen3-MoE inference.

Ops (each also registered as `torch.ops.qtools_kernels.<name>` with a fake implementation):
`per_token_group_quant_fp8`, `fp8_block_matmul` (+ `fp8_block_linear`), `topk_softmax`,
`moe_align_block_size`, `fused_moe_fp8_block`, `fused_moe_w4a16`.

Pure-torch references that need neither Triton nor a GPU live in `qtools_kernels.reference` and
`qtools_kernels.moe_reference`; importing those works without Triton installed. Importing this package
registers the custom ops and changes nothing else.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from . import moe_reference, reference

__version__ = "0.1.0"

_OPS = {
    "per_token_group_quant_fp8": "fp8_quant",
    "fp8_block_matmul": "fp8_gemm",
    "fp8_block_linear": "fp8_gemm",
    "topk_softmax": "routing",
    "moe_align_block_size": "moe_align",
    "fused_moe_fp8_block": "fused_moe_fp8",
    "fused_moe_w4a16": "fused_moe_w4a16",
}

HAS_TRITON = importlib.util.find_spec("triton") is not None

if HAS_TRITON:
    from .fp8_gemm import fp8_block_linear, fp8_block_matmul
    from .fp8_quant import per_token_group_quant_fp8
    from .fused_moe_fp8 import fused_moe_fp8_block
    from .fused_moe_w4a16 import fused_moe_w4a16
    from .moe_align import moe_align_block_size
    from .routing import topk_softmax


def __getattr__(name: str) -> Any:
    if name in _OPS:
        raise ImportError(
            f"qtools_kernels.{name} needs Triton: `pip install triton` (or use the pure-torch "
            "qtools_kernels.reference / qtools_kernels.moe_reference functions)"
        )
    raise AttributeError(f"module 'qtools_kernels' has no attribute {name!r}")


__all__ = [
    "HAS_TRITON",
    "fp8_block_linear",
    "fp8_block_matmul",
    "fused_moe_fp8_block",
    "fused_moe_w4a16",
    "moe_align_block_size",
    "moe_reference",
    "per_token_group_quant_fp8",
    "reference",
    "topk_softmax",
]
