"""Tool-call agreement: both models' replies to the tool prompts, parsed with the project's parser and compared.

Per prompt, with each reply parsed against the offered tools (`qtools.chat.parse_tool_calls`):
- valid format: no structural malformation of the call syntax (schema problems such as an unknown parameter
  are not format errors; they show up as argument mismatches and wrong calls);
- same name: the first call's function name is the same (or neither reply calls anything);
- same arguments: the first call's name and typed arguments are the same (compared as canonical JSON, so 1,
  1.0 and true differ);
- same calls: the whole list of calls is the same;
- correct (where the suite gives the expected calls): the call list equals the expected one and the reply has
  no parse error; a *flip* is a prompt one model gets right and the other wrong (arXiv 2407.09141).
Every prompt where the two replies differ gets a record with both texts, both parses and a unified diff.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from qtools.chat import FORMAT_ERRORS, parse_tool_calls
from qtools.check.metrics import difference
from qtools.check.suites import ToolPrompt


def canonical(value: Any) -> str:
    """JSON with sorted keys: equal exactly when the typed values are equal (1 != 1.0 != true)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def text_diff(ref: str, quant: str) -> str:
    """Unified line diff of two replies (`ref` first)."""
    lines = difflib.unified_diff(ref.splitlines(), quant.splitlines(), "reference", "quantised", lineterm="")
    return "\n".join(lines)


def _reply(text: str, prompt: ToolPrompt) -> dict[str, Any]:
    parsed = parse_tool_calls(text, prompt.tools)
    calls = [call.to_dict() for call in parsed.tool_calls]
    record = {
        "text": text,
        "calls": calls,
        "errors": [error.to_dict() for error in parsed.errors],
        "valid_format": not any(error.kind in FORMAT_ERRORS for error in parsed.errors),
    }
    if prompt.expected_calls is not None:
        record["correct"] = not parsed.errors and canonical(calls) == canonical(prompt.expected_calls)
    return record


def _request(prompt: ToolPrompt) -> str:
    last = prompt.messages[-1].get("content")
    return last if isinstance(last, str) else canonical(last)


def compare_tool_replies(prompts: list[ToolPrompt], ref_texts: list[str], quant_texts: list[str]) -> dict:
    """Rates over all prompts (see module docstring) and one record per prompt; `mismatches` lists the records
    where the replies differ in text, each with `diff`."""
    records = []
    for prompt, ref_text, quant_text in zip(prompts, ref_texts, quant_texts, strict=True):
        ref, quant = _reply(ref_text, prompt), _reply(quant_text, prompt)
        first_ref, first_quant = (ref["calls"] or [None])[0], (quant["calls"] or [None])[0]
        record = {
            "id": prompt.id,
            "request": _request(prompt),
            "expected_calls": prompt.expected_calls,
            "reference": ref,
            "quantised": quant,
            "same_text": ref_text == quant_text,
            "same_name": (first_ref or {}).get("name") == (first_quant or {}).get("name"),
            "same_arguments": canonical(first_ref) == canonical(first_quant),
            "same_calls": canonical(ref["calls"]) == canonical(quant["calls"]),
            "flip": None,
        }
        if prompt.expected_calls is not None and ref["correct"] != quant["correct"]:
            record["flip"] = "correct_to_wrong" if ref["correct"] else "wrong_to_correct"
        if not record["same_text"]:
            record["diff"] = text_diff(ref_text, quant_text)
        records.append(record)
    return {**tool_rates(records), "prompts": records}


def _rate(records: list[dict], test) -> float | None:
    # None, not NaN, over no records: nothing to grade is "not measured" (skipped by thresholds), NaN is not.
    return sum(1 for record in records if test(record)) / len(records) if records else None


def tool_rates(records: list[dict]) -> dict:
    """Summary rates over per-prompt records from `compare_tool_replies`."""
    graded = [record for record in records if record["expected_calls"] is not None]
    valid_ref = _rate(records, lambda r: r["reference"]["valid_format"])
    valid_quant = _rate(records, lambda r: r["quantised"]["valid_format"])
    correct_ref = _rate(graded, lambda r: r["reference"]["correct"])
    correct_quant = _rate(graded, lambda r: r["quantised"]["correct"])
    return {
        "count": len(records),
        "graded": len(graded),
        "valid_format_ref": valid_ref,
        "valid_format_quant": valid_quant,
        "valid_format_drop": difference(valid_ref, valid_quant),
        "same_text": _rate(records, lambda r: r["same_text"]),
        "same_name": _rate(records, lambda r: r["same_name"]),
        "same_arguments": _rate(records, lambda r: r["same_arguments"]),
        "same_calls": _rate(records, lambda r: r["same_calls"]),
        "correct_ref": correct_ref,
        "correct_quant": correct_quant,
        "flips": sum(1 for r in graded if r["flip"]),
        "flips_correct_to_wrong": sum(1 for r in graded if r["flip"] == "correct_to_wrong"),
        "flips_wrong_to_correct": sum(1 for r in graded if r["flip"] == "wrong_to_correct"),
        "flip_rate": _rate(graded, lambda r: r["flip"] is not None),
        "mismatches": [r["id"] for r in records if not r["same_text"]],
    }
