"""Our safetensors reader/streaming writer against the safetensors library, and header validation."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from qtools.checkpoint.safetensors_io import SafetensorsReader, StreamingWriter, TensorSpec, read_header, shard_digest
from qtools.errors import QtoolsError

TENSORS = {
    "odd.fp8": torch.randn(7, 3).to(torch.float8_e4m3fn),
    "a.bf16": torch.randn(3, 5).bfloat16(),
    "c.f32": torch.rand(2, 3),
    "ids.i64": torch.arange(5),
    "empty": torch.empty(0, 4),
}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.view(torch.uint8) if tensor.dtype == torch.float8_e4m3fn else tensor


def test_streamed_file_loads_with_safetensors_and_is_aligned(tmp_path):
    path = tmp_path / "x.safetensors"
    writer = StreamingWriter(path, [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in TENSORS.items()], {"k": "v"})
    # Any order, in parts: each tensor goes to its planned byte range.
    for name in reversed(TENSORS):
        tensor = TENSORS[name]
        if tensor.numel() == 0:
            writer.write(name, tensor)
            continue
        half = tensor.shape[0] // 2
        writer.write_part(name, tensor[:half])
        writer.write_part(name, tensor[half:])
    digest = writer.close()
    assert digest == shard_digest(path) and not path.with_name(path.name + ".partial").exists()
    loaded = load_file(path)
    assert all(torch.equal(_bits(loaded[n]), _bits(t)) for n, t in TENSORS.items())
    infos, metadata = read_header(path)
    assert metadata == {"k": "v"}
    assert all(info.start % info.dtype.itemsize == 0 for info in infos.values())


def test_reader_reads_tensors_and_rows_written_by_safetensors(tmp_path):
    path = tmp_path / "y.safetensors"
    save_file(TENSORS, path)
    reader = SafetensorsReader(path)
    assert all(torch.equal(_bits(reader.read(n)), _bits(t)) for n, t in TENSORS.items())
    assert torch.equal(reader.read_rows("a.bf16", 1, 10), TENSORS["a.bf16"][1:])


def test_writer_refuses_overflow_and_unfinished_files(tmp_path):
    writer = StreamingWriter(tmp_path / "z.safetensors", [TensorSpec("a", torch.float32, (2,))])
    writer.write_part("a", torch.zeros(1))
    with pytest.raises(RuntimeError, match="more bytes"):
        writer.write_part("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="before 'a'"):
        writer.close()
    writer.abort()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "damage",
    ["truncated data", "truncated header", "garbage header", "empty file"],
)
def test_corrupt_files_raise_naming_the_file(tmp_path, damage):
    path = tmp_path / "bad.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    data = path.read_bytes()
    if damage == "truncated data":
        path.write_bytes(data[:-100])
    elif damage == "truncated header":
        path.write_bytes(data[:20])
    elif damage == "garbage header":
        path.write_bytes(data[:8] + b"\xff" * (len(data) - 8))
    else:
        path.write_bytes(b"")
    with pytest.raises(QtoolsError, match="bad.safetensors"):
        read_header(path)


def _raw_file(path, header: bytes, data_bytes: int) -> None:
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * data_bytes)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# Headers the safetensors library itself refuses: (header JSON, data section bytes, tensor the refusal names).
REFUSED_HEADERS = {
    "gap before a tensor": ({"a": _entry(offsets=(4, 12))}, 12, "a"),
    "overlapping tensors": ({"a": _entry(), "b": _entry(offsets=(4, 12))}, 12, "b"),
    "aliased tensors": ({"a": _entry(), "b": _entry()}, 8, "b"),
    "float offsets": ({"a": _entry(offsets=(0.0, 8.0))}, 8, "a"),
    "string offsets": ({"a": _entry(offsets=("0", "8"))}, 8, "a"),
    "three offsets": ({"a": _entry(offsets=(0, 8, 8))}, 8, "a"),
    "negative offsets": ({"a": _entry(shape=(0,), offsets=(-8, -8))}, 8, "a"),
    "end before start": ({"a": _entry(shape=(0,), offsets=(8, 0))}, 8, "a"),
    "negative dims": ({"a": _entry(shape=(-1, -2))}, 8, "a"),
    "boolean dim": ({"a": _entry(shape=(True, 2))}, 8, "a"),
    "float dim": ({"a": _entry(shape=(2.0,))}, 8, "a"),
    "offsets past the end": ({"a": _entry(shape=(4,), offsets=(0, 16))}, 8, "a"),
    "bytes past the last tensor": ({"a": _entry()}, 16, None),
    "unknown dtype": ({"a": _entry(dtype="F33")}, 8, "a"),
    "entry not an object": ({"a": [1]}, 0, "a"),
    "metadata not an object": ({"__metadata__": [1], "a": _entry()}, 8, "__metadata__"),
    "metadata value not a string": ({"__metadata__": {"k": 1}, "a": _entry()}, 8, "__metadata__"),
}
REFUSED_RAW_HEADERS = {
    "deeply nested JSON": (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 0),
    "NaN offset": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,NaN]}}', 8),
    "NUL after the JSON": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}\x00\x00', 8),
    "exponent offset": (b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8e0]}}', 8),
    "not an object": (b"[1]", 0),
    "duplicate metadata": (b'{"__metadata__":{"k":"1"},"__metadata__":{"k":"2"}}', 0),
}
ACCEPTED_HEADERS = {
    "empty": ({}, 0),
    "scalar": ({"a": _entry(shape=(), offsets=(0, 4))}, 4),
    "zero-size tensors sharing an offset": (
        {"a": _entry(shape=(0,), offsets=(0, 0)), "b": _entry(shape=(0, 3), offsets=(0, 0))},
        0,
    ),
    "tensors listed out of order": ({"b": _entry(offsets=(8, 16)), "a": _entry()}, 16),
    "null metadata": ({"__metadata__": None, "a": _entry()}, 8),
    "unknown extra key": ({"a": {**_entry(), "extra": 1}}, 8),
}


@pytest.mark.parametrize("case", REFUSED_HEADERS.values(), ids=REFUSED_HEADERS.keys())
def test_headers_safetensors_refuses_are_refused_naming_file_and_tensor(tmp_path, case):
    header, data_bytes, tensor = case
    path = tmp_path / "bad.safetensors"
    _raw_file(path, json.dumps(header).encode(), data_bytes)
    with pytest.raises(SafetensorError):
        safe_open(path, "pt")
    with pytest.raises(QtoolsError, match="bad.safetensors") as error:
        read_header(path)
    if tensor is not None:
        assert repr(tensor) in str(error.value) or tensor in str(error.value)


@pytest.mark.parametrize("case", REFUSED_RAW_HEADERS.values(), ids=REFUSED_RAW_HEADERS.keys())
def test_malformed_header_json_is_refused_like_safetensors(tmp_path, case):
    raw, data_bytes = case
    path = tmp_path / "bad.safetensors"
    _raw_file(path, raw, data_bytes)
    with pytest.raises(SafetensorError):
        safe_open(path, "pt")
    with pytest.raises(QtoolsError, match="bad.safetensors"):
        read_header(path)


@pytest.mark.parametrize("case", ACCEPTED_HEADERS.values(), ids=ACCEPTED_HEADERS.keys())
def test_headers_safetensors_accepts_are_accepted(tmp_path, case):
    header, data_bytes = case
    path = tmp_path / "ok.safetensors"
    _raw_file(path, json.dumps(header).encode(), data_bytes)
    with safe_open(path, "pt") as handle:
        names = set(handle.keys())
    tensors, _ = read_header(path)
    assert set(tensors) == names


def test_a_tensor_named_twice_is_refused_though_safetensors_takes_one(tmp_path):
    """The one rule stricter than the library's: two entries for one name leave which bytes it holds ambiguous."""
    path = tmp_path / "twice.safetensors"
    entry = b'{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
    _raw_file(path, b'{"a":' + entry + b',"a":' + entry + b"}", 8)
    with safe_open(path, "pt") as handle:
        assert list(handle.keys()) == ["a"]
    with pytest.raises(QtoolsError, match="'a' appears twice"):
        read_header(path)
