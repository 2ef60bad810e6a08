"""qtools.calibration.load_calibration: every source kind, chat rendered by the checkpoint's template, seeded
packing, the data hash, the refusals, and the built-in default's mix and its disjointness from the check's code.

The committed toy checkpoint provides the tokenizer and chat template (only its tokenizer files are read).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from qtools.calibration import load_calibration
from qtools.calibration.packing import separator_token_id
from qtools.calibration.stdlib_code import calibration_code, is_check_heldout, stdlib_dir
from qtools.errors import QtoolsError
from qtools.testing.files import REPO_ROOT, TOY_MODEL_DIR

CHECKPOINT = TOY_MODEL_DIR

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
# Two tool calls with different argument keys and two tool responses: Arrow (parquet) fills the keys each call
# lacks with null, which rendering must not show.
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Weather in Lisbon, and news about it?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lisbon", "unit": "C"}}},
                {"type": "function", "function": {"name": "search", "arguments": {"query": "Lisbon news"}}},
            ],
        },
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "tool", "content": "Lisbon hosts a regatta."},
        {"role": "assistant", "content": "It is 21 C; there is a regatta."},
    ],
    "tools": [WEATHER, SEARCH],
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(CHECKPOINT)


def packed(tokenizer, texts: list[str], seed: int, samples: int, seq_len: int) -> torch.Tensor:
    """Oracle: texts in `random.Random(seed)` order, each tokenised and followed by EOS, cut into rows."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    stream, separator = [], separator_token_id(tokenizer, "test")
    for index in order:
        stream += tokenizer(texts[index], add_special_tokens=False)["input_ids"] + [separator]
    return torch.tensor(stream[: samples * seq_len]).view(samples, seq_len)


def split_at(ids: list[int], separator: int) -> list[list[int]]:
    """`ids` cut at each `separator` (dropped); the first and last pieces may be parts of documents."""
    pieces, current = [], []
    for token in ids:
        if token == separator:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return [*pieces, current]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


TEXTS = [f"def function_{i}(x):\n    return x * {i} + {i * i}\n" * (1 + i % 3) for i in range(12)]


def token_count(tokenizer, texts: list[str]) -> int:
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)


def test_jsonl_text_column_is_packed_in_seeded_order(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "code.jsonl", [{"text": text, "id": i} for i, text in enumerate(TEXTS)])
    calibration = load_calibration(str(data), CHECKPOINT, samples=3, seq_len=40, seed=5)
    assert calibration.input_ids.dtype == torch.int64
    assert torch.equal(calibration.input_ids, packed(tokenizer, TEXTS, 5, 3, 40))
    assert "column 'text'" in calibration.source and "seed 5" in calibration.source


def test_json_list_and_column_object_and_content_column(tmp_path, tokenizer):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps([{"content": text} for text in TEXTS]), encoding="utf-8")
    as_columns = tmp_path / "columns.json"
    as_columns.write_text(json.dumps({"body": TEXTS, "n": list(range(len(TEXTS)))}), encoding="utf-8")
    expected = packed(tokenizer, TEXTS, 1, 2, 50)
    assert torch.equal(load_calibration(str(as_list), CHECKPOINT, 2, 50, 1).input_ids, expected)
    assert torch.equal(load_calibration(str(as_columns), CHECKPOINT, 2, 50, 1, column="body").input_ids, expected)


