"""Kernel tests run on a GPU when there is one, else in the Triton interpreter on CPU.

TRITON_INTERPRET must be set before `triton` is first imported (kernels are bound to the interpreter
when decorated), hence the module-level assignment ahead of any qtools_kernels import.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from qtools_kernels._buffers import poison_allocations  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every buffer the kernels allocate starts as NaN (ints: a negative sentinel), so an element a
    kernel fails to write makes the comparison with the reference fail."""
    with poison_allocations():
        yield


@pytest.fixture
def device() -> torch.device:
    return DEVICE
