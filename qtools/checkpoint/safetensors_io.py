"""Tensor-by-tensor reading and streaming, atomic writing of safetensors files.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (name -> dtype, shape,
data_offsets relative to the data section; optional `__metadata__` of strings), then the raw data. Reading one
tensor is one `pread`; writing lays the header out from the planned shapes first and streams each tensor after
it, so memory never holds more than the tensor in hand.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import mmap
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash

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


def read_raw_header(path: Path) -> bytes:
    """The 8-byte length prefix and the header JSON bytes of a safetensors file, length-checked.

    Raises QtoolsError naming the file when it cannot be read or the length is impossible.
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
            return prefix + handle.read(header_len)
    except OSError as error:
        raise QtoolsError(f"{path}: cannot read ({error.strerror})") from error


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"key {duplicate!r} appears twice")
    return dict(pairs)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _parse_header_json(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except RecursionError as error:
        raise QtoolsError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from error
    except (UnicodeDecodeError, ValueError) as error:
        raise QtoolsError(f"{path}: corrupt safetensors header ({error})") from error
    if not isinstance(header, dict):
        raise QtoolsError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header


def _is_sizes(value: object) -> bool:
    """A JSON list of non-negative integers (not booleans, not floats such as 8.0): what safetensors' usize wants."""
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


def _entry_info(path: Path, name: str, entry: object, data_start: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise QtoolsError(f"{path}: tensor {name!r}: header entry is not an object")
    dtype = DTYPE_BY_NAME.get(entry.get("dtype")) if isinstance(entry.get("dtype"), str) else None
    if dtype is None:
        raise QtoolsError(f"{path}: tensor {name!r}: unsupported or missing dtype {entry.get('dtype')!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _is_sizes(shape):
        raise QtoolsError(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if not (_is_sizes(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]):
        raise QtoolsError(f"{path}: tensor {name!r}: data_offsets {offsets!r} are not [begin, end] byte offsets")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype_itemsize(dtype):
        raise QtoolsError(f"{path}: tensor {name!r} byte range does not match its shape and dtype")
    return TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header: returns (tensors by name, metadata).

    Applies the rules of the safetensors library: offsets and dims are non-negative JSON integers, each tensor's
    byte range matches its shape and dtype, the tensors tile the data section exactly (no gap, overlap or alias,
    nothing past the end and no byte after the last tensor), `__metadata__` maps strings to strings. One rule is
    stricter: a name given twice is refused instead of resolved silently. Raises QtoolsError naming the file (and
    the tensor) when the file breaks any of them.
    """
    path = Path(path)
    raw = read_raw_header(path)
    file_size = path.stat().st_size
    header = _parse_header_json(path, raw[8:])
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise QtoolsError(f"{path}: corrupt safetensors header (__metadata__ must map strings to strings)")
    data_start = len(raw)
    tensors = {name: _entry_info(path, name, entry, data_start) for name, entry in header.items()}
    covered = data_start
    for info in sorted(tensors.values(), key=lambda info: (info.start, info.end)):
        if info.start != covered:
            raise QtoolsError(
                f"{path}: tensor {info.name!r} starts at data byte {info.start - data_start}, expected "
                f"{covered - data_start}: tensors must follow each other without gaps, overlaps or aliases"
            )
        if info.end > file_size:
            raise QtoolsError(f"{path}: truncated: tensor {info.name!r} ends at byte {info.end}, file has {file_size}")
        covered = info.end
    if covered != file_size:
        raise QtoolsError(f"{path}: holds {file_size - covered} bytes past its last tensor")
    return tensors, dict(metadata)


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

    def read_rows_into(self, name: str, first: int, count: int, out: torch.Tensor) -> torch.Tensor:
        """`read_rows` into the front of `out` (a contiguous CPU uint8 tensor of at least the rows' bytes, e.g.
        a reused or pinned buffer) instead of fresh memory: one copy from the page cache, no page faults for new
        memory. Returns the rows as a view of `out`."""
        info = self.tensors[name]
        count = max(0, min(count, info.shape[0] - first))
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        nbytes = count * row_bytes
        if out.dtype != torch.uint8 or not out.is_contiguous() or out.numel() < nbytes or out.device.type != "cpu":
            raise ValueError(f"{name}: read_rows_into needs a contiguous CPU uint8 buffer of {nbytes} bytes")
        target = out[:nbytes]
        self._fill(name, info.start + first * row_bytes, memoryview(target.numpy()))
        return target.view(info.dtype).view(count, *info.shape[1:])

    def map_rows(self, name: str, first: int, count: int) -> torch.Tensor:
        """`read_rows` without a copy: the rows as a read-only view of a memory map of just their bytes, its
        pages populated in one call (no fault per page). Reading from the page cache this costs a fifth of a
        copy on the development VM. The map lives as long as the tensor; never write to it."""
        info = self.tensors[name]
        count = max(0, min(count, info.shape[0] - first))
        row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
        nbytes = count * row_bytes
        if nbytes == 0 or not hasattr(mmap, "MAP_POPULATE"):
            return self.read_rows(name, first, count)
        start = info.start + first * row_bytes
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.path, "rb", buffering=0) as handle:
                mapped = mmap.mmap(
                    handle.fileno(),
                    start + nbytes - aligned,
                    flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                    prot=mmap.PROT_READ,
                    offset=aligned,
                )
        except (OSError, ValueError) as error:
            raise QtoolsError(f"{self.path}: cannot map tensor {name!r} ({error}); is the file truncated?") from error
        with warnings.catch_warnings():
            # The tensor is read-only in fact (PROT_READ): nothing in the converter writes to source rows.
            warnings.filterwarnings("ignore", message="The given buffer is not writable")
            flat = torch.frombuffer(mapped, dtype=torch.uint8, count=nbytes, offset=start - aligned)
        return flat.view(info.dtype).view(count, *info.shape[1:])

    def _fill(self, name: str, start: int, view: memoryview) -> None:
        nbytes = view.nbytes
        try:
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(start)
                filled = 0
                while filled < nbytes:
                    got = handle.readinto(view[filled:])
                    if not got:
                        raise QtoolsError(f"{self.path}: truncated while reading tensor {name!r}")
                    filled += got
        except OSError as error:
            raise QtoolsError(f"{self.path}: cannot read tensor {name!r} ({error.strerror})") from error

    def _read_range(self, name: str, start: int, nbytes: int, dtype: torch.dtype, shape) -> torch.Tensor:
        if nbytes == 0:
            return torch.empty(shape, dtype=dtype)
        buffer = bytearray(nbytes)
        self._fill(name, start, memoryview(buffer))
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

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        """The spec of a tensor in hand."""
        return cls(name, tensor.dtype, tuple(tensor.shape))


def _layout(specs: list[TensorSpec]) -> list[TensorSpec]:
    # Widest dtypes first keeps every tensor aligned to its element size, as safetensors' own writer does.
    return sorted(specs, key=lambda s: (-dtype_itemsize(s.dtype), s.name))


class StreamingWriter:
    """Writes a safetensors file atomically, tensor by tensor, in any order, from a plan of names, dtypes and shapes.

    The header (and so every tensor's byte range) is fixed up front, so each tensor's bytes go straight to their
    place with positional writes, in parts (leading rows first) if need be. Data goes to `<path>.partial`;
    `close()` checks every planned byte was written, fsyncs, hashes the file and renames it into place.
    """

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.specs = {spec.name: spec for spec in specs}
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        offsets = {}
        offset = 0
        for spec in _layout(specs):
            header[spec.name] = {
                "dtype": NAME_BY_DTYPE[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offsets[spec.name] = offset
            offset += spec.nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        data_start = 8 + len(encoded)
        self.size = data_start + offset
        self._start = {name: data_start + o for name, o in offsets.items()}
        self._written = dict.fromkeys(self.specs, 0)
        self._header = struct.pack("<Q", len(encoded)) + encoded
        self._hashers = {name: xxhash.xxh3_64() for name in self.specs}
        self._handle = open(self.partial, "wb")
        try:
            self._reserve()
            self._pwrite(self._header, 0)
        except BaseException:
            self.abort()
            raise

    def _reserve(self) -> None:
        # Claiming the whole file up front makes a full disk fail now, before any work, where the filesystem can.
        try:
            os.posix_fallocate(self._handle.fileno(), 0, self.size)
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return
            self.abort()
            raise QtoolsError(f"{self.partial}: write failed ({error.strerror})") from error

    def _pwrite(self, data, position: int) -> None:
        view = memoryview(data).cast("B")
        try:
            while view.nbytes:
                done = os.pwrite(self._handle.fileno(), view, position)
                view, position = view[done:], position + done
        except OSError as error:
            self.abort()
            raise QtoolsError(f"{self.partial}: write failed ({error.strerror})") from error

    @property
    def unfinished(self) -> list[str]:
        """Names of planned tensors not completely written yet."""
        return [name for name, spec in self.specs.items() if self._written[name] != spec.nbytes]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write a whole tensor; it must have the planned dtype and shape and not be started yet."""
        spec = self.specs[name]
        if tuple(tensor.shape) != spec.shape or self._written[name]:
            raise RuntimeError(f"{name}: planned shape {spec.shape}, got {tuple(tensor.shape)} (or already begun)")
        self.write_part(name, tensor)

    def write_part(self, name: str, part: torch.Tensor) -> None:
        """Write the next slice (following rows) of tensor `name`; it is done once all its bytes are in."""
        spec = self.specs[name]
        if part.dtype != spec.dtype:
            raise RuntimeError(f"{name}: planned {spec.dtype}, got {part.dtype}")
        data = part.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
        self._pwrite(data, self._advance(spec, data.nbytes))
        self._hashers[name].update(data)

    def copy_part(
        self,
        name: str,
        source: Path,
        start: int,
        nbytes: int,
        chunk_bytes: int = 64 << 20,
        check_chunk: Callable[[memoryview], None] | None = None,
    ) -> None:
        """Copy tensor `name`'s bytes verbatim from `source` (a passthrough tensor), in bounded chunks.

        `check_chunk` sees each chunk (whole elements: chunks start at the tensor's start and `chunk_bytes` is a
        multiple of every element size) before it is written, and may raise to stop the copy.
        """
        spec = self.specs[name]
        position = self._advance(spec, nbytes)
        buffer = bytearray(min(chunk_bytes, nbytes))
        with open(source, "rb", buffering=0) as handle:
            handle.seek(start)
            left = nbytes
            while left:
                got = handle.readinto(memoryview(buffer)[: min(len(buffer), left)])
                if not got:
                    self.abort()
                    raise QtoolsError(f"{source}: truncated while copying tensor {name!r}")
                if check_chunk is not None:
                    check_chunk(memoryview(buffer)[:got])
                self._pwrite(memoryview(buffer)[:got], position)
                self._hashers[name].update(memoryview(buffer)[:got])
                position, left = position + got, left - got

    def tensor_digest(self, name: str) -> bytes:
        """XXH3-64 of the bytes of tensor `name` written so far."""
        return self._hashers[name].digest()

    def _advance(self, spec: TensorSpec, nbytes: int) -> int:
        """Reserve the next `nbytes` of tensor `spec`; returns their absolute file position."""
        position = self._start[spec.name] + self._written[spec.name]
        self._written[spec.name] += nbytes
        if self._written[spec.name] > spec.nbytes:
            raise RuntimeError(f"{spec.name}: more bytes than planned ({self._written[spec.name]} > {spec.nbytes})")
        return position

    def close(self) -> str:
        """Finish the file: check it is complete, fsync, rename into place; returns its `shard_digest`."""
        if self.unfinished:
            raise RuntimeError(f"{self.path}: closed before {self.unfinished[0]!r} was written")
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            order = sorted(self._start, key=self._start.__getitem__)
            digest = _combine_digests(self._header, [self._hashers[name].digest() for name in order])
            os.replace(self.partial, self.path)
        except OSError as error:
            self.abort()
            raise QtoolsError(f"{self.path}: could not finish writing ({error.strerror})") from error
        return digest

    def abort(self) -> None:
        """Drop the partial file."""
        if not self._handle.closed:
            self._handle.close()
        self.partial.unlink(missing_ok=True)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Write `tensors` (any dtypes and shapes) to the safetensors file `path` through `StreamingWriter`
    (atomically; the layout is safetensors' own); returns its `shard_digest`."""
    writer = StreamingWriter(path, [TensorSpec.of(name, tensor) for name, tensor in tensors.items()], metadata)
    try:
        for name, tensor in tensors.items():
            writer.write(name, tensor)
        return writer.close()
    except BaseException:
        writer.abort()
        raise


def _combine_digests(header: bytes, tensor_digests: list[bytes]) -> str:
    return hashlib.sha256(header + b"".join(tensor_digests)).hexdigest()


def shard_digest(path: Path, chunk_bytes: int = 16 * 1024 * 1024) -> str:
    """Digest of a safetensors file: SHA-256 over its header and the 64-bit XXH3 of each tensor's bytes, in file
    order.

    It covers every byte of the file and catches truncation and accidental damage (it is not meant to resist
    deliberate tampering). A writer computes it while placing tensors out of order, without reading the file back;
    XXH3 runs at about 12 GB/s here, against 2 GB/s for CRC-32 and 1 GB/s for SHA-256. Raises QtoolsError for a
    corrupt file.
    """
    infos, _ = read_header(path)
    order = sorted(infos.values(), key=lambda info: info.start)
    header = read_raw_header(path)
    with open(path, "rb") as handle:
        digests = []
        for info in order:
            hasher = xxhash.xxh3_64()
            handle.seek(info.start)
            left = info.nbytes
            while left:
                chunk = handle.read(min(chunk_bytes, left))
                if not chunk:
                    raise QtoolsError(f"{path}: truncated")
                hasher.update(chunk)
                left -= len(chunk)
            digests.append(hasher.digest())
        if handle.seek(0, os.SEEK_END) != (order[-1].end if order else len(header)):
            raise QtoolsError(f"{path}: holds bytes past its last tensor")
    return _combine_digests(header, digests)


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
