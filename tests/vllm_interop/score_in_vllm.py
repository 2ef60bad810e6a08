"""Run inside the vLLM environment (not the test's): load each checkpoint of a job in turn with `vllm.LLM` and
score the same token windows teacher-forced, then write one JSON file the interop tests assert on.

    <vllm python> score_in_vllm.py JOB.json OUT.json

JOB: {"tokenizer": dir, "windows": [[ids]], "top_k": k, "models": {name: checkpoint dir}}.
OUT: {name: {"loaded": bool, "error": str | null, "load_s": s, "score_s": s, "quant_method": str | null,
"error_frames": [function names of the traceback, outermost first] when not loaded,
"target_logprobs": [[log p(token t | < t)] per window, positions 1..T-1], "top1": [[argmax token] ...]}}.
One process loads every model (the import of vLLM, ~15 s, is paid once); a model vLLM refuses is recorded with
vLLM's own error instead of ending the run.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import traceback
from pathlib import Path


def _release() -> None:
    """Tear down the model-parallel groups a (possibly failed) `vllm.LLM` set up, before the next one."""
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    try:
        destroy_model_parallel()
        destroy_distributed_environment()
    except (AssertionError, RuntimeError):
        pass
    gc.collect()


def score_model(vllm, path: str, tokenizer: str, windows: list[list[int]], top_k: int) -> dict:
    started = time.perf_counter()
    quant = json.loads((Path(path) / "config.json").read_text()).get("quantization_config", {})
    record: dict = {"quant_method": quant.get("quant_method"), "loaded": False, "error": None}
    try:
        llm = vllm.LLM(
            model=path,
            tokenizer=tokenizer,
            dtype="bfloat16",
            max_model_len=max(len(w) for w in windows) + 8,
            max_num_seqs=len(windows),
            max_logprobs=top_k,
            enforce_eager=True,  # no torch.compile: minutes on a 2-core CPU, same numerics
            seed=0,
        )
    except Exception as error:  # vLLM's refusal is the result for this model
        record["error"] = f"{type(error).__name__}: {error}"
        record["error_frames"] = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
        record["load_s"] = time.perf_counter() - started
        _release()
        return record
    record.update(loaded=True, load_s=time.perf_counter() - started)
    started = time.perf_counter()
    params = vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=top_k, detokenize=False)
    results = llm.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
    record["score_s"] = time.perf_counter() - started
    targets, top1 = [], []
    for window, result in zip(windows, results, strict=True):
        positions = result.prompt_logprobs[1:]
        targets.append([float(entry[token].logprob) for token, entry in zip(window[1:], positions, strict=True)])
        top1.append([next(int(t) for t, lp in entry.items() if lp.rank == 1) for entry in positions])
    record.update(target_logprobs=targets, top1=top1)
    del llm
    _release()
    return record


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    started = time.perf_counter()
    import vllm

    out: dict = {"vllm_version": vllm.__version__, "import_s": time.perf_counter() - started, "models": {}}
    for name, path in job["models"].items():
        out["models"][name] = score_model(vllm, path, job["tokenizer"], job["windows"], job["top_k"])
        print(f"score_in_vllm: {name}: loaded={out['models'][name]['loaded']}", file=sys.stderr, flush=True)
    out["total_s"] = time.perf_counter() - started
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":  # vLLM starts worker processes with spawn, which re-imports this file
    main()
