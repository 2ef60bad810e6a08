"""The built-in calibration data (`--calibration` not given): offline, deterministic, code plus tool use.

Half of the rows (the larger half when odd) are code: top-level standard-library modules outside the check's
held-out split (`stdlib_code`), shuffled with the seed and packed. The other half are agentic coding
conversations with tool calls and tool responses (`tool_chats`), rendered with the checkpoint's chat template
and packed the same way. Rows are then shuffled together. Code because Qwen3-Coder is a code model and coding
loses most at INT4; tool conversations because the tool-call format is the behaviour quantisation breaks first
(FACTS §4), and its tokens (`<tool_call>`, `<tool_response>`, the system turn's tool list) route to experts that
plain code never reaches.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch

from qtools.calibration.packing import pack_documents, shuffled
from qtools.calibration.stdlib_code import calibration_code
from qtools.calibration.tool_chats import tool_conversations
from qtools.chat import render_chat


def builtin_rows(tokenizer: Any, samples: int, seq_len: int, seed: int) -> tuple[torch.Tensor, str]:
    """int64 [samples, seq_len] token ids of the built-in mix and a description of it."""
    code = calibration_code()
    tool_rows = samples // 2
    code_rows = samples - tool_rows
    version = ".".join(map(str, sys.version_info[:3]))
    code_name = f"built-in code ({len(code)} standard-library modules of Python {version})"
    parts = [pack_documents((code[i][1] for i in shuffled(len(code), seed)), tokenizer, code_rows, seq_len, code_name)]
    if tool_rows:
        chats = tool_conversations(random.Random(f"tool-conversations-{seed}"), code)
        texts = (render_chat(messages, tools, tokenizer=tokenizer) for messages, tools in chats)
        parts.append(pack_documents(texts, tokenizer, tool_rows, seq_len, "built-in tool conversations"))
    rows = torch.cat(parts)[shuffled(samples, seed)]
    return rows, f"{code_name}: {code_rows} rows; built-in tool-call conversations: {tool_rows} rows"
