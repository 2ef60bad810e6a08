"""Everything a check feeds the models, built before any model is loaded and shared by every engine:
the tokenizer, the suites, the held-out code windows and the token ids of every prompt to decode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qtools.chat import fim_messages, render_chat
from qtools.check.decode import stop_ids
from qtools.check.generation_check import continuation_prompts
from qtools.check.suites import Suites, SuiteSizes, load_suites
from qtools.checkpoint.hf import Checkpoint
from qtools.errors import QtoolsError
from qtools.runtime import GenerationSettings


@dataclass
class Workload:
    """Inputs of one check. `windows`: int64 [T] each, scored teacher-forced; `continuations`, `tool_prompts`,
    `fim_prompts`: token ids of the prompts to decode greedily; `valid_vocab`: the tokenizer's size (logit
    columns at and above it, up to the checkpoint's `vocab_size`, are padding); `eos`: ids that end a reply."""

    tokenizer: Any
    suites: Suites
    sizes: SuiteSizes
    valid_vocab: int
    vocab_size: int
    eos: tuple[int, ...]
    windows: list[torch.Tensor] = field(default_factory=list)
    continuations: list[list[int]] = field(default_factory=list)
    tool_prompts: list[list[int]] = field(default_factory=list)
    fim_prompts: list[list[int]] = field(default_factory=list)

    @property
    def prompts(self) -> list[list[int]]:
        """Every prompt to decode: continuations, then tool prompts, then FIM prompts."""
        return self.continuations + self.tool_prompts + self.fim_prompts

    @property
    def budgets(self) -> list[int]:
        """Most new tokens for each of `prompts`."""
        sizes = self.sizes
        return (
            [sizes.continuation_new_tokens] * len(self.continuations)
            + [sizes.tool_new_tokens] * len(self.tool_prompts)
            + [sizes.fim_new_tokens] * len(self.fim_prompts)
        )

    def split(self, outputs: list[list[int]]) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
        """Decoded outputs in `prompts` order -> (continuations, tool replies, FIM middles)."""
        first, second = len(self.continuations), len(self.continuations) + len(self.tool_prompts)
        return outputs[:first], outputs[first:second], outputs[second:]


def code_windows(
    texts: list[str], tokenizer: Any, separator: int, total_tokens: int, window: int
) -> list[torch.Tensor]:
    """Token windows int64 [<= window] cut from `texts` joined by `separator`, `total_tokens` in all."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + [separator]
        if len(stream) >= total_tokens:
            break
    stream = stream[:total_tokens]
    windows = [
        torch.tensor(stream[start : start + window], dtype=torch.long) for start in range(0, len(stream), window)
    ]
    return [w for w in windows if w.numel() >= 2]


def load_tokenizer(reference: Path) -> Any:
    """The reference checkpoint's tokenizer via `transformers.AutoTokenizer`; QtoolsError when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(reference)
    except Exception as error:
        raise QtoolsError(
            f"{reference}: cannot load its tokenizer with transformers.AutoTokenizer ({error}); the reference "
            "checkpoint directory must hold tokenizer.json / tokenizer_config.json"
        ) from error


def render_prompt(tokenizer: Any, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Token ids of a chat rendered through the tokenizer's chat template, ending in the generation prompt."""
    text = render_chat(messages, tools or None, add_generation_prompt=True, tokenizer=tokenizer)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_workload(
    ref: Path, suites: tuple[str, ...], sizes: SuiteSizes, seed: int = 0, files: tuple[Path, ...] = ()
) -> Workload:
    """Tokenizer, suites and tokenised prompts for a check of `suites` against reference `ref`."""
    tokenizer = load_tokenizer(ref)
    vocab_size = int(Checkpoint.open(ref).config.get("vocab_size") or len(tokenizer))
    loaded = load_suites(ref, suites, sizes, seed, files)
    separator = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    work = Workload(
        tokenizer=tokenizer,
        suites=loaded,
        sizes=sizes,
        valid_vocab=min(len(tokenizer), vocab_size),
        vocab_size=vocab_size,
        eos=stop_ids(tokenizer, GenerationSettings.from_checkpoint(ref)),
    )
    if "code" in suites:
        texts = [item.text for item in loaded.code]
        work.windows = code_windows(texts, tokenizer, separator, sizes.code_tokens, sizes.window)
        work.continuations = continuation_prompts(
            work.windows, sizes.continuation_prompts, sizes.continuation_prompt_tokens
        )
    work.tool_prompts = [render_prompt(tokenizer, prompt.messages, prompt.tools) for prompt in loaded.tools]
    work.fim_prompts = [render_prompt(tokenizer, fim_messages(p.prefix, p.suffix), None) for p in loaded.fim]
    return work
