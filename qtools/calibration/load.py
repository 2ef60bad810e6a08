"""`load_calibration`: the calibration set for a checkpoint, from a spec (local data, Hub dataset or built-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtools.calibration import CalibrationSet
from qtools.calibration.builtin import builtin_rows
from qtools.calibration.documents import document_text, pick_column
from qtools.calibration.packing import calibration_sha256, pack_documents, shuffled
from qtools.calibration.sources import read_records
from qtools.chat import chat_template_sha256
from qtools.errors import QtoolsError


def load_tokenizer(checkpoint_dir: Path) -> Any:
    """The checkpoint's tokenizer (and chat template) via `transformers.AutoTokenizer`; QtoolsError without one."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(checkpoint_dir))
    except Exception as exc:  # transformers raises OSError, ValueError or KeyError for a missing/odd tokenizer
        raise QtoolsError(
            f"{checkpoint_dir}: cannot load its tokenizer with transformers.AutoTokenizer ({type(exc).__name__}: "
            f"{exc}); calibration text is tokenised with the checkpoint's own tokenizer, so copy tokenizer.json and "
            "tokenizer_config.json into the checkpoint"
        ) from exc


def _template_note(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return f"chat rendered with the checkpoint's chat template (sha256 {chat_template_sha256(template)[:16]})"
    return "chat rendered in the built-in Qwen3-Coder format (the checkpoint has no chat template)"


def load_calibration(
    spec: str | None,
    checkpoint_dir: Path,
    samples: int,
    seq_len: int,
    seed: int,
    *,
    split: str = "train",
    column: str | None = None,
    revision: str | None = None,
) -> CalibrationSet:
    """`samples` rows of exactly `seq_len` tokens of the checkpoint's tokenizer: `CalibrationSet.input_ids` int64
    [samples, seq_len].

    `spec` None is the built-in offline mix (`qtools.calibration.builtin`); otherwise a local `.jsonl`/`.json`/
    `.parquet` file, a folder of those or of text files, or a Hub dataset name (`split`, `revision`), read by
    `qtools.calibration.sources`. Each record's text is its `column` (default: `messages`, else `text`, else
    `content`); chat records are rendered with the checkpoint's chat template. Documents are shuffled with `seed`,
    joined with `<|endoftext|>` and cut into rows (`qtools.calibration.packing` says why). `sha256` covers the
    token ids, the spec's identity and the seed. QtoolsError for a missing column (the columns are listed), data
    too small for samples * seq_len (its token count is given), an unreadable source or a checkpoint without a
    tokenizer.
    """
    if samples < 1 or seq_len < 1:
        raise QtoolsError(f"calibration needs samples >= 1 and seq_len >= 1, got {samples} and {seq_len}")
    checkpoint_dir = Path(checkpoint_dir)
    if spec is None:
        tokenizer = load_tokenizer(checkpoint_dir)
        input_ids, source = builtin_rows(tokenizer, samples, seq_len, seed)
        identity = "built-in"
    else:
        # The data is read and its column checked before the tokenizer loads: bad input fails first and fast.
        records = read_records(spec, split, revision)
        chosen = pick_column(records, column)
        tokenizer = load_tokenizer(checkpoint_dir)
        text_of = document_text(records, chosen, tokenizer)
        texts = (text_of(index) for index in shuffled(len(records), seed))
        input_ids = pack_documents(texts, tokenizer, samples, seq_len, records.description)
        local = Path(spec).expanduser().exists()
        identity = f"local:{Path(spec).name}" if local else f"hub:{spec}@{revision or 'default'}:{split}"
        identity += f":{chosen}"
        source = f"{records.description}, column {chosen!r}, {len(records)} records"
    if spec is None or isinstance(records.rows[0].get(chosen), list):
        source += f"; {_template_note(tokenizer)}"
    source += f"; seed {seed}"
    sha256 = calibration_sha256(input_ids, {"spec": identity, "seed": seed})
    return CalibrationSet(input_ids=input_ids, sha256=sha256, source=source)