def test_text_folder_one_document_per_file(tmp_path, tokenizer):
    folder = tmp_path / "repo"
    (folder / "pkg").mkdir(parents=True)
    for i, text in enumerate(TEXTS[:6]):
        (folder / ("pkg" if i % 2 else ".") / f"m{i}.py").write_text(text, encoding="utf-8")
    (folder / "package.json").write_text('{"name": "x"}\n', encoding="utf-8")  # a text file, not records
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    (folder / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    # One document per text file, in sorted relative-path order; hidden paths and binary files skipped.
    order = ["m0.py", "m2.py", "m4.py", "package.json", "pkg/m1.py", "pkg/m3.py", "pkg/m5.py"]
    texts = [(folder / name).read_text() for name in order]
    total = token_count(tokenizer, texts)
    calibration = load_calibration(str(folder), CHECKPOINT, 1, total, 3)
    assert torch.equal(calibration.input_ids, packed(tokenizer, texts, 3, 1, total))
    assert "7 text files" in calibration.source


def test_folder_of_jsonl_files(tmp_path, tokenizer):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": text} for text in TEXTS[:5]])
    write_jsonl(folder / "b.jsonl", [{"text": text} for text in TEXTS[5:]])
    calibration = load_calibration(str(folder), CHECKPOINT, 2, 64, 0)
    assert torch.equal(calibration.input_ids, packed(tokenizer, TEXTS, 0, 2, 64))


def test_chat_records_render_with_the_checkpoints_template(tmp_path, tokenizer):
    """A chat record (tool calls, tool responses, tools) from parquet becomes exactly the template's rendering."""
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tools=CHAT["tools"], tokenize=False)
    assert "<tool_call>\n<function=search>" in rendered and "<tool_response>\nLisbon hosts" in rendered
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"] + [separator_token_id(tokenizer, "test")]
    table = pa.Table.from_pylist([CHAT])
    pq.write_table(table, tmp_path / "chat.parquet")
    assert table.to_pylist()[0]["messages"][2]["tool_calls"][1]["function"]["arguments"]["city"] is None
    calibration = load_calibration(str(tmp_path / "chat.parquet"), CHECKPOINT, 1, len(ids), 0)
    assert calibration.input_ids[0].tolist() == ids
    assert "chat template (sha256" in calibration.source


