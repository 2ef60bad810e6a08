"""Autoregressive generation with a KV cache: greedy or sampled (temperature, top-k, top-p, repetition penalty),
stopping on end-of-sequence ids; the processing order and formulas follow transformers' `generate`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from qtools.errors import QtoolsError
from qtools.runtime.model import Qwen3MoeModel


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings; `from_checkpoint` reads them from generation_config.json."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @classmethod
    def from_dict(cls, config: dict) -> GenerationSettings:
        eos = config.get("eos_token_id")
        eos_ids = () if eos is None else tuple(int(e) for e in (eos if isinstance(eos, list) else [eos]))
        return cls(
            do_sample=bool(config.get("do_sample", False)),
            temperature=float(config.get("temperature") or 1.0),
            top_p=float(config.get("top_p") or 1.0),
            top_k=int(config.get("top_k") or 0),
            repetition_penalty=float(config.get("repetition_penalty") or 1.0),
            eos_token_ids=eos_ids,
            pad_token_id=config.get("pad_token_id"),
        )

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> GenerationSettings:
        """Settings from `path/generation_config.json`; defaults (greedy, no stop ids) when it is absent."""
        file = Path(path) / "generation_config.json"
        if not file.exists():
            return cls()
        try:
            return cls.from_dict(json.loads(file.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise QtoolsError(f"{file}: not a valid generation config ({error})") from error


def _penalise_repeats(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Divide positive (multiply negative) logits of tokens already present by `penalty`."""
    seen = logits.gather(1, tokens)
    return logits.scatter(1, tokens, torch.where(seen < 0, seen * penalty, seen / penalty))


def _keep_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)."""
    ordered, order = logits.sort(dim=-1)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= 1 - top_p
    remove_sorted[..., -1] = False
    return logits.masked_fill(remove_sorted.scatter(1, order, remove_sorted), float("-inf"))


def next_tokens(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    settings: GenerationSettings,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token of each sequence: logits float32 [B, V], tokens so far int64 [B, L] -> int64 [B]."""
    if settings.repetition_penalty != 1.0:
        logits = _penalise_repeats(logits, tokens, settings.repetition_penalty)
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    logits = logits / settings.temperature
    if settings.top_k > 0:
        logits = _keep_top_k(logits, settings.top_k)
    if settings.top_p < 1.0:
        logits = _keep_top_p(logits, settings.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def generate(
    model: Qwen3MoeModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    settings: GenerationSettings | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue input_ids int64 [B, T]; returns int64 [B, T + n], n <= max_new_tokens.

    Stops once every sequence has produced an end-of-sequence id; sequences that finished earlier are padded
    with `pad_token_id` (or repeat their eos id when there is none). `generator` seeds sampling.
    """
    settings = settings or GenerationSettings()
    tokens = input_ids.to(model.device)
    caches = model.new_caches(tokens.shape[0], tokens.shape[1] + max_new_tokens)
    logits = model(tokens, caches=caches)[:, -1]
    eos = torch.tensor(settings.eos_token_ids, dtype=torch.int64, device=tokens.device)
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for step in range(max_new_tokens):
        chosen = next_tokens(logits, tokens, settings, generator)
        if settings.pad_token_id is not None:
            chosen = chosen.masked_fill(finished, settings.pad_token_id)
        elif finished.any():
            chosen = torch.where(finished, tokens[:, -1], chosen)
        tokens = torch.cat((tokens, chosen[:, None]), dim=1)
        finished |= torch.isin(chosen, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        logits = model(chosen[:, None], caches=caches)[:, -1]
    return tokens
