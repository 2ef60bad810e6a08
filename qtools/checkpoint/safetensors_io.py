"""Tensor-by-tensor reading and streaming, atomic writing of safetensors files.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape,
data_offsets relative to the data section; optional `__metadata__` of strings), then the raw data. Reading one
tensor is one `pread`; writing lays the header out from the planned shapes first and streams each tensor after
it, so memory never holds more than the tensor in hand.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from qtools.errors import QtoolsError

DTYPE_BY_NAME: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
NAME_BY_DTYPE = {dtype: name for name, dtype in DTYPE_BY_NAME.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file: dtype, shape and absolute byte range."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def dtype_itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: returns (tensors by name, metadata).

    Raises QtoolsError naming the file when it is truncated or corrupt.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise QtoolsError(f"{path}: truncated safetensors file ({file_size} bytes, no header)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES or 8 + header_len > file_size:
                raise QtoolsError(f"{path}: corrupt or truncated safetensors header (length {header_len})")
            raw = handle.read(header_len)
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise QtoolsError(f"{path}: corrupt safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise QtoolsError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = DTYPE_BY_NAME[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise QtoolsError(f"{path}: tensor {name!r} has a malformed or unsupported header entry") from error
        expected = math.prod(shape) * dtype_itemsize(dtype)
        if end - begin != expected or begin < 0:
            raise QtoolsError(f"{path}: tensor {name!r} byte range does not match its shape and dtype")
        if data_start + end > file_size:
            raise QtoolsError(
                f"{path}: truncated: tensor {name!r} ends at byte {data_start + end}, file has {file_size}"
            )
        tensors[name] = TensorInfo(name, dtype, shape, data_start + begin, data_start + end)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


class SafetensorsReader:
    """Reads single tensors from one safetensors file without mapping or loading the rest."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tensors, self.metadata = read_header(self.path)

    def read(self, name: str) -> torch.Tensor:
        """Return tensor `name` as a fresh CPU tensor owning its memory."""
        info = self.tensors[name]
        return self._read_range(name, info.start, info.nbytes, info.dtype, info.shape)

    def read_rows(self, name: str, first: int, count: int) -> torch.Tensor:
        """Return rows [first, first + count) of a tensor (clipped to its length), reading only those bytes."""
        info = self.tensors[name]
        count = max(0, min(count, info.shape[0] - first))
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        shape = (count, *info.shape[1:])
        return self._read_range(name, info.start + first * row_bytes, count * row_bytes, info.dtype, shape)

    def _read_range(self, name: str, start: int, nbytes: int, dtype: torch.dtype, shape) -> torch.Tensor:
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(nbytes)
        try:
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(start)
                view = memoryview(buffer)
                filled = 0
                while filled < nbytes:
                    got = handle.readinto(view[filled:])
                    if not got:
                        raise QtoolsError(f"{self.path}: truncated while reading tensor {name!r}")
                    filled += got
        except OSError as error:
            raise QtoolsError(f"{self.path}: cannot read tensor {name!r} ({error.strerror})") from error
        return torch.frombuffer(buffer, dtype=dtype).view(shape)


@dataclass(frozen=True)
class TensorSpec:
    """A tensor planned for a file before its data exists."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * dtype_itemsize(self.dtype)


def _layout(specs: list[TensorSpec]) -> list[TensorSpec]:
    # Widest dtypes first keeps every tensor aligned to its element size, as safetensors' own writer does.
    return sorted(specs, key=lambda s: (-dtype_itemsize(s.dtype), s.name))


class StreamingWriter:
    """Writes a safetensors file tensor by tensor in a fixed planned order, atomically.

    Data goes to `<path>.partial`; `close()` checks every planned tensor was written, fsyncs and renames it
    into place. The SHA-256 of the final file is computed on the way.
    """

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.order = _layout(specs)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offset = 0
        for spec in self.order:
            header[spec.name] = {
                "dtype": NAME_BY_DTYPE[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self.size = 8 + len(encoded) + offset
        self._next = 0
        self._written = 0
        self._hash = hashlib.sha256()
        self._handle = open(self.partial, "wb")
        self._write(struct.pack("<Q", len(encoded)) + encoded)

    def _write(self, data) -> None:
        try:
            self._handle.write(data)
        except OSError as error:
            self.abort()
            raise QtoolsError(f"{self.partial}: write failed ({error.strerror})") from error
        self._hash.update(data)

    @property
    def pending(self) -> TensorSpec | None:
        """The tensor the writer expects next, or None once all are written."""
        return self.order[self._next] if self._next < len(self.order) else None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the whole next tensor; it must be the one `pending` names, with the planned dtype and shape."""
        spec = self._expect(name)
        if tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"{name}: planned shape {spec.shape}, got {tuple(tensor.shape)}")
        self.write_part(name, tensor)

    def write_part(self, name: str, part: torch.Tensor) -> None:
        """Write the next slice (leading rows) of the pending tensor; the tensor is done once all bytes are in."""
        spec = self._expect(name)
        if part.dtype != spec.dtype:
            raise RuntimeError(f"{name}: planned {spec.dtype}, got {part.dtype}")
        data = part.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
        self._advance(spec, data.nbytes)
        self._write(memoryview(data))

    def copy_part(self, name: str, source: Path, start: int, nbytes: int, chunk_bytes: int = 64 << 20) -> None:
        """Copy the pending tensor's bytes verbatim from `source` (a passthrough tensor), in bounded chunks."""
        spec = self._expect(name)
        self._advance(spec, nbytes)
        with open(source, "rb", buffering=0) as handle:
            handle.seek(start)
            left = nbytes
            while left:
                chunk = handle.read(min(chunk_bytes, left))
                if not chunk:
                    self.abort()
                    raise QtoolsError(f"{source}: truncated while copying tensor {name!r}")
                self._write(chunk)
                left -= len(chunk)

    def _expect(self, name: str) -> TensorSpec:
        spec = self.pending
        if spec is None or spec.name != name:
            raise RuntimeError(f"write order broken: got {name!r}, expected {spec.name if spec else None!r}")
        return spec

    def _advance(self, spec: TensorSpec, nbytes: int) -> None:
        self._written += nbytes
        if self._written > spec.nbytes:
            raise RuntimeError(f"{spec.name}: more bytes than planned ({self._written} > {spec.nbytes})")
        if self._written == spec.nbytes:
            self._next += 1
            self._written = 0

    def close(self) -> str:
        """Finish the file: fsync, rename into place, return its SHA-256 hex digest."""
        if self.pending is not None:
            raise RuntimeError(f"{self.path}: closed before {self.pending.name!r} was written")
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            os.replace(self.partial, self.path)
        except OSError as error:
            self.abort()
            raise QtoolsError(f"{self.path}: could not finish writing ({error.strerror})") from error
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._handle.closed:
            self._handle.close()
        self.partial.unlink(missing_ok=True)


def file_sha256(path: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
    """SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write small file contents atomically (temp file, fsync, rename)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise QtoolsError(f"{path}: write failed ({error.strerror})") from error
