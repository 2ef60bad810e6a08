"""Build the toy Qwen3-Coder model end to end: data, tokenizer, training, checkpoint, reload check, gate.

The result is a directory in the exact Hugging Face layout of Qwen3-Coder-480B-A35B-Instruct (per-expert
bfloat16 tensors in several shards, index, configs, tokenizer with the project chat template) plus
`toy_gate.json`: the gate figures and every held-out prompt with the model's reply.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer, Qwen3MoeForCausalLM

from qtools.chat import chat_template_sha256, load_chat_template, render_chat
from qtools.errors import QtoolsError
from qtools.toy.architecture import config_dict, hf_config, padded_vocab_size
from qtools.toy.code_corpus import CodeFile, load_code_files
from qtools.toy.conversations import Chat
from qtools.toy.data import Sample, code_rows, generate_chats, pack_samples, tokenize_chat, training_batches
from qtools.toy.gate import evaluate_gate, gate_failures, gate_thresholds
from qtools.toy.key import KEY_FILE, toy_cache_key
from qtools.toy.recipe import ToyRecipe
from qtools.toy.save import save_configs, save_weights
from qtools.toy.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, token_id, train_tokenizer
from qtools.toy.train import train

GATE_FILE = "toy_gate.json"
CHAT_BATCH = 256  # conversations generated per round until the training rows are covered


@contextmanager
def _torch_settings(seed: int, threads: int) -> Iterator[None]:
    """Seed torch, fix its thread count and require deterministic kernels; restore the previous settings."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


class _Clock:
    """Wall time per build phase, logged as each phase ends."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.timings: dict[str, float] = {}
        self.started = self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = round(now - self.last, 2)
        self.last = now
        self.log(f"{phase}: {self.timings[phase]:.1f}s")

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": round(time.perf_counter() - self.started, 2)}


def _training_samples(
    recipe: ToyRecipe, rng: random.Random, code: list[CodeFile], tokenizer: Tokenizer, chats: list[Chat], tokens: int
) -> list[Sample]:
    """`chats` tokenised, then more conversations until their tokens (each cut at `seq_len`) cover `tokens`."""
    samples: list[Sample] = []
    total = 0
    while total < tokens:
        for chat in chats:
            samples.append(tokenize_chat(chat, tokenizer, recipe.name_loss_weight))
            total += min(len(samples[-1].ids), recipe.seq_len)
        chats = generate_chats(rng, CHAT_BATCH, recipe.chat_mix, code, recipe.max_tools, recipe.max_turns)
    return samples


def _check_reload(out_dir: Path, model: Qwen3MoeForCausalLM, probe: torch.Tensor) -> Qwen3MoeForCausalLM:
    """Load the checkpoint with transformers and require the logits of the in-memory model rounded to bf16."""
    loaded = Qwen3MoeForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).eval()
    # Built the way from_pretrained builds (parameters in bf16, rotary buffers kept in fp32).
    reference = Qwen3MoeForCausalLM._from_config(model.config, dtype=torch.bfloat16).eval()
    reference.load_state_dict({name: value.to(torch.bfloat16) for name, value in model.state_dict().items()})
    with torch.no_grad():
        expected = reference(input_ids=probe).logits
        got = loaded(input_ids=probe).logits
    if not torch.equal(expected, got):
        difference = (expected.float() - got.float()).abs().max().item()
        raise QtoolsError(
            f"reloaded toy checkpoint in {out_dir} disagrees with the trained model (max |dlogit| "
            f"{difference:.3g}): the on-disk layout or the expert split is wrong"
        )
    return loaded


def build_toy_model(
    out_dir: str | Path, seed: int = 0, recipe: ToyRecipe | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Train the toy model with `recipe` (default: the CI build) and `seed`, save it to `out_dir`, run the
    quality gate and write `toy_gate.json` there. Returns the gate figures, `passed` and `timings_s`.

    The same seed and recipe give byte-identical files on one software stack (training runs on
    `recipe.threads` threads with deterministic kernels). Raises QtoolsError when the gate fails and
    `recipe.enforce_gate` is set, after writing the gate file so the replies can be read.
    """
    recipe = (recipe or ToyRecipe()).model_copy(update={"seed": seed})
    with _torch_settings(seed, recipe.threads):
        return _build(Path(out_dir), recipe, _Clock(log or (lambda message: None)))


