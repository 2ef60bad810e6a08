"""Qwen3-Coder chat: render conversations with tools, parse the model's tool calls, build FIM prompts."""

from qtools.chat.fim import build_fim_prompt, fim_messages
from qtools.chat.parse import parse_tool_calls
from qtools.chat.render import render_chat
from qtools.chat.result import FORMAT_ERRORS, ErrorKind, ParseError, ParseResult, ToolCall
from qtools.chat.template import chat_template_sha256, load_chat_template, render_template

__all__ = [
    "FORMAT_ERRORS",
    "ErrorKind",
    "ParseError",
    "ParseResult",
    "ToolCall",
    "build_fim_prompt",
    "chat_template_sha256",
    "fim_messages",
    "load_chat_template",
    "parse_tool_calls",
    "render_chat",
    "render_template",
]
