"""Readers: good files, and every kind of broken file -> error naming file and line, or a counted skip."""
from __future__ import annotations

import json

import pytest

from llmforge.data.io import DataError, ReadReport, read_json_records, read_jsonl, read_text, write_jsonl


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_read_good_jsonl(tmp_path):
    recs = [{"a": i, "t": "héllo 世界"} for i in range(5)]
    p = tmp_path / "x.jsonl"
    assert write_jsonl(p, recs) == 5
    assert list(read_jsonl(p)) == recs


@pytest.mark.parametrize("data,reason,line", [
    (b'{"a": 1}\n{"a": 2\n', "truncated record", 2),          # last line cut off, no newline... with newline
    (b'{"a": 1}\n{"a": 2', "truncated record", 2),
    (b'{"a": 1}\nnot json\n{"a": 3}\n', "invalid JSON", 2),
    (b'{"a": 1}\n{"a": "\xff\xfe"}\n', "invalid UTF-8", 2),
    (b'{"a": 1}\n[1, 2]\n', "not an object", 2),
])
def test_broken_jsonl_raises_with_file_and_line(tmp_path, data, reason, line):
    p = _write(tmp_path, "bad.jsonl", data)
    if reason == "truncated record" and data.endswith(b"\n"):
        reason = "invalid JSON"  # a complete last line that is not JSON is not truncation
    with pytest.raises(DataError, match=rf"bad.jsonl:{line}: {reason}"):
        list(read_jsonl(p))


def test_skip_mode_counts_every_bad_record(tmp_path):
    p = _write(tmp_path, "mixed.jsonl", b'{"a": 1}\nnope\n{"b": 2}\n{"a": "\xff"}\n{"a": 5}\n{"a": 6')
    rep = ReadReport()
    got = list(read_jsonl(p, on_error="skip", report=rep, required=("a",)))
    assert got == [{"a": 1}, {"a": 5}]
    assert rep.read == 2
    assert rep.skipped == {"invalid JSON": 1, "missing field": 1, "invalid UTF-8": 1, "truncated record": 1}
    assert rep.n_skipped == 4 and "mixed.jsonl:2" in rep.examples[0]


def test_missing_field_raises(tmp_path):
    p = _write(tmp_path, "m.jsonl", b'{"a": 1}\n{"b": 1}\n')
    with pytest.raises(DataError, match="m.jsonl:2: missing field: a"):
        list(read_jsonl(p, required=("a",)))


def test_empty_files_raise(tmp_path):
    for name in ("e.jsonl", "e.json", "e.txt"):
        p = _write(tmp_path, name, b"")
        with pytest.raises(DataError, match="empty file"):
            list(read_json_records(p)) if name != "e.txt" else read_text(p)


def test_json_list_and_bad_mode(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps([{"x": 1}, 3, {"x": 2}]))
    rep = ReadReport()
    assert list(read_json_records(p, on_error="skip", report=rep)) == [{"x": 1}, {"x": 2}]
    assert rep.skipped == {"not an object": 1}
    with pytest.raises(DataError, match="record 1"):
        list(read_json_records(p))
    with pytest.raises(ValueError, match="on_error"):
        list(read_jsonl(p, on_error="ignore"))
    q = _write(tmp_path, "broken.json", b'[{"x": 1},\n {"x": ')
    with pytest.raises(DataError, match="broken.json:2: invalid JSON"):
        list(read_json_records(q))


def test_read_text_invalid_utf8(tmp_path):
    p = _write(tmp_path, "t.txt", "line one\nline two\n".encode() + b"\xc3\x28 bad\n")
    with pytest.raises(DataError, match="t.txt:3: invalid UTF-8"):
        read_text(p)
    assert "\ufffd" in read_text(p, errors="replace")
