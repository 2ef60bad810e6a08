"""Two torchrun ranks (gloo, CPU) share a calibrated conversion: every rank runs every calibration token through
each layer, each keeps the Hessians of its block of experts and quantises them, rank 0 merges and saves the layer.
The output is byte-identical to a single process's."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from qtools.checkpoint.hf import STATE_DIR
from qtools.gptq import convert_gptq
from tests.test_distributed import _free_port
from tests.test_gptq import BATCH, gptq_recipe, random_calibration, weights_digest

RUN = """
import hashlib, sys
import torch
from qtools.calibration import CalibrationSet
from qtools.gptq import convert_gptq
from qtools.recipe import Recipe

source, destination, ids_file, recipe_file, batch = sys.argv[1:]
ids = torch.load(ids_file)
data = CalibrationSet(ids, hashlib.sha256(ids.numpy().tobytes()).hexdigest(), "test tokens")
recipe = Recipe.model_validate_json(open(recipe_file).read())
convert_gptq(source, destination, recipe, data, batch_size=int(batch))
"""


def test_two_gloo_ranks_give_the_single_process_output(aligned_checkpoint, tmp_path):
    # blend: the widest path (routed and all-token Hessians, all-expert runs, the shared prior on every rank).
    recipe = gptq_recipe(coverage="blend")
    calibration = random_calibration(500)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks run (OMP_NUM_THREADS=1)
    try:
        single = tmp_path / "single"
        convert_gptq(aligned_checkpoint, single, recipe, calibration, batch_size=BATCH)
    finally:
        torch.set_num_threads(previous)
    ids_file, recipe_file, script = tmp_path / "ids.pt", tmp_path / "recipe.json", tmp_path / "run.py"
    torch.save(calibration.input_ids, ids_file)
    recipe_file.write_text(recipe.model_dump_json(exclude={"block_size", "scale_dtype"}))
    script.write_text(RUN)
    out = tmp_path / "ranks"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        str(script), str(aligned_checkpoint), str(out), str(ids_file), str(recipe_file), str(BATCH),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert weights_digest(out) == weights_digest(single)
    report = json.loads((out / STATE_DIR / "calibration.json").read_text())
    assert report == json.loads((single / STATE_DIR / "calibration.json").read_text())
