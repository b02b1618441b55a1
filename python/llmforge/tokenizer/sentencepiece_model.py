"""Reads a SentencePiece model file (tokenizer.model: a ModelProto in protobuf wire format) without
the sentencepiece or protobuf packages.

    info = read_sentencepiece_model("tokenizer.model")
    info["pieces"], info["scores"], info["types"]          # one entry per id
    info["trainer"]["model_type"], info["normalizer"]["add_dummy_prefix"], ...

Field numbers are those of sentencepiece_model.proto: ModelProto.pieces = 1 (piece = 1,
score = 2, type = 3), trainer_spec = 2 (model_type = 3, byte_fallback = 35, unk_id .. pad_id =
40..43), normalizer_spec = 3 (name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3,
remove_extra_whitespaces = 4, escape_whitespaces = 5). Unknown fields are skipped, as protobuf does.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

from .bpe import TokenizerError

_MAX_BYTES = 1 << 30

# (field number -> (name, kind, default)); kinds: "int" (varint), "sint" (int32 varint, may be
# negative), "bool", "str", "bytes"
_TRAINER = {3: ("model_type", "int", 1), 22: ("split_by_whitespace", "bool", True),
            24: ("treat_whitespace_as_suffix", "bool", False), 35: ("byte_fallback", "bool", False),
            40: ("unk_id", "sint", 0), 41: ("bos_id", "sint", 1), 42: ("eos_id", "sint", 2), 43: ("pad_id", "sint", -1)}
_NORMALIZER = {1: ("name", "str", ""), 2: ("precompiled_charsmap", "bytes", b""), 3: ("add_dummy_prefix", "bool", True),
               4: ("remove_extra_whitespaces", "bool", True), 5: ("escape_whitespaces", "bool", True)}


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise TokenizerError("truncated or malformed varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, pos: int, end: int):
    """(field number, wire type, value) of a message in buf[pos:end]; value: int for varint / fixed,
    (start, stop) for length-delimited."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise TokenizerError("field number 0")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
        elif wt == 1:
            if pos + 8 > end:
                raise TokenizerError("truncated 64-bit field")
            v, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise TokenizerError(f"field {num}: length {n} runs past the end of its message")
            v, pos = (pos, pos + n), pos + n
        elif wt == 5:
            if pos + 4 > end:
                raise TokenizerError("truncated 32-bit field")
            v, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise TokenizerError(f"field {num}: wire type {wt} is not used by SentencePiece models")
        yield num, wt, v


def _message(buf: bytes, span: tuple[int, int], spec: dict) -> dict:
    out = {name: default for name, _, default in spec.values()}
    for num, wt, v in _fields(buf, span[0], span[1]):
        if num not in spec:
            continue
        name, kind, _ = spec[num]
        if kind in ("str", "bytes"):
            if wt != 2:
                raise TokenizerError(f"{name}: expected a length-delimited field")
            raw = bytes(buf[v[0]:v[1]])
            out[name] = raw if kind == "bytes" else _utf8(raw, name)
        else:
            if wt != 0:
                raise TokenizerError(f"{name}: expected a varint")
            out[name] = bool(v) if kind == "bool" else (v - (1 << 64) if kind == "sint" and v >= 1 << 63 else v)
    return out


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{what}: not UTF-8 (byte {e.start})") from None


def read_sentencepiece_model(path: str | os.PathLike) -> dict:
    """{"pieces", "scores", "types", "trainer", "normalizer"} of a SentencePiece model file;
    TokenizerError naming the file when it is not one."""
    path = Path(path)
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise TokenizerError(f"{path}: {size} bytes is too large for a SentencePiece model")
    buf = path.read_bytes()
    try:
        pieces, scores, types = [], [], []
        trainer, normalizer = dict((n, d) for n, _, d in _TRAINER.values()), None
        for num, wt, v in _fields(buf, 0, len(buf)):
            if wt != 2 and num in (1, 2, 3):
                raise TokenizerError(f"field {num}: expected a message")
            if num == 1:
                piece, score, ty = None, 0.0, 1
                for n2, w2, v2 in _fields(buf, v[0], v[1]):
                    if n2 == 1 and w2 == 2:
                        piece = _utf8(bytes(buf[v2[0]:v2[1]]), f"piece {len(pieces)}")
                    elif n2 == 2 and w2 == 5:
                        score = struct.unpack("<f", v2.to_bytes(4, "little"))[0]
                    elif n2 == 3 and w2 == 0:
                        ty = v2
                if piece is None:
                    raise TokenizerError(f"piece {len(pieces)} has no text")
                pieces.append(piece)
                scores.append(score)
                types.append(ty)
            elif num == 2:
                trainer = _message(buf, v, _TRAINER)
            elif num == 3:
                normalizer = _message(buf, v, _NORMALIZER)
        if not pieces:
            raise TokenizerError("no pieces (not a SentencePiece model?)")
        if normalizer is None:
            normalizer = {n: d for n, _, d in _NORMALIZER.values()}
        return {"pieces": pieces, "scores": scores, "types": types, "trainer": trainer, "normalizer": normalizer}
    except TokenizerError as e:
        raise TokenizerError(f"{path}: {e}") from None
