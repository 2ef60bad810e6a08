"""The Qwen3-MoE causal LM: embed -> decoder layers -> norm -> lm_head, resident or streamed layer by layer.

Resident: all layers are loaded once (`layers` is an `nn.ModuleList`). Streamed: `layer_loader(i)` reads layer
i from the checkpoint when it is needed and the layer is dropped right after use, so at most one decoder layer
is in memory; `forward_streamed` runs many sequences through each layer before loading the next (teacher
forced evaluation of a model larger than memory). Both run the same `DecoderLayer` code and give identical logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qtools.errors import QtoolsError
from qtools.runtime.cache import KVCache
from qtools.runtime.config import ModelConfig
from qtools.runtime.layers import DecoderLayer, RMSNorm
from qtools.runtime.weights import RuntimeLinear


@dataclass(frozen=True)
class RuntimeInfo:
    """How a model was loaded: weight format, backend, whether FP8 linears fake-quantise their inputs."""

    weight_format: str = "dense"
    backend: str = "torch"
    act_quant: bool = False


class Qwen3MoeModel(nn.Module):
    """A Qwen3-MoE model; `model(input_ids)` gives float32 logits. Build it with `qtools.runtime.load_model`.

    `embed_tokens` [vocab, hidden], `norm` and `lm_head` are always resident; decoder layers are resident
    (`layers`) or streamed (`layer_loader`), exactly one of the two.
    """

    def __init__(
        self,
        config: ModelConfig,
        embed_tokens: torch.Tensor,
        norm: RMSNorm,
        lm_head: RuntimeLinear,
        layers: list[DecoderLayer] | None = None,
        layer_loader: Callable[[int], DecoderLayer] | None = None,
        info: RuntimeInfo | None = None,
    ):
        super().__init__()
        if (layers is None) == (layer_loader is None):
            raise ValueError("give either resident layers or a layer_loader")
        self.config = config
        self.register_buffer("embed_tokens", embed_tokens)
        self.layers = nn.ModuleList(layers) if layers is not None else None
        self.layer_loader = layer_loader
        self.norm = norm
        self.lm_head = lm_head
        self.info = info or RuntimeInfo()

    @property
    def streaming(self) -> bool:
        return self.layer_loader is not None

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of activations."""
        return self.embed_tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.device

    def layer(self, index: int) -> DecoderLayer:
        """Decoder layer `index`: the resident one, or freshly read from the checkpoint when streaming."""
        return self.layers[index] if self.layers is not None else self.layer_loader(index)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids int64 [B, T] -> hidden [B, T, hidden] in the compute dtype."""
        return F.embedding(input_ids.to(self.device), self.embed_tokens)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last layer's hidden [B, T, hidden] -> logits float32 [B, T, vocab]."""
        return self.lm_head(self.norm(hidden)).to(torch.float32)

    def new_caches(self, batch: int, capacity: int) -> list[KVCache]:
        """One empty KV cache per layer, for `batch` sequences of up to `capacity` positions."""
        c = self.config
        return [
            KVCache(batch, c.num_kv_heads, c.head_dim, capacity, self.dtype, self.device) for _ in range(c.num_layers)
        ]

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
    ) -> torch.Tensor:
        """input_ids int64 [B, T] -> logits float32 [B, T, vocab].

        positions int64 [T] or [B, T] default to `past, ..., past + T - 1`, `past` being the tokens already in
        `caches` (0 without). With caches the T tokens continue the cached sequences.
        """
        if caches is not None and self.streaming:
            raise QtoolsError("KV-cached decoding with stream_layers=True would re-read every layer per step")
        if positions is None:
            past = caches[0].length if caches else 0
            positions = torch.arange(past, past + input_ids.shape[1], device=self.device)
        hidden = self.embed(input_ids)
        for index in range(self.config.num_layers):
            layer = self.layer(index)
            hidden = layer(hidden, positions, caches[index] if caches else None)
            del layer  # a streamed layer is freed here, before the next one is read
        return self.logits(hidden)

    def forward_streamed(
        self, sequences: list[torch.Tensor], reduce: Callable[[int, torch.Tensor], Any] | None = None
    ) -> list[Any]:
        """Teacher-forced logits of many sequences, loading each decoder layer once: layer-outer, sequence-inner.

        sequences: int64 [T_i] each (lengths may differ). Returns float32 logits [T_i, vocab] per sequence, or
        `reduce(i, logits_i)` for each when given, so a caller can keep a statistic instead of every logit.
        Holds every sequence's hidden states [T_i, hidden] (compute dtype) on the model's device meanwhile.
        """
        hidden: list[torch.Tensor | None] = [self.embed(sequence.reshape(1, -1)) for sequence in sequences]
        positions = [torch.arange(h.shape[1], device=self.device) for h in hidden]
        for index in range(self.config.num_layers):
            layer = self.layer(index)
            for i in range(len(hidden)):
                hidden[i] = layer(hidden[i], positions[i])
            del layer
        results = []
        for i in range(len(hidden)):
            logits = self.logits(hidden[i])[0]
            hidden[i] = None
            results.append(reduce(i, logits) if reduce is not None else logits)
        return results
