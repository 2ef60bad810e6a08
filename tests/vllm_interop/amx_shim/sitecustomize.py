"""Test-only shim for the vLLM interop tests on CPUs without AMX; never on AMX CPUs or GPUs.

Why: vLLM's CPU build (0.32) refuses FP8 block-scaled linears ("CPUFp8BlockScaledMMKernel requires AMX tile
support"), FP8 MoE experts (`CPUExpertsFp8`) and W4A16 MoE experts (`CPUExpertsInt4`: "No WNA16 MoE backend
supports the deployment configuration") on a CPU without AMX tiles, before trying its kernels; its only
other CPU INT4 MoE backend (ZEN_CPU, through AMD's zentorch) is chosen only on AMD CPUs with AVX-512. The
machines the suite runs on (AMD EPYC without AMX) would then test none of our quantised outputs in vLLM.

What: this file is put on PYTHONPATH of the vLLM processes the tests start (so vLLM's engine-core and worker
processes get it too) only when /proc/cpuinfo lacks `amx_tile`. It answers exactly three capability checks,
each after vLLM's own module has loaded, and nothing else: `CPUFp8BlockScaledMMKernel.is_supported`,
`CPUExpertsFp8._supports_current_device` and `CPUExpertsInt4._supports_current_device` report "supported"
on an x86 CPU with vLLM's CPU ops built in. Weights are still read by vLLM's own loaders and run through
vLLM's own CPU kernels. Faking AMX more broadly (e.g. `torch.cpu._is_amx_tile_supported`) crashes (SIGILL).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_PATCHED_MODULES = {
    "vllm.model_executor.kernels.linear.scaled_mm.cpu",
    "vllm.model_executor.layers.fused_moe.experts.cpu_moe",
}


def _supported_fp8_linear(cls, compute_capability=None):
    from vllm import _custom_ops as ops
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False, "requires CPU platform."
    if not ops._supports_cpu_fp8_w8a16:
        return False, "fp8_scaled_mm_cpu op not available."
    return True, None


def _x86_cpu() -> bool:
    from vllm.platforms import CpuArchEnum, current_platform

    return current_platform.is_cpu() and current_platform.get_cpu_architecture() == CpuArchEnum.X86


def _answer_checks(module) -> None:
    if module.__name__.endswith("scaled_mm.cpu"):
        module.CPUFp8BlockScaledMMKernel.is_supported = classmethod(_supported_fp8_linear)
    else:
        module.CPUExpertsFp8._supports_current_device = staticmethod(_x86_cpu)
        module.CPUExpertsInt4._supports_current_device = staticmethod(_x86_cpu)


class _AfterLoad(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        _answer_checks(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _PATCHED_MODULES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        spec.loader = _AfterLoad(spec.loader)
        return spec


sys.meta_path.insert(0, _Finder())
