"""Greedy decoding of many prompts with the qtools runtime, and turning token ids into text for comparison."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qtools.runtime import GenerationSettings, Qwen3MoeModel, generate


def cut_at_eos(tokens: list[int], eos_ids: Sequence[int]) -> list[int]:
    """`tokens` up to and including the first end-of-sequence id (the stop is part of what a model chose)."""
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


@torch.no_grad()
def greedy_decode(
    model: Qwen3MoeModel, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], eos_ids: Sequence[int]
) -> list[list[int]]:
    """Greedy continuation of each prompt (token ids) with a KV cache, one prompt at a time (the runtime has no
    padding mask, so prompts of different lengths cannot share a batch). Returns the new token ids of each,
    cut after the first id in `eos_ids`; no repetition penalty or sampling (plain argmax)."""
    settings = GenerationSettings(do_sample=False, eos_token_ids=tuple(eos_ids))
    outputs = []
    for prompt, budget in zip(prompts, max_new_tokens, strict=True):
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        tokens = generate(model, ids, budget, settings)
        outputs.append(cut_at_eos(tokens[0, ids.shape[1] :].tolist(), eos_ids))
    return outputs


def decode_text(tokenizer: Any, tokens: Sequence[int]) -> str:
    """Text of generated ids as a server returns it: special tokens (`<|im_end|>`) dropped, `<tool_call>`
    (not flagged special in Qwen3-Coder) kept."""
    return tokenizer.decode(list(tokens), skip_special_tokens=True)


def stop_ids(tokenizer: Any, settings: GenerationSettings) -> tuple[int, ...]:
    """End-of-sequence ids: the checkpoint's generation_config ones, then the tokenizer's eos, deduplicated."""
    ids = list(settings.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return tuple(dict.fromkeys(ids))
