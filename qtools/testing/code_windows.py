"""Token windows of the toy's standard-library code, for tests and benchmarks that need calibration or held-out
tokens: one definition, so a test and the benchmark quoting it measure on the same tokens."""

from __future__ import annotations

import random

import torch

from qtools.toy.code_corpus import load_code_files


def code_windows(tokenizer, heldout: bool, samples: int, length: int, seed: int) -> torch.Tensor:
    """int64 [samples, length]: windows of standard-library code (the toy's training or held-out split, files in
    a `seed`-shuffled order), tokenised with `tokenizer` (a `tokenizers.Tokenizer`)."""
    files = load_code_files(heldout=heldout)
    random.Random(seed).shuffle(files)
    stream: list[int] = []
    for file in files:
        stream += tokenizer.encode(file.text).ids
        if len(stream) >= 4 * samples * length:
            break
    starts = sorted(random.Random(seed).sample(range(len(stream) - length), samples))
    return torch.tensor([stream[s : s + length] for s in starts], dtype=torch.int64)