def test_chat_records_with_tools_as_a_json_string(tmp_path, tokenizer):
    rendered = tokenizer.apply_chat_template(CHAT["messages"], tools=CHAT["tools"], tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"] + [separator_token_id(tokenizer, "test")]
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": CHAT["messages"], "tools": json.dumps(CHAT["tools"])}])
    assert load_calibration(str(data), CHECKPOINT, 1, len(ids), 0).input_ids[0].tolist() == ids


def test_hub_name_goes_to_datasets_load_dataset(tmp_path, tokenizer, monkeypatch):
    """A name that is no local path is loaded with datasets.load_dataset(name, split=, revision=); here the call
    is answered by datasets loading a local dataset directory, so the rest of the path runs for real."""
    import datasets

    repo = tmp_path / "hub-copy"
    (repo / "data").mkdir(parents=True)
    write_jsonl(repo / "data" / "train.jsonl", [{"code": text} for text in TEXTS])
    write_jsonl(repo / "data" / "test.jsonl", [{"code": "never used"}])
    real_load = datasets.load_dataset
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return real_load(str(repo), split=kwargs["split"], cache_dir=str(tmp_path / "cache"))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    calibration = load_calibration(
        "acme/code-sample", CHECKPOINT, 2, 60, 4, split="train", column="code", revision="v1"
    )
    assert calls == [("acme/code-sample", {"split": "train", "revision": "v1"})]
    assert torch.equal(calibration.input_ids, packed(tokenizer, TEXTS, 4, 2, 60))
    assert calibration.source.startswith("acme/code-sample@v1:train, column 'code'")


def test_unreachable_hub_dataset_is_a_clear_error():
    """Offline (HF_HUB_OFFLINE, as on a machine without network): a QtoolsError that names the dataset."""
    script = textwrap.dedent(
        """
        from pathlib import Path
        from qtools.calibration import load_calibration
        from qtools.errors import QtoolsError
        try:
            load_calibration("acme/no-such-calibration-set", Path("models/toy-qwen3-coder"), 4, 64, 0, split="train")
        except QtoolsError as exc:
            print(f"error: {exc}")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'kernels'}"}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("error: cannot load calibration dataset 'acme/no-such-calibration-set'")
    assert "split 'train'" in result.stdout and "local .jsonl or .parquet" in result.stdout
    assert "Traceback" not in result.stderr


def test_too_few_tokens_says_how_many_there_are(tmp_path, tokenizer):
    data = write_jsonl(tmp_path / "small.jsonl", [{"text": text} for text in TEXTS])
    total = token_count(tokenizer, TEXTS)
    with pytest.raises(QtoolsError, match=rf"has {total} tokens in 12 documents.*fewer than the 4 x {total} ="):
        load_calibration(str(data), CHECKPOINT, 4, total, 0)
    assert load_calibration(str(data), CHECKPOINT, 1, total, 0).tokens == total


def test_missing_column_lists_the_columns(tmp_path):
    data = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(QtoolsError, match="has none of the columns messages, text, content; its columns: prompt, comp"):
        load_calibration(str(data), CHECKPOINT, 1, 8, 0)
    with pytest.raises(QtoolsError, match="has no column 'body'; its columns: prompt, completion"):
        load_calibration(str(data), CHECKPOINT, 1, 8, 0, column="body")


def test_bad_specs_are_refused(tmp_path):
    with pytest.raises(QtoolsError, match="does not exist"):
        load_calibration(str(tmp_path / "missing.jsonl"), CHECKPOINT, 1, 8, 0)
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(QtoolsError, match=r"\.jsonl, \.json or \.parquet"):
        load_calibration(str(tmp_path / "notes.csv"), CHECKPOINT, 1, 8, 0)
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(QtoolsError, match=r"broken\.jsonl:2: not a JSON object"):
        load_calibration(str(tmp_path / "broken.jsonl"), CHECKPOINT, 1, 8, 0)
    with pytest.raises(QtoolsError, match="samples >= 1 and seq_len >= 1"):
        load_calibration(None, CHECKPOINT, 0, 8, 0)
    with pytest.raises(QtoolsError, match="cannot load its tokenizer"):
        load_calibration(None, tmp_path, 1, 8, 0)


def test_hash_is_deterministic_and_sensitive(tmp_path):
    rows = [{"text": text} for text in TEXTS]
    first = load_calibration(str(write_jsonl(tmp_path / "a.jsonl", rows)), CHECKPOINT, 2, 40, 0)
    (tmp_path / "copy").mkdir()
    again = load_calibration(str(write_jsonl(tmp_path / "copy" / "a.jsonl", rows)), CHECKPOINT, 2, 40, 0)
    assert torch.equal(first.input_ids, again.input_ids) and first.sha256 == again.sha256
    other_seed = load_calibration(str(tmp_path / "a.jsonl"), CHECKPOINT, 2, 40, 1)
    assert not torch.equal(first.input_ids, other_seed.input_ids) and other_seed.sha256 != first.sha256
    edited = [dict(row) for row in rows]
    edited[0]["text"] = edited[0]["text"].replace("return", "yield")
    changed = load_calibration(str(write_jsonl(tmp_path / "b.jsonl", edited)), CHECKPOINT, 2, 40, 0)
    assert changed.sha256 != first.sha256
    shorter = load_calibration(str(tmp_path / "a.jsonl"), CHECKPOINT, 2, 39, 0)
    assert shorter.sha256 != first.sha256


def test_builtin_default_mixes_code_and_tool_conversations(tokenizer):
    calibration = load_calibration(None, CHECKPOINT, 8, 512, 0)
    assert calibration.input_ids.shape == (8, 512)
    again = load_calibration(None, CHECKPOINT, 8, 512, 0)
    assert torch.equal(calibration.input_ids, again.input_ids) and calibration.sha256 == again.sha256
    assert load_calibration(None, CHECKPOINT, 8, 512, 1).sha256 != calibration.sha256
    tool_call = tokenizer.convert_tokens_to_ids("<tool_call>")
    tool_response = tokenizer.convert_tokens_to_ids("<tool_response>")
    code = [text for _, text in calibration_code()]
    chat_tokens = torch.tensor(tokenizer.convert_tokens_to_ids(["<|im_start|>", "<tool_call>", "<tool_response>"]))
    code_rows = tool_rows = 0
    for row in calibration.input_ids:
        if torch.isin(row, chat_tokens).any():
            tool_rows += 1
        else:
            code_rows += 1
            separator = separator_token_id(tokenizer, "test")
            pieces = [tokenizer.decode(piece) for piece in split_at(row.tolist(), separator)]
            assert all(any(piece in text for text in code) for piece in pieces)
    assert code_rows == tool_rows == 4
    tool_ids = calibration.input_ids[(calibration.input_ids == tool_call).any(dim=1)]
    assert (tool_ids == tool_response).any()
    assert "4 rows; built-in tool-call conversations: 4 rows" in calibration.source


def test_builtin_code_is_disjoint_from_the_checks_heldout_code(tokenizer):
    from qtools.check.suites import heldout_code
    from qtools.toy.code_corpus import is_heldout

    names = [path.name for path in stdlib_dir().glob("*.py")]
    assert [is_check_heldout(name) for name in names] == [is_heldout(name) for name in names]
    heldout = heldout_code()
    used = calibration_code()
    assert heldout and not {item.name for item in heldout} & {name for name, _ in used}
    # The decoded default rows contain no passage of any held-out file (tool responses included).
    text = "".join(tokenizer.decode(row) for row in load_calibration(None, CHECKPOINT, 32, 1024, 0).input_ids)
    for item in heldout:
        lines = [line for line in item.text.splitlines() if len(line.strip()) > 40]
        assert not any(line in text for line in lines[:20]), item.name
