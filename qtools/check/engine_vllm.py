"""The vLLM engine: generation and log-probabilities through vLLM, for checkpoints that need several GPUs.

The two models run one after the other (never both in GPU memory): each is loaded with `vllm.LLM` (over all
visible GPUs unless `--vllm-option tensor_parallel_size=N` says otherwise), scores the held-out code windows
with `prompt_logprobs` (its top-k log-probs at every position plus the actual token's) and greedily decodes
every prompt from token ids, then is released. Distribution figures come from the top-k lists
(`metrics.compare_topk`: NLL, perplexity, Δp and top-1 agreement exact, KL a lower-bound estimate). vLLM scores
every logit column: padded vocabulary columns are not masked under this engine. Per-layer output SQNR needs
the layer-by-layer runtime and is not produced; the weights suite still runs through the qtools runtime,
streamed, on `device`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from qtools.check.decode import cut_at_eos
from qtools.check.distribution import summarize
from qtools.check.engine_qtools import EngineRun, layer_walk, open_pair, pair_info
from qtools.check.metrics import TokenComparison, compare_topk
from qtools.check.workload import Workload
from qtools.errors import QtoolsError

TOP_K = 20  # vLLM's default max_logprobs


def require_vllm() -> Any:
    """The `vllm` module; QtoolsError saying how to get it (or what to use instead) when it is missing."""
    try:
        import vllm
    except ImportError as error:
        raise QtoolsError(
            "--engine vllm needs vLLM, which is not installed in this environment: install it on a Linux machine "
            "with CUDA GPUs (pip install vllm), or use --engine qtools (for a model larger than one GPU add "
            "--device cuda --stream-layers --suite code,weights)"
        ) from error
    return vllm


def _release() -> None:
    """Free the GPU memory of a vLLM engine its caller has just dropped, before the next model is loaded."""
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except (ImportError, AssertionError, RuntimeError):
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _run_model(
    vllm: Any, path: Path, tokenizer_path: Path, work: Workload, options: dict[str, Any], log: Callable[[str], None]
) -> tuple[list[list[dict[int, float]]], list[list[int]]]:
    """One model's per-window top-k log-probs (positions 1..T-1) and greedy outputs of `work.prompts`."""
    llm = vllm.LLM(model=str(path), tokenizer=str(tokenizer_path), max_logprobs=TOP_K, seed=0, **options)
    scored: list[list[dict[int, float]]] = []
    if work.windows:
        params = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=TOP_K, detokenize=False)
        results = llm.generate([{"prompt_token_ids": w.tolist()} for w in work.windows], params, use_tqdm=False)
        for result in results:
            positions = result.prompt_logprobs[1:]
            scored.append([{int(t): float(lp.logprob) for t, lp in entry.items()} for entry in positions])
        log(f"vLLM scored {len(work.windows)} windows with {path}")
    outputs: list[list[int]] = []
    if work.prompts:
        params = [
            vllm.SamplingParams(temperature=0.0, max_tokens=budget, stop_token_ids=list(work.eos), detokenize=False)
            for budget in work.budgets
        ]
        results = llm.generate([{"prompt_token_ids": list(p)} for p in work.prompts], params, use_tqdm=False)
        outputs = [cut_at_eos(list(result.outputs[0].token_ids), work.eos) for result in results]
        log(f"vLLM decoded {len(outputs)} prompts with {path}")
    del llm
    _release()
    return scored, outputs


def run_vllm(
    ref: Path,
    quant: Path,
    work: Workload,
    weights: bool,
    device: str,
    options: dict[str, Any] | None,
    log: Callable[[str], None],
) -> EngineRun:
    """Both models through vLLM in turn, then (when `weights`) the weight comparison through the runtime.

    `options` are extra `vllm.LLM` keyword arguments (e.g. `pipeline_parallel_size`, `enable_expert_parallel`,
    `max_model_len`); `tensor_parallel_size` defaults to the number of visible GPUs."""
    vllm = require_vllm()
    loaders = open_pair(ref, quant, device=device)
    options = {"tensor_parallel_size": max(1, torch.cuda.device_count()), **(options or {})}
    ref_scored, ref_outputs = _run_model(vllm, ref, ref, work, options, log)
    quant_scored, quant_outputs = _run_model(vllm, quant, ref, work, options, log)
    run = EngineRun(
        ref_outputs=ref_outputs, quant_outputs=quant_outputs, info={**pair_info(*loaders), "vllm_options": options}
    )
    if work.windows:
        parts = [
            compare_topk(r, q, window[1:].tolist(), work.vocab_size)
            for r, q, window in zip(ref_scored, quant_scored, work.windows, strict=True)
        ]
        run.figures["distribution"] = {
            **summarize(TokenComparison.concat(parts), len(work.windows)),
            "kl_estimate": f"top-{TOP_K} lists plus a tail bucket (lower bound)",
        }
    if weights:
        ref_model, quant_model = (loader.model(stream_layers=True) for loader in loaders)
        figures, run.weight_records = layer_walk(ref_model, quant_model, [], work.valid_vocab, True, log)
        run.figures.update(figures)
    return run
