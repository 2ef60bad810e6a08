"""The toy model's training loop: AdamW, warmup then cosine decay, chat and code losses kept apart.

Chat rows carry loss on few tokens (assistant turns) and code rows on all of them, so a plain token mean would
let code drown the chats; the loss is the chat-token mean plus `code_loss_weight` times the code-token mean,
plus the router load-balancing loss that keeps every expert in use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from transformers import Qwen3MoeForCausalLM

from qtools.toy.data import IGNORE, Batch
from qtools.toy.recipe import ToyRecipe


def learning_rate(step: int, recipe: ToyRecipe) -> float:
    """Linear warmup to `learning_rate`, then cosine decay to `min_lr_ratio` of it at the last step."""
    if step < recipe.warmup_steps:
        return recipe.learning_rate * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.learning_rate * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def load_balancing_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch-Transformer balance loss averaged over layers: E * sum_e(f_e * P_e), where f_e is the share of
    routed slots that went to expert e and P_e its mean router probability; 1.0 when perfectly balanced.
    `router_logits` holds one (tokens, E) tensor per layer."""
    losses = []
    for logits in router_logits:
        probs = logits.float().softmax(dim=-1)
        chosen = probs.topk(top_k, dim=-1).indices
        share = F.one_hot(chosen, probs.shape[-1]).float().mean(dim=(0, 1))
        losses.append(probs.shape[-1] * (share * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def batch_loss(model: Qwen3MoeForCausalLM, batch: Batch, recipe: ToyRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch and its parts (chat, code, router) as floats for logging.

    The head runs only at positions whose next token carries loss: chat rows have few, and the
    (positions, vocab) logits are a large share of the cost.
    """
    output = model.model(
        input_ids=batch.input_ids, position_ids=batch.position_ids, output_router_logits=True, use_cache=False
    )
    targets = batch.labels[:, 1:]
    rows, columns = (targets != IGNORE).nonzero(as_tuple=True)
    logits = model.lm_head(output.last_hidden_state[rows, columns]).float()
    token_losses = F.cross_entropy(logits, targets[rows, columns], reduction="none")
    is_code = batch.is_code[rows]
    weights = batch.weights[:, 1:][rows, columns]
    chat_weights = weights * ~is_code
    chat_loss = (token_losses * chat_weights).sum() / chat_weights.sum().clamp(min=1e-6)
    code_loss = token_losses[is_code].mean() if is_code.any() else token_losses.new_zeros(())
    router_loss = load_balancing_loss(output.router_logits, model.config.num_experts_per_tok)
    loss = chat_loss + recipe.code_loss_weight * code_loss + recipe.router_aux_loss_coef * router_loss
    parts = {"chat": chat_loss.item(), "code": code_loss.item(), "router": router_loss.item()}
    return loss, parts


def train(
    model: Qwen3MoeForCausalLM,
    batches: Iterable[Batch],
    recipe: ToyRecipe,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place over `batches` (one optimiser step each); return the per-step loss parts."""
    decay = [param for name, param in model.named_parameters() if param.ndim >= 2 and "embed" not in name]
    no_decay = [param for name, param in model.named_parameters() if param.ndim < 2 or "embed" in name]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    model.train()
    history = []
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, recipe)
        loss, parts = batch_loss(model, batch, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        history.append(parts)
        if log is not None and (step % 20 == 0 or step == recipe.steps - 1):
            elapsed = time.perf_counter() - started
            log(
                f"step {step:4d}/{recipe.steps}  chat {parts['chat']:.3f}  code {parts['code']:.3f}  "
                f"router {parts['router']:.3f}  {elapsed:.0f}s"
            )
    model.eval()
    return history
