"""Training data for the toy model: generated chats and standard-library code, tokenised and packed.

Chats are rendered with `qtools.chat.render_chat`; only assistant turns (through their `<|im_end|>`) carry
loss, located by rendering each conversation prefix and mapping character spans to tokens via the
tokenizer's offsets. Chats are packed into rows of `seq_len` tokens with position ids restarting at each
conversation, which transformers turns into a block-diagonal attention mask. Code rows are contiguous slices of
the concatenated training files with loss on every token.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from qtools.chat import render_chat
from qtools.toy.code_corpus import CodeFile
from qtools.toy.conversations import (
    Chat,
    bare_call_chat,
    coding_chat,
    fim_chat,
    plain_answer_chat,
    tool_session_chat,
)
from qtools.toy.tokenizer import PAD_TOKEN, token_id

IGNORE = -100
FUNCTION_NAME = re.compile(r"<function=([^>\n]+)>")
FIM_WINDOW_CHARS = 2400  # FIM samples are cut from a window this long, so prompts stay short


@dataclass
class Sample:
    """One tokenised conversation: token ids, labels (IGNORE where no loss) and per-token loss weights."""

    ids: list[int]
    labels: list[int]
    weights: list[float]


@dataclass
class Row:
    """One packed training row of `seq_len` tokens; `is_code` marks plain-code rows."""

    ids: list[int]
    positions: list[int]
    labels: list[int]
    weights: list[float]
    is_code: bool


@dataclass
class Batch:
    """A training batch. `input_ids`, `position_ids`, `labels` (rows, seq_len) int64; `weights` (rows, seq_len)
    float32 loss weights; `is_code` (rows,) bool."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    is_code: torch.Tensor


def generate_chats(
    rng: random.Random, count: int, mix: dict[str, float], code: list[CodeFile], max_tools: int, max_turns: int
) -> list[Chat]:
    """`count` training conversations whose kinds follow the weights in `mix`."""
    kinds = sorted(mix)
    weights = [mix[kind] for kind in kinds]
    chats: list[Chat] = []
    while len(chats) < count:
        kind = rng.choices(kinds, weights)[0]
        if kind == "tool_session":
            chats.append(tool_session_chat(rng, max_tools=max_tools, max_turns=max_turns))
        elif kind == "bare_call":
            chats.append(bare_call_chat(rng))
        elif kind == "plain_answer":
            chats.append(plain_answer_chat(rng, max_tools=max_tools))
        elif kind == "coding":
            chats.append(coding_chat(rng))
        else:
            source = rng.choice(code).text
            start = rng.randrange(max(1, len(source) - FIM_WINDOW_CHARS))
            chat = fim_chat(source[start : start + FIM_WINDOW_CHARS], rng)
            if chat is not None:
                chats.append(chat)
    return chats


def assistant_spans(chat: Chat) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns, each ending after its
    `<|im_end|>` (the newline that follows is not the model's to write)."""
    text = render_chat(chat.messages, chat.tools)
    spans = []
    for index, message in enumerate(chat.messages):
        if message["role"] != "assistant":
            continue
        start = len(render_chat(chat.messages[:index], chat.tools, add_generation_prompt=True))
        end = len(render_chat(chat.messages[: index + 1], chat.tools))
        if text[end - 1] == "\n":
            end -= 1
        spans.append((start, end))
    return text, spans


def tokenize_chat(chat: Chat, tokenizer: Tokenizer, name_weight: float = 1.0) -> Sample:
    """Token ids of the rendered chat, with labels on the tokens that start inside an assistant span.

    Tokens of a called function's name (from the `=` of `<function=`) get loss weight `name_weight`: the
    name is the one decision of a call the rest of it follows from, but only one or two tokens of it.
    """
    text, spans = assistant_spans(chat)
    names = [
        (match.start(1) - 1, match.end(1)) for start, end in spans for match in FUNCTION_NAME.finditer(text, start, end)
    ]
    encoding = tokenizer.encode(text)
    labels, weights = [], []
    for token, (start, _) in zip(encoding.ids, encoding.offsets, strict=True):
        inside = any(span_start <= start < span_end for span_start, span_end in spans)
        labels.append(token if inside else IGNORE)
        weights.append(name_weight if any(low <= start < high for low, high in names) else 1.0)
    return Sample(encoding.ids, labels, weights)


def pack_samples(samples: list[Sample], seq_len: int, pad_id: int) -> list[Row]:
    """First-fit packing of samples (truncated to `seq_len`) into rows; position ids restart at 0 for each
    sample and for the padding that closes a row."""
    rows: list[list[Sample]] = []
    room: list[int] = []
    for sample in samples:
        size = min(len(sample.ids), seq_len)
        target = next((index for index, free in enumerate(room) if free >= size), None)
        if target is None:
            rows.append([])
            room.append(seq_len)
            target = len(rows) - 1
        rows[target].append(Sample(sample.ids[:size], sample.labels[:size], sample.weights[:size]))
        room[target] -= size
    packed = []
    for row, free in zip(rows, room, strict=True):
        packed_row = Row([], [], [], [], is_code=False)
        for sample in row:
            packed_row.ids += sample.ids
            packed_row.labels += sample.labels
            packed_row.weights += sample.weights
            packed_row.positions += range(len(sample.ids))
        packed_row.ids += [pad_id] * free
        packed_row.labels += [IGNORE] * free
        packed_row.weights += [1.0] * free
        packed_row.positions += range(free)
        packed.append(packed_row)
    return packed


def code_rows(
    files: list[CodeFile], tokenizer: Tokenizer, rng: random.Random, count: int, seq_len: int
) -> list[list[int]]:
    """`count` rows of `seq_len` tokens cut from the training files, taken in a seeded order and joined by
    `<|endoftext|>`; files repeat when the corpus is shorter than needed."""
    separator = token_id(tokenizer, PAD_TOKEN)
    stream: list[int] = []
    order: list[CodeFile] = []
    while len(stream) < count * seq_len:
        if not order:
            order = list(files)
            rng.shuffle(order)
        stream += tokenizer.encode(order.pop().text).ids + [separator]
    return [stream[index * seq_len : (index + 1) * seq_len] for index in range(count)]


def training_batches(
    chat_rows: list[Row], code_token_rows: list[list[int]], batch_rows: int, steps: int, rng: random.Random
) -> Iterator[Batch]:
    """`steps` batches of `batch_rows` rows: all rows shuffled together, chat rows repeating if too few."""
    code = [Row(ids, list(range(len(ids))), ids, [1.0] * len(ids), is_code=True) for ids in code_token_rows]
    needed = steps * batch_rows - len(code)
    rows = code + [chat_rows[index % len(chat_rows)] for index in range(needed)]
    rng.shuffle(rows)
    for step in range(steps):
        chunk = rows[step * batch_rows : (step + 1) * batch_rows]
        yield Batch(
            input_ids=torch.tensor([row.ids for row in chunk], dtype=torch.long),
            position_ids=torch.tensor([row.positions for row in chunk], dtype=torch.long),
            labels=torch.tensor([row.labels for row in chunk], dtype=torch.long),
            weights=torch.tensor([row.weights for row in chunk], dtype=torch.float32),
            is_code=torch.tensor([row.is_code for row in chunk], dtype=torch.bool),
        )
