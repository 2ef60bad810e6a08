"""Build the toy Qwen3-Coder model end to end: data, tokenizer, training, checkpoint, reload check, gate.

The result is a directory in the exact Hugging Face layout of Qwen3-Coder-480B-A35B-Instruct (per-expert
bfloat16 tensors in several shards, index, configs, tokenizer with the project chat template) plus
`toy_gate.json`, the gate figures and every held-out prompt with the model's reply.
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
from qtools.toy.gate import code_token_stream, decode_gate_prompts, gate_prompts, perplexity, unigram_perplexity
from qtools.toy.recipe import ToyRecipe
from qtools.toy.save import save_configs, save_weights
from qtools.toy.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, token_id, train_tokenizer
from qtools.toy.train import train

GATE_FILE = "toy_gate.json"
CHAT_BATCH = 256  # conversations generated per round until the training rows are covered


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Seed torch and require deterministic kernels for the block, restoring the previous setting after."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _training_samples(
    recipe: ToyRecipe,
    rng: random.Random,
    code: list[CodeFile],
    tokenizer: Tokenizer,
    chats: list[Chat],
    tokens_needed: int,
) -> list[Sample]:
    """`chats` tokenised, then more conversations until their tokens (each cut at `seq_len`) cover
    `tokens_needed`."""
    samples, total = [], 0
    while total < tokens_needed:
        for chat in chats:
            samples.append(tokenize_chat(chat, tokenizer))
            total += min(len(samples[-1].ids), recipe.seq_len)
        chats = generate_chats(rng, CHAT_BATCH, recipe.chat_mix, code, recipe.max_tools, recipe.max_turns)
    return samples


def _check_reload(out_dir: Path, model: Qwen3MoeForCausalLM, probe: torch.Tensor) -> Qwen3MoeForCausalLM:
    """Load the checkpoint with transformers and require the logits of the in-memory model cast to bfloat16."""
    loaded = Qwen3MoeForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16).eval()
    reference = Qwen3MoeForCausalLM(model.config).to(torch.bfloat16).eval()
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
    """Train the toy model with `recipe` (defaults: the CI build) and `seed`, save it to `out_dir`, run the
    quality gate and write `toy_gate.json` there. Returns the gate figures (without the per-prompt records).

    The same seed and recipe give byte-identical weights on one machine and thread count. Raises QtoolsError
    when the gate fails (after writing the gate file, so the replies can be read) and `recipe.enforce_gate`.
    """
    recipe = (recipe or ToyRecipe()).model_copy(update={"seed": seed})
    out = Path(out_dir)
    say = log or (lambda message: None)
    timings: dict[str, float] = {}
    started = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now
        say(f"{name}: {timings[name]:.1f}s")

    rng = random.Random(seed)
    train_code, heldout_code = load_code_files(heldout=False)[: recipe.code_files], load_code_files(heldout=True)
    bpe_chats = generate_chats(
        rng, recipe.tokenizer_chats, recipe.chat_mix, train_code, recipe.max_tools, recipe.max_turns
    )
    bpe_text = [file.text for file in train_code] + [render_chat(chat.messages, chat.tools) for chat in bpe_chats]
    tokenizer = train_tokenizer(bpe_text, recipe.vocab_size)
    eos_id, pad_id = token_id(tokenizer, EOS_TOKEN), token_id(tokenizer, PAD_TOKEN)
    lap("tokenizer")

    code_count = round(recipe.steps * recipe.code_rows_per_step)
    chat_count = recipe.steps * recipe.batch_rows - code_count
    samples = _training_samples(recipe, rng, train_code, tokenizer, bpe_chats, chat_count * recipe.seq_len)
    chat_rows = pack_samples(samples, recipe.seq_len, pad_id)
    code_token_rows = code_rows(train_code, tokenizer, rng, code_count, recipe.seq_len)
    batches = training_batches(chat_rows, code_token_rows, recipe.batch_rows, recipe.steps, rng)
    lap("data")

    config = config_dict(
        recipe.architecture,
        padded_vocab_size(tokenizer.get_vocab_size(), recipe.architecture.vocab_multiple),
        eos_id,
        pad_id,
    )
    with _deterministic_torch(seed):
        model = Qwen3MoeForCausalLM(hf_config(config))
        history = train(model, batches, recipe, log=say)
    lap("train")

    chat_template = load_chat_template()
    save_tokenizer(tokenizer, out, chat_template)
    save_configs(out, config, eos_id, pad_id)
    index = save_weights(model, out, recipe.shard_bytes)
    probe = torch.tensor([code_token_rows[0][:64]], dtype=torch.long)
    loaded = _check_reload(out, model, probe)
    lap("save")

    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    decoded = decode_gate_prompts(loaded, hf_tokenizer, gate_prompts(recipe, heldout_code), recipe.gate_max_new_tokens)
    heldout_tokens = code_token_stream(heldout_code, tokenizer, pad_id, recipe.gate_ppl_tokens)
    train_tokens = code_token_stream(train_code, tokenizer, pad_id)
    model_ppl, scored = perplexity(loaded, heldout_tokens, recipe.seq_len)
    unigram_ppl = unigram_perplexity(train_tokens, heldout_tokens, recipe.seq_len, tokenizer.get_vocab_size())
    lap("gate")

    figures = {
        "tool_prompts": len(decoded["tool_prompts"]),
        "tool_parseable": decoded["tool_parseable"],
        "tool_right_name": decoded["tool_right_name"],
        "tool_exact": decoded["tool_exact"],
        "plain_no_tool_call": decoded["plain_no_tool_call"],
        "fim_exact": decoded["fim_exact"],
        "heldout_code_tokens": scored,
        "heldout_code_ppl": model_ppl,
        "unigram_ppl": unigram_ppl,
        "ppl_ratio": model_ppl / unigram_ppl,
        "final_chat_loss": history[-1]["chat"],
        "final_code_loss": history[-1]["code"],
    }
    thresholds = {
        "tool_parseable": recipe.gate_min_parseable,
        "tool_right_name": recipe.gate_min_right_name,
        "ppl_ratio_max": recipe.gate_max_ppl_ratio,
    }
    failures = [
        f"{key} {figures[key]:.3f} < {thresholds[key]}"
        for key in ("tool_parseable", "tool_right_name")
        if figures[key] < thresholds[key]
    ]
    if figures["ppl_ratio"] >= recipe.gate_max_ppl_ratio:
        failures.append(f"ppl_ratio {figures['ppl_ratio']:.3f} >= {recipe.gate_max_ppl_ratio}")
    timings["total"] = round(time.perf_counter() - started, 2)
    report = {
        "passed": not failures,
        "failures": failures,
        "figures": figures,
        "thresholds": thresholds,
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
        "tool_prompts": decoded["tool_prompts"],
        "plain_prompts": decoded["plain_prompts"],
        "fim_prompts": decoded["fim_prompts"],
    }
    (out / GATE_FILE).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    say(
        f"gate: parseable {figures['tool_parseable']:.0%}, right name {figures['tool_right_name']:.0%}, "
        f"ppl {model_ppl:.1f} vs unigram {unigram_ppl:.1f}; total {timings['total']:.0f}s"
    )
    if failures and recipe.enforce_gate:
        raise QtoolsError(f"toy model in {out} missed its quality gate: {'; '.join(failures)} (see {GATE_FILE})")
    return {**figures, "passed": not failures, "timings_s": timings}
