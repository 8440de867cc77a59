"""Training records: reading JSONL / JSON / Parquet, importing the release formats, schema validation.

Normalised SFT record (what the pipeline consumes):
    {"prompt": str | [chat messages], "response": str, "loss_type": "ce" | "ul", "weight": float, ...}
Accepted input forms (`format="auto"` picks by the fields of each record):
    sft       {"prompt", "response", "loss_type"?: "ce"|"ul", "weight"?, "answer"?}
    alpaca    {"instruction", "input"?, "output", "loss_type"?: 0|1}          (the OXA release; 1 = UL)
    messages  {"messages": [..., {"role": "assistant", "content"}]}             (chat form)
              or {"prompt": [messages], "target": [{"role": "assistant", ...}]} (the CurioSFT release)
Every error names the file and the line (JSONL) or row (Parquet) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from exploresft_jax.data.jsonl import RecordError, iter_jsonl

FORMATS = ("auto", "sft", "alpaca", "messages")


def iter_raw(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(location 'file:line' or 'file:row N', record) for .jsonl, .json (a list) and .parquet files."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise RecordError(f"{path}: cannot read Parquet ({e})") from None
        for i, rec in enumerate(table.to_pylist()):
            yield f"{path}:row {i}", rec
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise RecordError(f"{path}: expected a JSON list of records")
        for i, rec in enumerate(data):
            if not isinstance(rec, dict):
                raise RecordError(f"{path}:item {i}: expected a JSON object")
            yield f"{path}:item {i}", rec
    else:
        for line, rec in iter_jsonl(path):
            yield f"{path}:{line}", rec


def detect_format(rec: dict) -> str:
    if "response" in rec:
        return "sft"
    if "output" in rec or "instruction" in rec:
        return "alpaca"
    if "messages" in rec or "target" in rec:
        return "messages"
    if "prompt" in rec:
        return "sft"  # and it will be reported as missing its 'response'
    return "unknown"


def _messages(value, where: str, field: str) -> list[dict]:
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise RecordError(f"{where}: field {field!r} must be a list of {{'role', 'content'}} messages")
    if not value:
        raise RecordError(f"{where}: field {field!r} is an empty list of messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _loss_type(value, where: str) -> str:
    if value in (None, "ce", 0, "0", False):
        return "ce"
    if value in ("ul", 1, "1", True):
        return "ul"
    raise RecordError(f"{where}: field 'loss_type' must be 'ce'|'ul' (or 0|1), got {value!r}")


def normalize(rec: dict, where: str, fmt: str = "auto") -> dict:
    """One input record -> the normalised SFT record; RecordError naming `where` on bad input."""
    if fmt not in FORMATS:
        raise ValueError(f"data.format={fmt!r}; expected one of {FORMATS}")
    kind = detect_format(rec) if fmt == "auto" else fmt
    extra = {k: v for k, v in rec.items() if k in ("answer", "id", "ppl", "source")}
    if kind == "sft":
        prompt = rec.get("prompt")
        if prompt is None:
            raise RecordError(f"{where}: missing field 'prompt'")
        if not isinstance(prompt, str):
            prompt = _messages(prompt, where, "prompt")
        if "response" not in rec:
            raise RecordError(f"{where}: missing field 'response'")
        response = rec["response"]
        if not isinstance(response, str):
            raise RecordError(f"{where}: field 'response' must be a string, got {type(response).__name__}")
        out = {"prompt": prompt, "response": response, "loss_type": _loss_type(rec.get("loss_type"), where)}
    elif kind == "alpaca":
        inst, output = rec.get("instruction"), rec.get("output")
        if not isinstance(inst, str) or not isinstance(output, str):
            raise RecordError(f"{where}: Alpaca records need string fields 'instruction' and 'output'")
        inp = rec.get("input") or ""
        prompt = inst if not inp else f"{inst}\n{inp}"
        out = {"prompt": prompt, "response": output, "loss_type": _loss_type(rec.get("loss_type"), where)}
    elif kind == "messages":
        if "messages" in rec:
            msgs = _messages(rec["messages"], where, "messages")
        else:
            msgs = _messages(rec.get("prompt"), where, "prompt") + _messages(rec["target"], where, "target")
        if not msgs or msgs[-1]["role"] != "assistant":
            raise RecordError(f"{where}: the last message must be the assistant's response")
        out = {"prompt": msgs[:-1], "response": msgs[-1]["content"],
               "loss_type": _loss_type(rec.get("loss_type"), where)}
        gt = rec.get("reward_model")
        if isinstance(gt, dict) and "ground_truth" in gt:
            extra.setdefault("answer", gt["ground_truth"])
    else:
        raise RecordError(f"{where}: cannot tell the record format from fields {sorted(rec)} "
                          "(expected prompt/response, instruction/output or messages)")
    weight = rec.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
        raise RecordError(f"{where}: field 'weight' must be a non-negative number, got {weight!r}")
    out["weight"] = float(weight)
    out.update(extra)
    return out


def load_records(paths, fmt: str = "auto") -> list[dict]:
    """All records of all files, normalised, in file order. Raises RecordError at the first bad record."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for path in paths:
        for where, rec in iter_raw(path):
            out.append(normalize(rec, where, fmt))
    if not out:
        raise RecordError(f"no records in {[str(p) for p in paths]}")
    return out
