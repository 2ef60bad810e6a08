"""Shipped launch-config tables: names, contents, nearest-M lookup, and a Hopper compile of each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qtools_kernels.tuning import (
    CONFIG_DIR,
    FP8_BLOCK_SHAPE,
    FP8_DTYPE_NAME,
    INT4_DTYPE_NAME,
    KernelConfig,
    gemm_config_file_name,
    load_config_table,
    moe_config_file_name,
    nearest_config,
)

H100 = "NVIDIA_H100_80GB_HBM3"
REQUIRED_KEYS = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps", "num_stages"}


def test_file_names_follow_vllm() -> None:
    assert (
        moe_config_file_name(160, 2560, H100, FP8_DTYPE_NAME, FP8_BLOCK_SHAPE)
        == "E=160,N=2560,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    )
    assert (
        moe_config_file_name(160, 320, H100, INT4_DTYPE_NAME, None)
        == "E=160,N=320,device_name=NVIDIA_H100_80GB_HBM3,dtype=int4_w4a16.json"
    )
    assert (
        gemm_config_file_name(12288, 6144, H100)
        == "N=12288,K=6144,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8,block_shape=[128,128].json"
    )


@pytest.mark.parametrize("inter", [2560, 1280, 640, 320], ids=lambda n: f"I={n}")
@pytest.mark.parametrize("dtype", [FP8_DTYPE_NAME, INT4_DTYPE_NAME])
def test_moe_tables_shipped_for_every_tp_slice(dtype: str, inter: int) -> None:
    block_shape = FP8_BLOCK_SHAPE if dtype == FP8_DTYPE_NAME else None
    table = load_config_table(moe_config_file_name(160, inter, H100, dtype, block_shape))
    assert table is not None and 1 in table and 4096 in table


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.json")), ids=lambda p: p.name)
def test_table_contents(path) -> None:
    raw = json.loads(path.read_text())
    assert raw, "empty table"
    for m, entry in raw.items():
        assert int(m) > 0 and set(entry) == REQUIRED_KEYS, f"{path.name} M={m}"
        config = KernelConfig.from_json(entry)
        assert config.block_k in (16, 32, 64, 128), "BLOCK_SIZE_K must divide the 128 scale block"
        assert config.block_m >= 16 and config.block_m & (config.block_m - 1) == 0
        if path.name.startswith("E=") and FP8_DTYPE_NAME in path.name:
            assert config.block_n == 128, "the FP8 gate/up kernel tiles N by the 128-wide quant group"


def test_nearest_m_lookup() -> None:
    table = {
        1: KernelConfig(16, 1, 1, 1, 1, 1),
        64: KernelConfig(32, 1, 1, 1, 1, 1),
        256: KernelConfig(64, 1, 1, 1, 1, 1),
    }
    assert nearest_config(table, 1).block_m == 16
    assert nearest_config(table, 40).block_m == 32
    assert nearest_config(table, 160).block_m == 32
    assert nearest_config(table, 161).block_m == 64
    assert nearest_config(table, 100_000).block_m == 64


def test_every_shipped_config_compiles_for_hopper(tmp_path) -> None:
    # Compiling needs real (non-interpreted) kernels, so it runs in a fresh process without
    # TRITON_INTERPRET; ptxas ships inside the triton wheel, no GPU or CUDA driver is needed.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    report = tmp_path / "aot.json"
    result = subprocess.run(
        [sys.executable, "-m", "qtools_kernels.aot_check", "--json", str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = json.loads(report.read_text())
    kernels = {row["kernel"] for row in rows}
    assert {"_fused_moe_fp8_w13_kernel", "_fused_moe_w4a16_w2_kernel", "_fp8_block_matmul_kernel"} <= kernels
    assert all(row["ok"] and row["shared_bytes"] <= 232448 for row in rows)
