"""The toy model's quality gate: held-out tool prompts decoded greedily, and perplexity on held-out code.

Tool prompts use phrasings and argument values kept out of training (`heldout` in `tools_suite`) and a fixed
seed of their own, so every build is judged on the same prompts. A reply is *parseable* when
`parse_tool_calls` finds at least one call and no malformation of the call format; *right name* when its first
call names the expected function; *exact* when name and typed arguments both match. Perplexity on held-out
standard-library files is compared with a unigram model fitted (add-one smoothed) on the training code.
Plain questions and FIM prompts are decoded too and reported, but not gated.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from qtools.chat import FORMAT_ERRORS, parse_tool_calls, render_chat
from qtools.generation import generate
from qtools.toy.code_corpus import CodeFile
from qtools.toy.conversations import Chat, fim_chat, plain_answer_chat, tool_call_chat
from qtools.toy.recipe import ToyRecipe
from qtools.toy.tokenizer import PAD_TOKEN, token_id
from qtools.toy.tools_suite import TOOL_SPECS

GATE_SEED = 20250722  # fixed: the held-out prompts do not move with the training seed


@dataclass
class GatePrompts:
    """The held-out conversations the gate decodes; each chat's last message is the reference answer."""

    tool: list[Chat]
    plain: list[Chat]
    fim: list[Chat]


def gate_prompts(recipe: ToyRecipe, heldout_code: list[CodeFile]) -> GatePrompts:
    """Tool prompts cycling over every tool, plain questions, and FIM prompts from held-out files."""
    rng = random.Random(GATE_SEED)
    tool = [
        tool_call_chat(rng, TOOL_SPECS[index % len(TOOL_SPECS)], heldout=True, max_tools=recipe.max_tools)
        for index in range(recipe.gate_tool_prompts)
    ]
    plain = [plain_answer_chat(rng, heldout=True, max_tools=recipe.max_tools) for _ in range(recipe.gate_plain_prompts)]
    fim: list[Chat] = []
    sources = [file for file in heldout_code if len(file.text) > 2000]
    while len(fim) < recipe.gate_fim_prompts and sources:
        text = rng.choice(sources).text
        start = rng.randrange(len(text) - 2000)
        chat = fim_chat(text[start : start + 2000], rng)
        if chat is not None:
            fim.append(chat)
    return GatePrompts(tool, plain, fim)


def _prompt_text(chat: Chat) -> str:
    return render_chat(chat.messages[:-1], chat.tools, add_generation_prompt=True)


def score_tool_reply(chat: Chat, output: str) -> dict[str, Any]:
    """Parse one reply against the offered tools and compare it with the expected call."""
    parsed = parse_tool_calls(output, chat.tools)
    expected = chat.expected_call
    first = parsed.tool_calls[0] if parsed.tool_calls else None
    return {
        "messages": chat.messages[:-1],
        "tools": chat.tools,
        "expected_call": expected,
        "output": output,
        "parsed": parsed.to_dict(),
        "parseable": first is not None and not any(error.kind in FORMAT_ERRORS for error in parsed.errors),
        "right_name": first is not None and first.name == expected["name"],
        "exact": first is not None and first.to_dict() == expected and not parsed.errors,
    }


def _share(records: list[dict[str, Any]], key: str) -> float:
    return sum(bool(record[key]) for record in records) / max(1, len(records))


def decode_gate_prompts(model: Any, tokenizer: Any, prompts: GatePrompts, max_new_tokens: int) -> dict[str, Any]:
    """Greedy replies to every gate prompt, scored; tool figures are shares in [0, 1]."""
    chats = prompts.tool + prompts.plain + prompts.fim
    outputs = generate(model, tokenizer, [_prompt_text(chat) for chat in chats], max_new_tokens)
    tool_out = outputs[: len(prompts.tool)]
    plain_out = outputs[len(prompts.tool) : len(prompts.tool) + len(prompts.plain)]
    fim_out = outputs[len(prompts.tool) + len(prompts.plain) :]
    tool = [score_tool_reply(chat, output) for chat, output in zip(prompts.tool, tool_out, strict=True)]
    plain = [
        {
            "messages": chat.messages[:-1],
            "tools": chat.tools,
            "reference": chat.messages[-1]["content"],
            "output": output,
            "no_tool_call": not parse_tool_calls(output).tool_calls,
        }
        for chat, output in zip(prompts.plain, plain_out, strict=True)
    ]
    fim = [
        {
            "messages": chat.messages[:-1],
            "reference": chat.messages[-1]["content"],
            "output": output,
            "exact": output.strip() == chat.messages[-1]["content"].strip(),
        }
        for chat, output in zip(prompts.fim, fim_out, strict=True)
    ]
    return {
        "tool_parseable": _share(tool, "parseable"),
        "tool_right_name": _share(tool, "right_name"),
        "tool_exact": _share(tool, "exact"),
        "plain_no_tool_call": _share(plain, "no_tool_call"),
        "fim_exact": _share(fim, "exact"),
        "tool_prompts": tool,
        "plain_prompts": plain,
        "fim_prompts": fim,
    }


