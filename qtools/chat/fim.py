"""Fill-in-the-middle prompts for Qwen3-Coder: `<|fim_prefix|>PREFIX<|fim_suffix|>SUFFIX<|fim_middle|>`."""

from __future__ import annotations

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SYSTEM = "You are a code completion assistant."


def build_fim_prompt(prefix: str, suffix: str) -> str:
    """The FIM prompt text; the model writes the middle after `<|fim_middle|>` (decode greedily)."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def fim_messages(prefix: str, suffix: str) -> list[dict[str, str]]:
    """The FIM chat of the Qwen3-Coder README: a code-completion system turn, the FIM prompt as user."""
    return [
        {"role": "system", "content": FIM_SYSTEM},
        {"role": "user", "content": build_fim_prompt(prefix, suffix)},
    ]
