"""JSONL reading and writing with errors that name the file and line, and writes that never leave half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class RecordError(ValueError):
    """A malformed input record; the message names the file, the line and the field."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yields (line_number, record) for every non-blank line; raises RecordError on bad JSON or a non-object."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise RecordError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            yield n, rec


def read_jsonl(path: str | Path) -> list[dict]:
    return [rec for _, rec in iter_jsonl(path)]


def require_field(rec: dict, field: str, types: type | tuple[type, ...], where: str) -> Any:
    """rec[field] if present and of the given type(s); else RecordError naming `where` (file:line) and field."""
    if field not in rec:
        raise RecordError(f"{where}: missing field {field!r} (fields: {sorted(rec)})")
    value = rec[field]
    if not isinstance(value, types):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise RecordError(f"{where}: field {field!r} must be {names}, got {type(value).__name__}")
    return value


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Writes records to a temporary file beside `path`, then renames it: a crash never truncates old output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
