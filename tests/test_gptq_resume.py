"""A calibrated conversion killed with SIGKILL resumes from its last finished layer, byte for byte.

The run is a subprocess that stops at a chosen point (it prints a line and waits on stdin, so the kill lands
exactly there, with no timing involved), is killed with SIGKILL, and is then resumed in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qtools.checkpoint.hf import INDEX_NAME, STATE_DIR
from qtools.gptq import convert_gptq
from qtools.recipe import load_recipe
from tests.test_gptq import BATCH, random_calibration, weights_digest

RUN = """
import hashlib, sys
import torch
from qtools.calibration import CalibrationSet
from qtools.gptq import GPTQHooks, convert_gptq
from qtools.recipe import load_recipe

torch.set_num_threads(1)
source, destination, ids_file, stop_layer, stop_at, batch = sys.argv[1:]
ids = torch.load(ids_file)
data = CalibrationSet(ids, hashlib.sha256(ids.numpy().tobytes()).hexdigest(), "test tokens")

def stop(layer, phase):
    if layer == int(stop_layer) and phase == stop_at:
        print("stopped", flush=True)
        sys.stdin.readline()

hooks = GPTQHooks(on_layer_start=lambda layer, phase, units: stop(layer, phase),
                  on_layer_done=lambda layer, report: stop(layer, "done"))
convert_gptq(source, destination, load_recipe("w4a16-gptq"), data, batch_size=int(batch), hooks=hooks)
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def uninterrupted(aligned_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gptq-resume") / "whole"
    convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), random_calibration(500), batch_size=BATCH)
    return out


@pytest.mark.parametrize(
    "layer, stop_at, reused",
    [(1, "calibrate", 1), (1, "quantise", 1), (1, "done", 2)],
    ids=["before-layer-1", "layer-1-hessians-done", "before-the-shards"],
)
def test_kill_9_resumes_from_the_last_finished_layer_byte_identically(
    aligned_checkpoint, uninterrupted, tmp_path, layer, stop_at, reused
):
    calibration = random_calibration(500)
    ids_file = tmp_path / "ids.pt"
    torch.save(calibration.input_ids, ids_file)
    out = tmp_path / "out"
    command = [sys.executable, "-c", RUN, str(aligned_checkpoint), str(out), str(ids_file), str(layer), stop_at]
    process = subprocess.Popen(
        [*command, str(BATCH)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = process.stdout.readline()
        assert line == "stopped\n", process.stderr.read()[-3000:]
        process.kill()
        assert process.wait() == -9
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not (out / INDEX_NAME).exists()
    summary = convert_gptq(aligned_checkpoint, out, load_recipe("w4a16-gptq"), calibration, batch_size=BATCH)
    assert (summary.layers_reused, summary.layers_calibrated) == (reused, 2 - reused)
    assert weights_digest(out) == weights_digest(uninterrupted)
    report = json.loads((out / STATE_DIR / "calibration.json").read_text())
    assert report == json.loads((uninterrupted / STATE_DIR / "calibration.json").read_text())
