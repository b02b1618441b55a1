"""Robust readers for the formats people already have: JSONL, JSON, plain text.

    report = ReadReport()
    for rec in read_jsonl("chats.jsonl", on_error="skip", report=report): ...
    print(report)          # counts of records read and skipped, with the reasons

A bad record (truncated line, invalid JSON, invalid UTF-8, missing field) either
raises ``DataError`` naming the file and line (on_error="raise", the default) or is
skipped and counted in the report (on_error="skip"). Nothing is dropped silently.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator


class DataError(ValueError):
    """A record that cannot be read; the message names the file and line."""


@dataclass
class ReadReport:
    read: int = 0
    skipped: Counter = field(default_factory=Counter)   # reason -> count
    examples: list[str] = field(default_factory=list)   # first few skip messages

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(message)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        parts = [f"read {self.read}"] + [f"skipped {n} ({r})" for r, n in sorted(self.skipped.items())]
        return ", ".join(parts)


def _check_mode(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _problem(path, line_no, reason, detail, on_error, report):
    msg = f"{path}:{line_no}: {reason}: {detail}"
    if on_error == "raise":
        raise DataError(msg)
    if report is not None:
        report.skip(reason, msg)


def read_jsonl(path: str | os.PathLike, on_error: str = "raise", report: ReadReport | None = None,
               required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Yield one dict per non-empty line. `required` keys must be present in every record."""
    _check_mode(on_error)
    path = os.fspath(path)
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    truncated = not data.endswith(b"\n")
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _problem(path, i, "invalid UTF-8", f"byte {e.start}", on_error, report)
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            reason = "truncated record" if (truncated and i == len(lines)) else "invalid JSON"
            _problem(path, i, reason, e.msg, on_error, report)
            continue
        if not isinstance(rec, dict):
            _problem(path, i, "not an object", type(rec).__name__, on_error, report)
            continue
        missing = [k for k in required if k not in rec]
        if missing:
            _problem(path, i, "missing field", ", ".join(missing), on_error, report)
            continue
        if report is not None:
            report.read += 1
        yield rec


def read_json_records(path: str | os.PathLike, on_error: str = "raise", report: ReadReport | None = None,
                      required: tuple[str, ...] = ()) -> Iterator[dict]:
    """Records from a .jsonl file, or from a .json file holding a list of objects."""
    _check_mode(on_error)
    path = os.fspath(path)
    if path.endswith(".jsonl"):
        yield from read_jsonl(path, on_error, report, required)
        return
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: invalid UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if isinstance(data, dict):
        data = data.get("data", data.get("records"))
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records (or an object with 'data')")
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            _problem(path, where, "not an object", type(rec).__name__, on_error, report)
            continue
        missing = [k for k in required if k not in rec]
        if missing:
            _problem(path, where, "missing field", ", ".join(missing), on_error, report)
            continue
        if report is not None:
            report.read += 1
        yield rec


def read_text(path: str | os.PathLike, errors: str = "raise") -> str:
    """A UTF-8 text file. errors="replace" substitutes U+FFFD for invalid bytes instead of raising."""
    path = os.fspath(path)
    data = open(path, "rb").read()
    if not data:
        raise DataError(f"{path}: empty file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "replace":
            return data.decode("utf-8", errors="replace")
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 at byte {e.start}") from None


def write_jsonl(path: str | os.PathLike, records) -> int:
    """Write records atomically (temp file, then rename). Returns the count."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def get_field(rec: dict, key: str, kind: type, path: str, where: Any) -> Any:
    """rec[key] of the expected type, or DataError naming the file and record."""
    if key not in rec:
        raise DataError(f"{path}:{where}: missing field {key!r}")
    v = rec[key]
    if not isinstance(v, kind):
        raise DataError(f"{path}:{where}: field {key!r} should be {kind.__name__}, got {type(v).__name__}")
    return v
