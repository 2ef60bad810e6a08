"""Pack documents into calibration sequences: tokenise in a seeded order, join, cut into equal rows.

Why concatenate and cut rather than one document per row (padded or truncated): every row has exactly
`seq_len` real tokens, so the layer-by-layer forward stacks them as one [N, T] batch with no padding or attention
mask to get wrong, and no token of a Hessian comes from padding; short documents (a tool call, a small file) are not
wasted as mostly-empty rows and long ones are not cut to their first `seq_len` tokens (positions deep in a
sequence are calibrated too). Rows cross document boundaries, with `<|endoftext|>` between documents, as in pretraining.
The documents are shuffled with the seed first, so a seed picks which documents fill the budget when the data
holds more than `samples * seq_len` tokens, and the hash says exactly which tokens were used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterable
from typing import Any

import torch

from qtools.errors import QtoolsError

TOKENIZE_BATCH = 32  # documents tokenised per call: the fast tokenizer parallelises over a batch


DOCUMENT_SEPARATOR = "<|endoftext|>"
"""Qwen's end-of-document token, which pretraining puts between documents. The chat EOS of Qwen3-Coder's
tokenizer is `<|im_end|>`, the end of a turn: a separator the model reads after every turn, not between
documents."""


def separator_token_id(tokenizer: Any, where: str) -> int:
    """The id joining packed documents: `DOCUMENT_SEPARATOR` when the vocabulary has it, else the tokenizer's EOS;
    QtoolsError when it has neither."""
    separator = tokenizer.convert_tokens_to_ids(DOCUMENT_SEPARATOR)
    if isinstance(separator, int) and separator != getattr(tokenizer, "unk_token_id", None):
        return separator
    eos = getattr(tokenizer, "eos_token_id", None)
    if not isinstance(eos, int):
        raise QtoolsError(
            f"{where}: the tokenizer has neither {DOCUMENT_SEPARATOR} nor an eos_token, needed to separate packed "
            "calibration documents"
        )
    return eos


def shuffled(count: int, seed: int) -> list[int]:
    """0..count-1 in the order `random.Random(seed)` shuffles them (stable across platforms and versions)."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def pack_documents(
    texts: Iterable[str],
    tokenizer: Any,
    samples: int,
    seq_len: int,
    description: str,
) -> torch.Tensor:
    """int64 [samples, seq_len]: the documents `texts` in order, tokenised without special tokens, each followed
    by EOS, concatenated and cut into rows; draws and tokenises only as many documents as the rows need.

    Raises QtoolsError naming `description` and how many tokens it has when that is under samples * seq_len.
    """
    eos = separator_token_id(tokenizer, description)
    needed = samples * seq_len
    stream: list[int] = []
    documents = 0
    iterator = iter(texts)
    while batch := list(itertools.islice(iterator, TOKENIZE_BATCH)):
        documents += len(batch)
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(eos)
        if len(stream) >= needed:
            return torch.tensor(stream[:needed], dtype=torch.int64).view(samples, seq_len)
    raise QtoolsError(
        f"calibration data {description} has {len(stream)} tokens in {documents} documents (EOS separators "
        f"included), fewer than the {samples} x {seq_len} = {needed} asked for: lower --calibration-samples or "
        "--calibration-seq-len, or give more data"
    )


def calibration_sha256(input_ids: torch.Tensor, identity: dict[str, Any]) -> str:
    """Hex SHA-256 of the token ids (int64 little-endian, row-major, with their shape) and of `identity` (what
    the data was asked for: the spec's identity, seed), so equal data gives equal hashes and any change another."""
    digest = hashlib.sha256(b"qtools-calibration-v1\n")
    digest.update(json.dumps(identity, sort_keys=True).encode() + b"\n")
    digest.update(json.dumps(list(input_ids.shape)).encode() + b"\n")
    digest.update(input_ids.contiguous().numpy().astype("<i8").tobytes())
    return digest.hexdigest()
