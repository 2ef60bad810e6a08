"""Launch configurations: vLLM-format JSON tables keyed by token count, nearest-M lookup, defaults.

A table file maps a token count M (string keys) to `{"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K",
"GROUP_SIZE_M", "num_warps", "num_stages"}`. File names follow vLLM:

- fused MoE: `E={E},N={N},device_name={GPU},dtype=fp8_w8a8,block_shape=[128,128].json` and
  `E={E},N={N},device_name={GPU},dtype=int4_w4a16.json`, with N = w2.shape[2], the per-rank expert
  width I (2560, 1280, 640, 320 for Qwen3-Coder-480B at TP 1, 2, 4, 8);
- dense FP8 GEMM: `N={N},K={K},device_name={GPU},dtype=fp8_w8a8,block_shape=[128,128].json`.

The tables shipped in `configs/` are untuned defaults (see configs/README.md). Files in the directory
named by `QTOOLS_KERNELS_CONFIG_DIR` take precedence over the shipped ones.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"
FP8_DTYPE_NAME = "fp8_w8a8"
INT4_DTYPE_NAME = "int4_w4a16"
FP8_BLOCK_SHAPE = (128, 128)
TABLE_TOKEN_COUNTS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 1536, 2048, 3072, 4096)
"""Token counts a generated table lists (vLLM's benchmark grid)."""


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one GEMM kernel launch."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    @classmethod
    def from_json(cls, entry: dict[str, int]) -> KernelConfig:
        return cls(
            block_m=int(entry["BLOCK_SIZE_M"]),
            block_n=int(entry["BLOCK_SIZE_N"]),
            block_k=int(entry["BLOCK_SIZE_K"]),
            group_m=int(entry["GROUP_SIZE_M"]),
            num_warps=int(entry["num_warps"]),
            num_stages=int(entry["num_stages"]),
        )

    def to_json(self) -> dict[str, int]:
        return {
            "BLOCK_SIZE_M": self.block_m,
            "BLOCK_SIZE_N": self.block_n,
            "BLOCK_SIZE_K": self.block_k,
            "GROUP_SIZE_M": self.group_m,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
        }


def device_name() -> str | None:
    """`torch.cuda.get_device_name()` with spaces as underscores (vLLM's spelling), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name().replace(" ", "_")


def _dtype_suffix(dtype: str, block_shape: tuple[int, int] | None) -> str:
    shape = "" if block_shape is None else f",block_shape=[{block_shape[0]},{block_shape[1]}]"
    return f",dtype={dtype}{shape}"


def moe_config_file_name(
    num_experts: int, inter_size: int, device: str, dtype: str, block_shape: tuple[int, int] | None
) -> str:
    """vLLM's fused-MoE table name; `inter_size` is N = w2.shape[2] (per-rank expert width)."""
    return f"E={num_experts},N={inter_size},device_name={device}{_dtype_suffix(dtype, block_shape)}.json"


def gemm_config_file_name(n: int, k: int, device: str, block_shape: tuple[int, int] = FP8_BLOCK_SHAPE) -> str:
    """vLLM's block-FP8 dense GEMM table name for a [N, K] weight."""
    return f"N={n},K={k},device_name={device}{_dtype_suffix(FP8_DTYPE_NAME, block_shape)}.json"


@functools.lru_cache(maxsize=64)
def load_config_table(file_name: str) -> dict[int, KernelConfig] | None:
    """Read a table from `QTOOLS_KERNELS_CONFIG_DIR` or the shipped `configs/`; None when absent."""
    directories = [Path(d) for d in [os.environ.get("QTOOLS_KERNELS_CONFIG_DIR")] if d] + [CONFIG_DIR]
    for directory in directories:
        path = directory / file_name
        if path.is_file():
            with path.open() as handle:
                raw = json.load(handle)
            return {int(m): KernelConfig.from_json(entry) for m, entry in raw.items()}
    return None


def nearest_config(table: dict[int, KernelConfig], m: int) -> KernelConfig:
    """The entry whose token count is closest to `m` (the lower one on a tie)."""
    return table[min(table, key=lambda key: (abs(key - m), key))]


def default_moe_config(dtype: str, m: int) -> KernelConfig:
    """Untuned fused-MoE heuristic for E=160, top-8 routing (about m / 20 rows per active expert).

    BLOCK_SIZE_M grows with the rows an expert receives; BLOCK_SIZE_N is 128 for FP8 (the gate/up
    kernel always tiles its output by the 128-wide activation quantisation group) and 64 for INT4 at
    small M for more programs; BLOCK_SIZE_K is clamped to the INT4 group size at launch.
    """
    if dtype == FP8_DTYPE_NAME:
        if m <= 64:
            return KernelConfig(16, 128, 128, 1, 4, 4)
        if m <= 512:
            return KernelConfig(32, 128, 128, 1, 4, 4)
        return KernelConfig(64, 128, 128, 16, 8, 3)
    if dtype == INT4_DTYPE_NAME:
        if m <= 64:
            return KernelConfig(16, 64, 128, 1, 4, 4)
        if m <= 512:
            return KernelConfig(32, 64, 128, 1, 4, 4)
        return KernelConfig(64, 128, 64, 16, 8, 3)
    raise ValueError(f"unknown MoE dtype {dtype!r}; expected {FP8_DTYPE_NAME!r} or {INT4_DTYPE_NAME!r}")


def default_gemm_config(m: int) -> KernelConfig:
    """Untuned block-FP8 dense GEMM heuristic (BLOCK_SIZE_K = 128, one weight block per K tile)."""
    if m <= 16:
        return KernelConfig(16, 64, 128, 1, 4, 4)
    if m <= 64:
        return KernelConfig(32, 64, 128, 1, 4, 4)
    if m <= 256:
        return KernelConfig(64, 128, 128, 8, 4, 3)
    return KernelConfig(128, 128, 128, 8, 8, 3)


def get_moe_config(dtype: str, num_experts: int, inter_size: int, m: int) -> KernelConfig:
    """Table entry for this GPU and shape nearest to `m` tokens, else `default_moe_config`."""
    device = device_name()
    if device is not None:
        block_shape = FP8_BLOCK_SHAPE if dtype == FP8_DTYPE_NAME else None
        table = load_config_table(moe_config_file_name(num_experts, inter_size, device, dtype, block_shape))
        if table:
            return nearest_config(table, m)
    return default_moe_config(dtype, m)


def get_gemm_config(n: int, k: int, m: int) -> KernelConfig:
    """Table entry for this GPU and [N, K] weight nearest to `m` tokens, else `default_gemm_config`."""
    device = device_name()
    if device is not None:
        table = load_config_table(gemm_config_file_name(n, k, device))
        if table:
            return nearest_config(table, m)
    return default_gemm_config(m)
