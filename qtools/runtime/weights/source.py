"""Named tensors read from a checkpoint one at a time, straight from the safetensors shards."""

from __future__ import annotations

import torch

from qtools.checkpoint.hf import Checkpoint
from qtools.checkpoint.safetensors_io import SafetensorsReader, TensorInfo
from qtools.errors import QtoolsError


class WeightSource:
    """Reads tensors of a checkpoint on demand; each shard's header is parsed once."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint = checkpoint
        self._readers: dict[str, SafetensorsReader] = {}

    def has(self, name: str) -> bool:
        return name in self.checkpoint.weight_map

    def _reader(self, name: str) -> SafetensorsReader:
        shard = self.checkpoint.weight_map.get(name)
        if shard is None:
            raise QtoolsError(f"{self.checkpoint.root}: checkpoint has no tensor {name!r}")
        if shard not in self._readers:
            self._readers[shard] = self.checkpoint.reader(shard)
        return self._readers[shard]

    def lookup(self, name: str) -> TensorInfo | None:
        """dtype and shape of tensor `name`, None when the checkpoint has no such tensor."""
        return self.info(name) if self.has(name) else None

    def info(self, name: str) -> TensorInfo:
        """dtype and shape of tensor `name`, from the shard header."""
        return self._reader(name).tensors[name]

    def read(self, name: str, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor `name` on `device`, cast to `dtype` when given (else as stored)."""
        return self._reader(name).read(name).to(device=device, dtype=dtype)

    def read_shape_checked(
        self, name: str, shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """`read`, refusing a tensor whose stored shape is not `shape`."""
        stored = self.info(name).shape
        if tuple(stored) != tuple(shape):
            raise QtoolsError(f"{self.checkpoint.root}: {name} has shape {tuple(stored)}, expected {tuple(shape)}")
        return self.read(name, device, dtype)
