"""Run inside the vLLM environment: parse each text of a corpus with vLLM's own `qwen3_coder` tool parser (what
`--tool-call-parser qwen3_coder` runs in its API server) and write what it extracted.

    <vllm python> parse_in_vllm.py TOKENIZER_DIR CORPUS.json OUT.json

CORPUS: [{"text": model output, "tools": [OpenAI tool specs]}]. OUT: [{"tools_called": bool, "content": str | null,
"calls": [{"name": str, "arguments": {...}}]}] in corpus order; arguments are vLLM's JSON string, decoded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tokenizers import get_tokenizer
    from vllm.tool_parsers import ToolParserManager

    tokenizer = get_tokenizer(sys.argv[1])
    parser_cls = ToolParserManager.get_tool_parser("qwen3_coder")
    out = []
    for case in json.loads(Path(sys.argv[2]).read_text()):
        request = ChatCompletionRequest(
            model="toy", messages=[{"role": "user", "content": "-"}], tools=case["tools"] or None
        )
        info = parser_cls(tokenizer, tools=request.tools).extract_tool_calls(case["text"], request)
        calls = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in info.tool_calls]
        out.append({"tools_called": info.tools_called, "content": info.content, "calls": calls})
    Path(sys.argv[3]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