def code_token_stream(
    files: list[CodeFile], tokenizer: Tokenizer, separator: int, limit: int | None = None
) -> list[int]:
    """Token ids of `files` in order, joined by `separator`, cut at `limit` tokens."""
    stream: list[int] = []
    for file in files:
        stream += tokenizer.encode(file.text).ids + [separator]
        if limit is not None and len(stream) >= limit:
            return stream[:limit]
    return stream


@torch.no_grad()
def perplexity(model: Any, tokens: list[int], window: int) -> tuple[float, int]:
    """exp(mean next-token cross-entropy) of `model` over `tokens` in independent windows of `window` tokens,
    and how many tokens were predicted (each window's first token is context only)."""
    total, count = 0.0, 0
    for start in range(0, len(tokens) - 1, window):
        chunk = torch.tensor([tokens[start : start + window]], dtype=torch.long)
        if chunk.shape[1] < 2:
            continue
        logits = model(input_ids=chunk).logits[0, :-1].float()
        total += F.cross_entropy(logits, chunk[0, 1:], reduction="sum").item()
        count += chunk.shape[1] - 1
    return math.exp(total / count), count


def unigram_perplexity(train_tokens: list[int], tokens: list[int], window: int, vocab: int) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on `train_tokens`, over the same predicted
    tokens as `perplexity` (each window's first token skipped)."""
    counts = Counter(train_tokens)
    denominator = len(train_tokens) + vocab
    predicted = [token for start in range(0, len(tokens) - 1, window) for token in tokens[start + 1 : start + window]]
    nll = -sum(math.log((counts[token] + 1) / denominator) for token in predicted)
    return math.exp(nll / len(predicted))


def evaluate_gate(
    model: Any,
    hf_tokenizer: Any,
    tokenizer: Tokenizer,
    recipe: ToyRecipe,
    train_code: list[CodeFile],
    heldout_code: list[CodeFile],
) -> dict[str, Any]:
    """Every gate figure of `model` (the reloaded bf16 checkpoint) and the per-prompt records.

    `hf_tokenizer` is the checkpoint's transformers tokenizer (for decoding), `tokenizer` the same BPE as a
    `tokenizers.Tokenizer` (for the code token streams).
    """
    decoded = decode_gate_prompts(model, hf_tokenizer, gate_prompts(recipe, heldout_code), recipe.gate_max_new_tokens)
    separator = token_id(tokenizer, PAD_TOKEN)
    heldout_tokens = code_token_stream(heldout_code, tokenizer, separator, recipe.gate_ppl_tokens)
    train_tokens = code_token_stream(train_code, tokenizer, separator)
    model_ppl, scored = perplexity(model, heldout_tokens, recipe.seq_len)
    unigram_ppl = unigram_perplexity(train_tokens, heldout_tokens, recipe.seq_len, tokenizer.get_vocab_size())
    figures = {key: value for key, value in decoded.items() if not key.endswith("_prompts")}
    figures |= {
        "tool_prompt_count": len(decoded["tool_prompts"]),
        "heldout_code_tokens": scored,
        "heldout_code_ppl": model_ppl,
        "unigram_ppl": unigram_ppl,
        "ppl_ratio": model_ppl / unigram_ppl,
    }
    records = {key: value for key, value in decoded.items() if key.endswith("_prompts")}
    return {"figures": figures, "records": records}


def gate_thresholds(recipe: ToyRecipe) -> dict[str, float]:
    """The gate's limits: minimum shares of parseable and right-name replies, maximum perplexity ratio."""
    return {
        "tool_parseable_min": recipe.gate_min_parseable,
        "tool_right_name_min": recipe.gate_min_right_name,
        "ppl_ratio_max": recipe.gate_max_ppl_ratio,
    }


def gate_failures(figures: dict[str, Any], recipe: ToyRecipe) -> list[str]:
    """One line per missed threshold; empty when the gate passes."""
    failures = []
    for name, limit in gate_thresholds(recipe).items():
        key, bound = name.rsplit("_", 1)  # "<figure>_min" or "<figure>_max"
        missed, sign = (figures[key] < limit, "<") if bound == "min" else (figures[key] >= limit, ">=")
        if missed:
            failures.append(f"{key} {figures[key]:.3f} {sign} {limit}")
    return failures
