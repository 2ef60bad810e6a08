"""qtools.check reply comparisons (tool calls, FIM, continuations), suites and their JSONL, thresholds."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from qtools.check.fim_check import compare_middles
from qtools.check.generation_check import compare_continuations, first_divergence
from qtools.check.suites import (
    FimPrompt,
    ToolPrompt,
    builtin_tool_prompts,
    load_suites,
    parse_suite_names,
    read_suite_file,
)
from qtools.check.thresholds import BOUNDS, Thresholds, evaluate
from qtools.check.tools_check import compare_tool_replies
from qtools.errors import QtoolsError
from qtools.toy.code_corpus import is_heldout
from qtools.toy.conversations import split_for_fim

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def _call(name: str, **parameters: object) -> str:
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in parameters.items())
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


def _prompt(expected: list | None) -> ToolPrompt:
    return ToolPrompt("p", [{"role": "user", "content": "Weather in Oslo for 3 days?"}], [WEATHER], expected)


def test_tool_replies_rates_flips_and_diffs() -> None:
    expected = [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]
    right = _call("get_weather", city="Oslo", days=3)
    cases = [
        (right, right),  # identical and correct
        (right, _call("get_weather", city="Oslo", days=4)),  # same name, different typed argument: flip to wrong
        (right, "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n"),  # broken format
        (_call("get_weather", city="Oslo"), right),  # the quantised model gets it right instead
    ]
    result = compare_tool_replies([_prompt(expected)] * 4, [c[0] for c in cases], [c[1] for c in cases])
    assert result["valid_format_ref"] == 1.0 and result["valid_format_quant"] == 0.75
    assert result["valid_format_drop"] == pytest.approx(0.25)
    assert result["same_name"] == 1.0
    assert result["same_arguments"] == 0.25 and result["same_calls"] == 0.25
    assert result["correct_ref"] == 0.75 and result["correct_quant"] == 0.5
    assert (result["flips"], result["flips_correct_to_wrong"], result["flips_wrong_to_correct"]) == (3, 2, 1)
    assert result["flip_rate"] == 0.75
    records = result["prompts"]
    assert "diff" not in records[0] and records[0]["flip"] is None
    assert "-3" in records[1]["diff"] and "+4" in records[1]["diff"]
    assert records[1]["flip"] == "correct_to_wrong" and records[3]["flip"] == "wrong_to_correct"
    assert result["mismatches"] == ["p", "p", "p"]


def test_typed_arguments_compare_strictly() -> None:
    """Arguments compare as values typed by the schema: two spellings that parse to the same integer are the
    same call; "3.0" for an integer parameter is not 3."""
    prompt = ToolPrompt("p", [{"role": "user", "content": "?"}], [WEATHER], None)
    same = compare_tool_replies(
        [prompt], [_call("get_weather", city="A", days=3)], [_call("get_weather", city="A", days="3")]
    )
    assert same["same_arguments"] == 1.0  # parsed against the schema both become int 3
    other = compare_tool_replies(
        [prompt], [_call("get_weather", city="A", days=3)], [_call("get_weather", city="A", days="3.0")]
    )
    assert other["same_arguments"] == 0.0 and other["graded"] == 0
    assert other["prompts"][0]["flip"] is None


def test_no_call_expected_and_plain_answers() -> None:
    prompt = _prompt([])
    result = compare_tool_replies([prompt, prompt], ["Sunny.", "Sunny."], ["Sunny.", _call("get_weather", city="X")])
    assert result["same_name"] == 0.5 and result["correct_ref"] == 1.0 and result["correct_quant"] == 0.5
    assert result["flips_correct_to_wrong"] == 1


def test_fim_middles_against_reference_and_truth() -> None:
    prompts = [FimPrompt("a", "def f():\n", "\n", "    return 1\n"), FimPrompt("b", "x = 1\n", "", None)]
    result = compare_middles(prompts, ["    return 1\n", "y = 2"], ["    return 1", "y = 3"])
    assert result["count"] == 2 and result["graded"] == 1
    assert result["same_as_reference"] == 0.0
    assert result["exact_ref"] == result["exact_quant"] == 1.0 and result["flips"] == 0
    assert "diff" in result["prompts"][1] and result["prompts"][0]["ref_similarity"] == 1.0


def test_first_divergence_and_continuation_rates() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    result = compare_continuations([[1, 2, 3, 4], [1, 2, 3, 4]], [[1, 2, 3, 4], [1, 2, 9, 9]])
    assert result["exact_match_rate"] == 0.5 and result["first_divergence"] == [None, 2]
    assert result["first_divergence_median"] == 2 and result["matched_prefix_share"] == pytest.approx(0.75)


def test_builtin_suites_and_fim_split() -> None:
    prompts = builtin_tool_prompts()
    assert len(prompts) >= 10 and any(p.expected_calls == [] for p in prompts)
    middle_cut = split_for_fim("a\nb\nc\nd\ne\nf\ng\n", random.Random(0))
    assert middle_cut is not None and "".join(middle_cut) == "a\nb\nc\nd\ne\nf\ng\n"
    assert split_for_fim("one line\n", random.Random(0)) is None
    suites = load_suites(Path("."), ("code", "tools", "fim"), _sizes(), seed=0)
    assert suites.code and all(is_heldout(item.name) for item in suites.code)
    assert len(suites.fim) == 3 and all(p.middle and p.middle.strip() for p in suites.fim)
    again = load_suites(Path("."), ("fim",), _sizes(), seed=0)
    assert [p.id for p in again.fim] == [p.id for p in suites.fim]
    assert suites.tools[0].expected_calls is not None


def _sizes():
    from qtools.check.suites import SuiteSizes

    return SuiteSizes(fim_prompts=3)


def test_suite_file_extends_and_rejects_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "suite.jsonl"
    records = [
        {"kind": "code", "text": "print(1)\n"},
        {"kind": "tools", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "expected_calls": []},
        {"kind": "fim", "prefix": "a", "suffix": "c", "middle": "b"},
    ]
    good.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    parsed = read_suite_file(good)
    assert len(parsed.code) == len(parsed.tools) == len(parsed.fim) == 1
    assert parsed.tools[0].id == f"{good}:2"
    merged = load_suites(Path("."), ("tools",), _sizes(), files=(good,))
    assert merged.tools[-1].id == f"{good}:2" and not merged.code
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"kind": "tools", "messages": [{"role": "assistant", "content": "x"}]}) + "\n")
    with pytest.raises(QtoolsError, match="bad.jsonl:1"):
        read_suite_file(bad)
    bad.write_text('{"kind": "poem", "text": "x"}\n')
    with pytest.raises(QtoolsError, match="unknown kind"):
        read_suite_file(bad)


def test_suite_names() -> None:
    assert parse_suite_names("code, tools") == ("code", "tools")
    with pytest.raises(QtoolsError, match="code, tools, fim, weights"):
        parse_suite_names("code,toolz")


def test_threshold_overrides() -> None:
    thresholds = Thresholds().with_overrides(["kl_mean=0.5", "top1-agreement=0.8", "tool_flip_rate=off"])
    assert thresholds.kl_mean == 0.5 and thresholds.top1_agreement == 0.8 and thresholds.tool_flip_rate is None
    assert Thresholds().kl_mean != 0.5  # a copy: defaults untouched
    with pytest.raises(QtoolsError, match="did you mean 'kl_mean'"):
        Thresholds().with_overrides(["kl_men=1"])
    with pytest.raises(QtoolsError, match="KEY=VALUE"):
        Thresholds().with_overrides(["kl_mean"])
    with pytest.raises(QtoolsError, match="not a number"):
        Thresholds().with_overrides(["kl_mean=low"])
    with pytest.raises(QtoolsError, match="finite"):
        Thresholds().with_overrides(["kl_mean=nan"])
    assert set(Thresholds.model_fields) == set(BOUNDS)


def test_threshold_evaluation_directions_and_skips() -> None:
    thresholds = Thresholds().with_overrides(["kl_mean=0.01", "top1_agreement=0.9", "kl_max=off"])
    figures = {
        "distribution": {"kl": {"mean": 0.02, "max": 3.0}, "top1_agreement": 0.95},
        "fim": {"exact_drop": None},
    }
    verdicts = {v["key"]: v for v in evaluate(thresholds, figures)}
    assert verdicts["kl_mean"]["status"] == "fail" and verdicts["kl_mean"]["direction"] == "max"
    assert verdicts["top1_agreement"]["status"] == "pass"
    assert verdicts["kl_max"]["status"] == "off"
    assert verdicts["tool_same_calls"]["status"] == "skipped"  # tools suite not run
    assert verdicts["fim_exact_drop"]["status"] == "skipped"  # nothing graded
    boundary = evaluate(Thresholds().with_overrides(["kl_mean=0.02"]), figures)
    assert next(v for v in boundary if v["key"] == "kl_mean")["status"] == "pass"  # bounds are inclusive


def test_non_finite_figures_fail_and_only_unmeasured_ones_are_skipped() -> None:
    """A measured NaN (a NaN weight, a NaN logit) is a failure, never a skip; so are infinities on the wrong
    side of a bound. Only a figure that is absent or None (suite not run, nothing graded) is skipped."""
    nan, inf = float("nan"), float("inf")
    figures = {
        "distribution": {"kl": {"mean": nan, "p99": inf}, "top1_agreement": nan, "ppl_ratio": nan},
        "weights": {"sqnr_min_db": inf},
        "layers": {"update_sqnr_min_db": -inf},
        "tools": {"same_name": None},
    }
    verdicts = {v["key"]: v for v in evaluate(Thresholds(), figures)}
    for key in ("kl_mean", "kl_p99", "top1_agreement", "ppl_ratio", "layer_update_sqnr_min_db"):
        assert verdicts[key]["status"] == "fail", key
    assert verdicts["weight_sqnr_min_db"]["status"] == "pass"  # identical weights: infinite SQNR
    assert verdicts["tool_same_name"]["status"] == "skipped" and verdicts["fim_exact_drop"]["status"] == "skipped"


def test_rates_over_nothing_are_none_not_nan() -> None:
    """ "Nothing to grade" is None, so that NaN always means a measured non-finite value."""
    tools = compare_tool_replies([_prompt(None)], ["Sunny."], ["Sunny."])
    assert tools["graded"] == 0 and tools["correct_ref"] is None and tools["flip_rate"] is None
    assert compare_tool_replies([], [], [])["same_calls"] is None
    fim = compare_middles([FimPrompt("b", "x = 1\n", "", None)], ["y"], ["y"])
    assert fim["exact_ref"] is None and fim["exact_drop"] is None and fim["same_as_reference"] == 1.0
    assert compare_continuations([], [])["exact_match_rate"] is None


@pytest.mark.parametrize(
    "record, message",
    [
        ({"kind": "tools", "messages": "hi"}, "'messages' must be a list"),
        ({"kind": "tools", "messages": [{"content": "hi"}]}, "string 'role'"),
        ({"kind": "tools", "messages": [{"role": "user", "content": "hi"}], "tools": "x"}, "'tools' must be"),
        ({"kind": "tools", "messages": [{"role": "user", "content": "hi"}], "tools": ["x"]}, "each tool"),
        ({"kind": "tools", "messages": [{"role": "user", "content": "?"}], "expected_calls": "x"}, "expected_calls"),
        ({"kind": "tools", "messages": [{"role": "user", "content": "?"}], "expected_calls": [{"name": 1}]}, "name"),
        ({"kind": "fim", "prefix": 1, "suffix": ""}, "'prefix' must be a string"),
        ({"kind": "code", "text": ["x"]}, "'text' must be a string"),
        (["not", "an", "object"], "JSON object"),
    ],
    ids=["messages", "role", "tools", "tool", "expected calls", "call name", "fim prefix", "code text", "array"],
)
def test_suite_records_of_the_wrong_type_are_refused_when_read(tmp_path: Path, record, message) -> None:
    """These used to pass the reader and fail (or be silently misgraded) after both models had run."""
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(QtoolsError, match=f"suite.jsonl:1.*{re.escape(message)}"):
        read_suite_file(path)


def test_a_suite_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "suite.jsonl"
    path.write_bytes(b'{"kind": "code", "text": "\xff"}\n')
    with pytest.raises(QtoolsError, match="UTF-8"):
        read_suite_file(path)


def test_outcome_warnings_for_identical_models_and_an_empty_gate() -> None:
    from qtools.check.pipeline import outcome_warnings

    passed = [{"status": "pass"}, {"status": "off"}]
    assert outcome_warnings({"weights": {"modules_changed": 3}}, passed) == []
    identical = outcome_warnings({"weights": {"modules_changed": 0}}, passed)
    assert len(identical) == 1 and "identical" in identical[0]
    # A norm-only difference shows up in the distribution even when no linear weight differs.
    differing = {"weights": {"modules_changed": 0}, "distribution": {"tokens": 10, "kl": {"max": 1e-4}}}
    assert outcome_warnings(differing, passed) == []
    nothing = outcome_warnings({}, [{"status": "skipped"}, {"status": "off"}])
    assert len(nothing) == 1 and "no threshold was evaluated" in nothing[0]
