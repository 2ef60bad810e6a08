"""Write a trained toy model in the Hugging Face on-disk layout of Qwen3-Coder (FACTS §1).

transformers 5 keeps experts fused in memory (`mlp.experts.gate_up_proj` (E, 2I, H), `mlp.experts.down_proj`
(E, H, I)); the checkpoint holds one tensor per expert and projection,
`model.layers.{L}.mlp.experts.{E}.{gate,up,down}_proj.weight`, in bfloat16, split over several safetensors shards
with a `model.safetensors.index.json`. The files are written here from the state dict, in a fixed tensor order,
through the project's checkpoint writer, so the same weights always give byte-identical files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from qtools.checkpoint.safetensors_io import TensorSpec
from qtools.checkpoint.writer import write_json, write_sharded_checkpoint

FUSED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")


def per_expert_tensors(state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """The state dict with fused expert tensors split into per-expert `gate_proj`/`up_proj` (I, H) and
    `down_proj` (H, I) weights; other tensors pass through. Order: the state dict's, experts by index."""
    for name, tensor in state_dict.items():
        match = FUSED_EXPERTS.match(name)
        if match is None:
            yield name, tensor
            continue
        prefix, kind = match.groups()
        for expert, weight in enumerate(tensor):
            if kind == "gate_up_proj":
                gate, up = weight.chunk(2, dim=0)
                yield f"{prefix}.{expert}.gate_proj.weight", gate
                yield f"{prefix}.{expert}.up_proj.weight", up
            else:
                yield f"{prefix}.{expert}.down_proj.weight", weight


def save_weights(model: torch.nn.Module, out_dir: Path, shard_bytes: int, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Write `model`'s weights as per-expert `dtype` tensors in shards of at most `shard_bytes`, plus the index.

    Returns the index (`metadata.total_size` in bytes, `weight_map` name -> shard file).
    """
    tensors = [
        (name, tensor.detach().to(dtype).contiguous()) for name, tensor in per_expert_tensors(model.state_dict())
    ]
    return write_sharded_checkpoint(out_dir, [TensorSpec.of(name, t) for name, t in tensors], tensors, shard_bytes)


def generation_config_dict(eos_id: int, pad_id: int) -> dict[str, Any]:
    """`generation_config.json` with Qwen3-Coder's sampling defaults (FACTS §5)."""
    return {
        "bos_token_id": pad_id,
        "do_sample": True,
        "eos_token_id": [eos_id, pad_id],
        "pad_token_id": pad_id,
        "repetition_penalty": 1.05,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }


def save_configs(out_dir: Path, config: dict[str, Any], eos_id: int, pad_id: int) -> None:
    """Write `config.json` and `generation_config.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", generation_config_dict(eos_id, pad_id))
