"""Reading weight rows ahead of the quantiser: double buffering for `--device cuda`.

`prefetch_rows` reads a planned sequence of row slabs (tensor name, first row, row count) in a background
thread into a ring of reused buffers, pinned when they feed a GPU, so the read of slab i+1 (from disk or page
cache, into page-locked memory) overlaps the host-to-device copy and quantisation of slab i. Memory stays at
`depth` slabs whatever the shard size. A consumer hands a slab's buffer back by asking for the next slab, so
everything that reads a slab (including an asynchronous copy to the GPU) must be finished by then; the shard
converter guarantees it by copying each slab's outputs back to the host, which waits for the GPU, before it
moves on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import torch

from qtools.checkpoint.safetensors_io import SafetensorsReader

# Bytes of a tensor one memory map covers when slabs are mapped rather than copied.
MAP_WINDOW_BYTES = 32 << 20
Step = tuple[str, int, int]
"""(tensor name, first row, row count) of one slab."""


def slab_buffers(nbytes: int, depth: int, pin: bool) -> list[torch.Tensor]:
    """`depth` uint8 host buffers of `nbytes` each; page-locked when `pin` (needs CUDA)."""
    return [torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=pin) for _ in range(depth)]


def map_rows_inline(reader: SafetensorsReader, steps: Sequence[Step]) -> Iterator[torch.Tensor]:
    """The slabs of `steps`, one after the other, as views of a memory map (no copy). One map covers about
    `MAP_WINDOW_BYTES` of a tensor's following rows (whole slabs): mapping slab by slab costs as much as copying,
    in unmapping, and a window keeps the mapped memory bounded whatever the tensor's size."""
    window: tuple[str, int, int, torch.Tensor] | None = None
    for name, first, count in steps:
        rows = reader.tensors[name].shape[0]
        if window is None or window[0] != name or not window[1] <= first < min(first + count, rows) <= window[2]:
            window = None  # the previous map is released before the next is made
            row_bytes = max(1, reader.tensors[name].nbytes // max(rows, 1))
            span = max(count, MAP_WINDOW_BYTES // row_bytes // count * count)
            mapped = reader.map_rows(name, first, span)
            window = (name, first, first + mapped.shape[0], mapped)
        yield window[3][first - window[1] : first - window[1] + count]


def prefetch_rows(
    reader: SafetensorsReader, steps: Sequence[Step], buffers: Sequence[torch.Tensor]
) -> Iterator[torch.Tensor]:
    """The slabs of `steps` in order, each [count, ...] in the tensor's dtype, a view of one of `buffers`, read
    ahead by a background thread. A read error is raised here, at the slab that failed; leaving the loop early
    stops the thread."""
    free: queue.Queue[torch.Tensor | None] = queue.Queue()
    filled: queue.Queue[tuple[str, object]] = queue.Queue()
    for buffer in buffers:
        free.put(buffer)
    stopping = threading.Event()

    def produce() -> None:
        try:
            for name, first, count in steps:
                buffer = free.get()
                if buffer is None or stopping.is_set():
                    return
                filled.put(("rows", (reader.read_rows_into(name, first, count, buffer), buffer)))
            filled.put(("end", None))
        except BaseException as error:  # handed to the consumer, which raises it
            filled.put(("error", error))

    thread = threading.Thread(target=produce, name="qtools-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = filled.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            rows, buffer = value  # type: ignore[misc]
            yield rows
            free.put(buffer)
    finally:
        stopping.set()
        free.put(None)
        thread.join()
