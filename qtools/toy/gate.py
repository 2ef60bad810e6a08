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

from qtools.chat import ErrorKind, parse_tool_calls, render_chat
from qtools.generation import generate
from qtools.toy.code_corpus import CodeFile
from qtools.toy.conversations import Chat, fim_chat, plain_answer_chat, tool_call_chat
from qtools.toy.recipe import ToyRecipe
from qtools.toy.tools_suite import TOOL_SPECS

GATE_SEED = 20250722  # fixed: the held-out prompts do not move with the training seed
FORMAT_ERRORS = frozenset(
    {
        ErrorKind.MISSING_PARAMETER_CLOSE,
        ErrorKind.MISSING_FUNCTION_CLOSE,
        ErrorKind.MISSING_TOOL_CALL_OPEN,
        ErrorKind.MISSING_TOOL_CALL_CLOSE,
        ErrorKind.UNMATCHED_TOOL_CALL_CLOSE,
        ErrorKind.EMPTY_TOOL_CALL,
        ErrorKind.EXTRA_FUNCTION,
        ErrorKind.FUNCTION_WITHOUT_GT,
        ErrorKind.PARAMETER_WITHOUT_GT,
        ErrorKind.UNEXPECTED_TEXT,
    }
)


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


def code_token_stream(files: list[CodeFile], tokenizer: Any, separator: int, limit: int | None = None) -> list[int]:
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
