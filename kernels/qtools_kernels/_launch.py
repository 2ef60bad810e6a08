"""A planned kernel launch: run it, or compile it ahead of time for a GPU that is not here.

Host wrappers build `KernelLaunch` objects from their tensors and run them. Because the plan is built
from tensors alone, the same code works on `meta` tensors: `compile_for` turns a plan into an
`ASTSource` with the argument types and divisibility hints Triton's JIT would derive from real
tensors, so every config can be compiled for Hopper on a machine without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import triton

_TRITON_DTYPES = {
    torch.float8_e4m3fn: "fp8e4nv",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}


def is_interpreted(kernel: Any) -> bool:
    """True when `kernel` was decorated while TRITON_INTERPRET=1 (it then runs on CPU tensors)."""
    # The interpreter module needs numpy, which a GPU install may lack: look it up only when it can matter.
    if type(kernel).__name__ != "InterpretedFunction":
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def check_device(kernel: Any, *tensors: torch.Tensor) -> None:
    """Refuse CPU tensors unless the kernel runs in the Triton interpreter."""
    if is_interpreted(kernel):
        return
    for tensor in tensors:
        if tensor.device.type != "cuda":
            raise RuntimeError(
                f"qtools_kernels ops need CUDA tensors (got {tensor.device}); on CPU set TRITON_INTERPRET=1 "
                "before importing triton, or call the pure-torch references in qtools_kernels.reference / "
                "qtools_kernels.moe_reference"
            )


def _specialize(value: Any) -> tuple[str, Any]:
    """(type, hint) as Triton's JIT specialises a runtime argument: ints equal to 1 become constexprs,
    pointers and ints divisible by 16 get the divisibility hint "D"."""
    if isinstance(value, torch.Tensor):
        return "*" + _TRITON_DTYPES[value.dtype], "D" if value.data_ptr() % 16 == 0 else ""
    if isinstance(value, bool):
        return "i1", ""
    if isinstance(value, int):
        if value == 1:
            return "constexpr", 1
        kind = "i32" if -(2**31) <= value < 2**31 else "i64"
        return kind, "D" if value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", ""
    raise TypeError(f"cannot specialise kernel argument of type {type(value).__name__}")


@dataclass
class KernelLaunch:
    """One kernel launch: the `@triton.jit` function, its grid, runtime arguments and constexprs."""

    kernel: Any
    grid: tuple[int, ...]
    args: dict[str, Any]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3

    def run(self) -> None:
        if min(self.grid) == 0:
            return
        self.kernel[self.grid](
            **self.args, **self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages
        )

    def compile_for(self, target: Any) -> Any:
        """Compile without launching (works on `meta` tensors); returns Triton's compiled kernel, whose
        `metadata.shared` is the dynamic shared memory it needs in bytes."""
        from triton.backends.nvidia.compiler import CUDABackend

        if is_interpreted(self.kernel):
            raise RuntimeError("kernels were decorated under TRITON_INTERPRET=1 and cannot be compiled")
        signature: dict[str, str] = {}
        constexprs: dict[str, Any] = {}
        attrs: dict[tuple[int], Any] = {}
        for index, name in enumerate(self.kernel.arg_names):
            if name in self.constexprs:
                signature[name] = "constexpr"
                constexprs[name] = self.constexprs[name]
                continue
            kind, hint = _specialize(self.args[name])
            signature[name] = kind
            if kind == "constexpr":
                constexprs[name] = hint
            elif hint:
                attrs[(index,)] = CUDABackend.parse_attr(hint)
        source = triton.compiler.ASTSource(
            fn=self.kernel, signature=signature, constexprs=constexprs, attrs=attrs
        )
        options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        return triton.compile(source, target=target, options=options)
