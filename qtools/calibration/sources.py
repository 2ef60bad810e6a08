"""Read calibration records from where `--calibration` points: a local file or folder, or a Hub dataset.

- `.jsonl` (one JSON object a line) and `.json` (a list of objects, or one object of equal-length column lists)
  are read with the `json` module, so each record is exactly what the file holds;
- `.parquet` through pyarrow (what `datasets` stores on the Hub);
- a folder whose files are all `.jsonl`/`.json` (or all `.parquet`): their records, files in path order;
- any other folder: every file is one document (`{"text": ..., "path": ...}`), files in path order, hidden
  paths and files that are not UTF-8 text skipped;
- anything else is a Hub dataset name, loaded with `datasets.load_dataset(name, split=..., revision=...)`.

Arrow (parquet, Hub) unifies nested records into one schema, filling the keys a record lacks with null (a tool
call's `arguments`, a tool's `properties`); `Records.from_arrow` says so, and chat rendering drops those nulls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtools.errors import QtoolsError

RECORD_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class Records:
    """Calibration records: `rows` is indexable (a list, or a `datasets.Dataset`), `columns` their keys,
    `description` where they came from."""

    rows: Sequence[dict[str, Any]]
    columns: tuple[str, ...]
    description: str
    from_arrow: bool = False

    def __len__(self) -> int:
        return len(self.rows)


def _columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return tuple(seen)


def _json_rows(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QtoolsError(f"{path}: cannot read it as UTF-8 text ({exc})") from exc
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise QtoolsError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise QtoolsError(f"{path}: not JSON ({exc})") from exc
        if isinstance(data, dict) and data and all(isinstance(value, list) for value in data.values()):
            lengths = {len(value) for value in data.values()}
            if len(lengths) != 1:
                raise QtoolsError(f"{path}: a JSON object of columns needs equal-length lists")
            rows = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
        else:
            rows = data
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise QtoolsError(f"{path}: expected JSON objects (one per line in .jsonl, a list of them in .json)")
    return rows


def _parquet_rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types (ArrowInvalid, OSError) for a damaged file
        raise QtoolsError(f"{path}: cannot read it as parquet ({exc})") from exc


def _file_rows(path: Path) -> list[dict[str, Any]]:
    return _parquet_rows(path) if RECORD_SUFFIXES[path.suffix] == "parquet" else _json_rows(path)


def _visible_files(folder: Path) -> list[Path]:
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _text_documents(files: list[Path], folder: Path) -> Iterator[dict[str, Any]]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # binary files (images, archives) are not documents
        if text.strip() and "\x00" not in text:
            yield {"text": text, "path": str(path.relative_to(folder))}


def _folder_records(folder: Path) -> Records:
    files = _visible_files(folder)
    kinds = {RECORD_SUFFIXES.get(path.suffix) for path in files}
    if kinds in ({"json"}, {"parquet"}):
        rows = [row for path in files for row in _file_rows(path)]
        return Records(rows, _columns(rows), f"{folder} ({len(files)} files)", from_arrow=kinds == {"parquet"})
    rows = list(_text_documents(files, folder))
    if not rows:
        raise QtoolsError(f"{folder}: no text files in it (hidden paths and binary files are skipped)")
    return Records(rows, ("text", "path"), f"{folder} ({len(rows)} text files)")


def _hub_records(name: str, split: str, revision: str | None) -> Records:
    import datasets

    where = f"{name!r} (split {split!r}" + (f", revision {revision!r})" if revision else ")")
    try:
        dataset = datasets.load_dataset(name, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise QtoolsError(
            f"cannot load calibration dataset {where} with datasets.load_dataset: {type(exc).__name__}: {exc}. "
            "Check the name, split and revision; without network access, save the data as a local .jsonl or "
            ".parquet file and pass that path to --calibration"
        ) from exc
    if not isinstance(dataset, datasets.Dataset):
        raise QtoolsError(f"calibration dataset {where} is not one table ({type(dataset).__name__}): name a split")
    revision_text = f"@{revision}" if revision else ""
    return Records(dataset, tuple(dataset.column_names), f"{name}{revision_text}:{split}", from_arrow=True)


def read_records(spec: str, split: str = "train", revision: str | None = None) -> Records:
    """The records `spec` names (see the module docstring); QtoolsError when they cannot be read or are none."""
    path = Path(spec).expanduser()
    if path.is_dir():
        records = _folder_records(path)
    elif path.is_file():
        if path.suffix not in RECORD_SUFFIXES:
            raise QtoolsError(
                f"{path}: calibration files are .jsonl, .json or .parquet (or pass a folder of text files)"
            )
        rows = _file_rows(path)
        records = Records(rows, _columns(rows), str(path), from_arrow=path.suffix == ".parquet")
    elif path.suffix in RECORD_SUFFIXES or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise QtoolsError(f"calibration data {spec!r} does not exist (a local path, or a Hub name org/name)")
    else:
        records = _hub_records(spec, split, revision)
    if not len(records):
        raise QtoolsError(f"calibration data {records.description} holds no records")
    return records
