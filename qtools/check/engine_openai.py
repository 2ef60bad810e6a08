"""The OpenAI engine: a check of two models as they are *served* (vLLM, SGLang or any OpenAI-compatible server),
one URL each; nothing is loaded here.

- code suite: `/v1/completions` with the window's token ids as the prompt, `echo` and `logprobs=TOP_K`: the
  server's top-k log-probs at every prompt position plus the actual token's; distribution figures as under the
  vLLM engine (`metrics.compare_topk`: NLL, perplexity, delta p and top-1 agreement exact, KL a lower bound,
  since the mass outside both top-k lists is one tail bucket). The server must name tokens by id
  (`return_tokens_as_token_ids`, a vLLM extension); one that does not is refused with that reason.
- decoding (continuations, tool and FIM prompts): `/v1/completions` from the same token ids as the other
  engines, greedy, token ids back the same way, so the tools suite still parses the raw replies with our parser.
- served tool calls: each tool prompt also goes through `/v1/chat/completions` with its tools, parsed by the
  server's own tool parser (`--tool-call-parser qwen3_coder` in vLLM); `served_tools` compares both servers'
  calls (same name, same calls) and counts replies with a call.
The weights suite, when asked for, runs through the qtools runtime on the checkpoint directories.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtools.check.decode import cut_at_eos
from qtools.check.distribution import summarize
from qtools.check.engine_qtools import EngineRun, layer_walk, open_pair, pair_info
from qtools.check.metrics import TokenComparison, compare_topk
from qtools.check.tools_check import canonical
from qtools.check.workload import Workload
from qtools.errors import QtoolsError

TOP_K = 20  # vLLM's default --max-logprobs
TIMEOUT_S = 600


class Server:
    """One OpenAI-compatible server: `post(path, payload)` -> the JSON reply; the model is the first it lists."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        models = self._request("/v1/models", None)
        if not models.get("data"):
            raise QtoolsError(f"{self.url}/v1/models lists no model")
        self.model = models["data"][0]["id"]

    def _request(self, path: str, payload: dict | None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise QtoolsError(f"{self.url}{path}: HTTP {error.code}: {error.read().decode()[:500]}") from None
        except (urllib.error.URLError, OSError) as error:
            raise QtoolsError(f"{self.url}{path}: cannot reach the server ({error})") from None

    def post(self, path: str, payload: dict) -> dict:
        return self._request(path, {"model": self.model, **payload})


def _token_id(server: Server, token: str) -> int:
    if not token.startswith("token_id:"):
        raise QtoolsError(
            f"{server.url} names tokens by text ({token!r}), not by id: the code suite and decoding need "
            "`return_tokens_as_token_ids` (vLLM); for another server use --suite tools with its chat endpoint"
        )
    return int(token.removeprefix("token_id:"))


def score_window(server: Server, window: list[int]) -> list[dict[int, float]]:
    """Top-k log-probs (plus the actual token's) at positions 1..T-1 of `window`, teacher-forced by the server."""
    reply = server.post(
        "/v1/completions",
        {"prompt": window, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": TOP_K}
        | {"return_tokens_as_token_ids": True},
    )
    logprobs = reply["choices"][0]["logprobs"]
    positions = []
    for index in range(1, len(window)):
        entry = {_token_id(server, t): float(lp) for t, lp in (logprobs["top_logprobs"][index] or {}).items()}
        entry[window[index]] = float(logprobs["token_logprobs"][index])
        positions.append(entry)
    return positions


def decode(server: Server, prompt: list[int], budget: int, eos: tuple[int, ...]) -> list[int]:
    """Greedy reply token ids to `prompt` (ended at the first of `eos`)."""
    reply = server.post(
        "/v1/completions",
        {"prompt": prompt, "max_tokens": budget, "temperature": 0, "logprobs": 0}
        | {"return_tokens_as_token_ids": True, "stop_token_ids": list(eos), "skip_special_tokens": False},
    )
    tokens = reply["choices"][0]["logprobs"]["tokens"]
    return cut_at_eos([_token_id(server, t) for t in tokens], eos)


def served_calls(server: Server, messages: list[dict], tools: list[dict], budget: int) -> list[dict]:
    """The calls the server's own tool parser extracts from its greedy chat reply: [{name, arguments}]."""
    reply = server.post(
        "/v1/chat/completions", {"messages": messages, "tools": tools, "temperature": 0, "max_tokens": budget}
    )
    calls = reply["choices"][0]["message"].get("tool_calls") or []
    return [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls]


def compare_served_calls(ref: list[list[dict]], quant: list[list[dict]]) -> dict[str, Any]:
    """Rates over the tool prompts of the two servers' parsed calls."""
    count = len(ref)
    pairs = list(zip(ref, quant, strict=True))
    first = [((a or [{}])[0].get("name"), (b or [{}])[0].get("name")) for a, b in pairs]
    return {
        "count": count,
        "with_call_ref": sum(1 for a in ref if a) / count,
        "with_call_quant": sum(1 for b in quant if b) / count,
        "same_name": sum(1 for a, b in first if a == b) / count,
        "same_calls": sum(1 for a, b in pairs if canonical(a) == canonical(b)) / count,
        "parser": "the server's own",
    }


def run_openai(
    ref: Path,
    quant: Path,
    servers: list[Server],
    work: Workload,
    weights: bool,
    device: str,
    log: Callable[[str], None],
) -> EngineRun:
    """Both served models (reference first) through their endpoints, then (when `weights`) the weight comparison
    by the runtime."""
    loaders = open_pair(ref, quant, device=device)
    info = {"urls": [s.url for s in servers], "served_models": [s.model for s in servers]}
    run = EngineRun(info={**pair_info(*loaders), **info})
    scored = [[score_window(server, window.tolist()) for window in work.windows] for server in servers]
    outputs = [
        [decode(server, prompt, budget, work.eos) for prompt, budget in zip(work.prompts, work.budgets, strict=True)]
        for server in servers
    ]
    run.ref_outputs, run.quant_outputs = outputs
    log(f"scored {len(work.windows)} windows and decoded {len(work.prompts)} prompts on each server")
    if work.windows:
        parts = [
            compare_topk(r, q, window[1:].tolist(), work.vocab_size)
            for r, q, window in zip(*scored, work.windows, strict=True)
        ]
        run.figures["distribution"] = {
            **summarize(TokenComparison.concat(parts), len(work.windows)),
            "kl_estimate": f"top-{TOP_K} lists from the server plus a tail bucket (lower bound)",
        }
    if work.suites.tools:
        budget = work.sizes.tool_new_tokens
        calls = [[served_calls(s, p.messages, p.tools, budget) for p in work.suites.tools] for s in servers]
        run.figures["served_tools"] = compare_served_calls(*calls)
    if weights:
        ref_model, quant_model = (loader.model(stream_layers=True) for loader in loaders)
        figures, run.weight_records = layer_walk(ref_model, quant_model, [], work.valid_vocab, True, log)
        run.figures.update(figures)
    return run
