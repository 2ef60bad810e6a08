"""Our safetensors reader/streaming writer against the safetensors library, and header validation."""

from __future__ import annotations

import pytest
import torch
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