def _build(out: Path, recipe: ToyRecipe, clock: _Clock) -> dict[str, Any]:
    rng = random.Random(recipe.seed)
    train_code, heldout_code = load_code_files(heldout=False)[: recipe.code_files], load_code_files(heldout=True)
    bpe_chats = generate_chats(
        rng, recipe.tokenizer_chats, recipe.chat_mix, train_code, recipe.max_tools, recipe.max_turns
    )
    bpe_text = [file.text for file in train_code] + [render_chat(chat.messages, chat.tools) for chat in bpe_chats]
    tokenizer = train_tokenizer(bpe_text, recipe.vocab_size)
    eos_id, pad_id = token_id(tokenizer, EOS_TOKEN), token_id(tokenizer, PAD_TOKEN)
    clock.lap("tokenizer")

    code_count = round(recipe.steps * recipe.code_rows_per_step)
    chat_count = recipe.steps * recipe.batch_rows - code_count
    samples = _training_samples(recipe, rng, train_code, tokenizer, bpe_chats, chat_count * recipe.seq_len)
    chat_rows = pack_samples(samples, recipe.seq_len, pad_id)
    code_token_rows = code_rows(train_code, tokenizer, rng, code_count, recipe.seq_len)
    batches = training_batches(chat_rows, code_token_rows, recipe.batch_rows, recipe.steps, rng)
    clock.lap("data")

    vocab = padded_vocab_size(tokenizer.get_vocab_size(), recipe.architecture.vocab_multiple)
    config = config_dict(recipe.architecture, vocab, eos_id, pad_id)
    model = Qwen3MoeForCausalLM(hf_config(config))
    history = train(model, batches, recipe, log=clock.log)
    clock.lap("train")

    chat_template = load_chat_template()
    save_tokenizer(tokenizer, out, chat_template)
    save_configs(out, config, eos_id, pad_id)
    index = save_weights(model, out, recipe.shard_bytes)
    loaded = _check_reload(out, model, torch.tensor([code_token_rows[0][:64]], dtype=torch.long))
    clock.lap("save")

    gate = evaluate_gate(loaded, AutoTokenizer.from_pretrained(out), tokenizer, recipe, train_code, heldout_code)
    clock.lap("gate")

    figures = gate["figures"] | {"final_chat_loss": history[-1]["chat"], "final_code_loss": history[-1]["code"]}
    failures = gate_failures(figures, recipe)
    timings = clock.total()
    report = {
        "passed": not failures,
        "failures": failures,
        "figures": figures,
        "thresholds": gate_thresholds(recipe),
        "recipe": recipe.model_dump(),
        "recipe_sha256": recipe.sha256(),
        "chat_template_sha256": chat_template_sha256(chat_template),
        "decoding": {"greedy": True, "max_new_tokens": recipe.gate_max_new_tokens, "dtype": "bfloat16"},
        "total_weight_bytes": index["metadata"]["total_size"],
        "timings_s": timings,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        **gate["records"],
    }
    (out / GATE_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if not failures:
        (out / KEY_FILE).write_text(toy_cache_key(recipe, recipe.seed) + "\n")
    clock.log(
        f"gate: parseable {figures['tool_parseable']:.0%}, right name {figures['tool_right_name']:.0%}, "
        f"ppl {figures['heldout_code_ppl']:.1f} vs unigram {figures['unigram_ppl']:.1f}; total {timings['total']:.0f}s"
    )
    if failures and recipe.enforce_gate:
        raise QtoolsError(f"toy model in {out} missed its quality gate: {'; '.join(failures)} (see {GATE_FILE})")
    return {**figures, "passed": not failures, "timings_s": timings}
