"""GPTQ column order on the toy: KL(BF16 || INT4) of `w4a16-gptq` (routed coverage) with and without act-order,
for two calibration seeds, on the setup of scripts/bench_gptq.py's toy case (32 x 256 calibration tokens of the
training split's code, 16 x 256 held-out tokens, float32, one thread). Prints one line per run.

    python scripts/gptq_actorder.py [--out out/actorder]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import tokenizers
import torch

from qtools.gptq import convert_gptq
from qtools.recipe import load_recipe
from qtools.runtime import load_model
from qtools.testing.code_windows import code_windows
from qtools.testing.files import TOY_MODEL_DIR
from tests.test_gptq import calibration_set
from tests.test_gptq_oracles import _kl_and_top1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/actorder"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = tokenizers.Tokenizer.from_file(str(TOY_MODEL_DIR / "tokenizer.json"))
    held_out = code_windows(tokenizer, True, 16, 256, seed=1)
    with torch.no_grad():
        reference = load_model(TOY_MODEL_DIR, dtype=torch.float32)(held_out).log_softmax(-1)
    for seed in (0, 1):
        calibration = calibration_set(code_windows(tokenizer, False, 32, 256, seed=seed), "stdlib code")
        for actorder in (False, True):
            out = args.out / f"seed{seed}-actorder-{actorder}"
            shutil.rmtree(out, ignore_errors=True)
            recipe = load_recipe("w4a16-gptq").model_copy(update={"coverage": "routed", "actorder": actorder})
            convert_gptq(TOY_MODEL_DIR, out, recipe, calibration)
            kl, top1 = _kl_and_top1(reference, out, held_out)
            print(f"seed {seed} actorder {actorder}: KL mean {kl:.4g}, top-1 {top1:.4%}", flush=True)


if __name__ == "__main__":
    main()
