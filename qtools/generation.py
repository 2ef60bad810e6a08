"""Text generation through transformers' `generate`, for the toy and the real checkpoints.

Greedy decoding is plain argmax (no repetition penalty, no sampling knobs); sampled decoding uses the
checkpoint's `generation_config` (Qwen3-Coder: temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05)
and draws from torch's global generator, so seed it with `torch.manual_seed` for repeatable samples.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import GenerationConfig


def _eos_and_pad(model: Any, tokenizer: Any) -> tuple[Any, int]:
    """The checkpoint's stop ids (its generation config first, then the tokenizer's eos) and a pad id."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return eos, pad


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    do_sample: bool = False,
    generation_config: GenerationConfig | None = None,
    batch_size: int = 16,
) -> list[str]:
    """Continue each prompt (already rendered text, chat template applied) and return only the new text.

    Prompts are tokenised without adding special tokens, left-padded and run `batch_size` at a time, longest
    first to waste little padding; outputs come back in the prompts' order, decoded with
    `skip_special_tokens=True` (which keeps `<tool_call>`, a non-special added token in Qwen3-Coder).
    `generation_config` overrides the model's own for sampling; greedy decoding ignores its sampling fields.
    """
    eos, pad = _eos_and_pad(model, tokenizer)
    if do_sample:
        config = copy.deepcopy(generation_config or model.generation_config)
        config.do_sample = True
    else:
        # Explicit neutral values: transformers fills fields a passed config leaves unset from the checkpoint's
        # generation_config, which would apply its repetition_penalty (1.05 in Qwen3-Coder) to "greedy" decoding.
        config = GenerationConfig(do_sample=False, repetition_penalty=1.0)
    config.max_new_tokens = max_new_tokens
    config.eos_token_id = eos
    config.pad_token_id = pad

    encoded = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: -len(encoded[index]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[index]) for index in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, index in enumerate(chunk):
            ids = encoded[index]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
        for row, index in enumerate(chunk):
            outputs[index] = tokenizer.decode(generated[row, width:].tolist(), skip_special_tokens=True)
    return outputs
