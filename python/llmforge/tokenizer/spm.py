"""SentencePiece-style BPE tokenizers: Llama 2, Mistral v0.1-v0.3, Phi-3 (and Gemma's vocabulary form).

These spell spaces as U+2581 ("▁"), put one in front of the text, start each word from its
characters (an unknown character becomes its UTF-8 bytes as <0xXX> pieces, "byte
fallback") and merge pairs by rank. They come as a Hugging Face tokenizer.json with
``byte_fallback: true`` (read by ``Tokenizer.from_hf_json``, which hands them here) or as a
GGUF file with ``tokenizer.ggml.model = "llama"`` (pieces and scores: a pair merges when its
concatenation is a piece, higher score first, as SentencePiece and llama.cpp do).

    tok = Tokenizer.from_hf_json("Mistral-7B-v0.1/")      # -> SpmTokenizer
    tok.encode("Hello world", add_bos=True)                 # [1, 22557, 1526]
    tok.decode([1, 22557, 1526])                            # "<s> Hello world" (as transformers)

The merge loop is C++ (csrc/spm_bpe.h); this module does the parts around it the way
Hugging Face's ``tokenizers`` does: added tokens are matched in the raw text first (with
their lstrip/rstrip/single_word options), then each stretch of text between them is
normalised on its own (the legacy ``Prepend("▁") + Replace(" ", "▁")`` normaliser puts a "▁"
before every stretch; the ``Metaspace`` pre-tokenizer with ``prepend_scheme: "first"`` only
before the one at the start of the text, and not when it already starts with a space).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

from .. import _C
from .bpe import (TokenizerError, _AddedTokens, _check_format, _hf_adds_bos, _hf_merges, _hf_roles, _id_triples, _read_json, _reading,
                  _text_bytes, _threads, _write_json, no_gc)

META = "\u2581"
PREFIX_MODES = ("legacy", "always", "first", "never")
FORMAT = "llmforge-spm"
FORMAT_VERSION = 1

# GGUF token types (llama.cpp llama_token_type)
TT_NORMAL, TT_UNKNOWN, TT_CONTROL, TT_USER_DEFINED, TT_UNUSED, TT_BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# Rust's char::is_whitespace (Unicode White_Space), which Hugging Face's lstrip/rstrip use
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
      "\u2028\u2029\u202f\u205f\u3000"


class SpmTokenizer(_AddedTokens):
    """A SentencePiece-style BPE tokenizer (see the module docstring). Build one with
    Tokenizer.from_hf_json(), SpmTokenizer.from_gguf_metadata() or load()."""

    def __init__(self, pieces: Sequence[str], types: Sequence[int], merges: Sequence[tuple[int, int, int]] | None = None,
                 scores: Sequence[float] | None = None, added_tokens: Sequence[dict] = (), prefix: str = "legacy",
                 split: bool = False, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, unk_token: str | None = None, fuse_unk: bool = True,
                 strip_leading_space: bool = True):
        """pieces[id]: the piece text ("▁" for spaces; "<0xXX>" for byte pieces; an added token's content);
        types[id]: GGUF token type (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
        merges: (left, right, result) ids in rank order (Hugging Face), or None to merge by scores
        (SentencePiece / GGUF: any pair whose concatenation is a normal piece, higher score first).
        added_tokens: [{"id", "content", "special", "lstrip", "rstrip", "single_word", "normalized"}],
        matched in the text before normalisation. prefix: where a "▁" is put in front of text
        ("legacy": every stretch between added tokens; "always": the same, unless it starts with a
        space; "first": only at the start of the text, unless it starts with a space; "never").
        split: cut words before every "▁" (Metaspace split=true). strip_leading_space: decode()
        drops one leading space, as the tokenizers' decoders do."""
        if prefix not in PREFIX_MODES:
            raise TokenizerError(f"prefix must be one of {PREFIX_MODES}, got {prefix!r}")
        n = len(pieces)
        if n == 0:
            raise TokenizerError("the vocabulary is empty")
        if len(types) != n:
            raise TokenizerError(f"{len(types)} token types for {n} pieces")
        self._pieces = [str(p) for p in pieces]
        self._types = [int(t) for t in types]
        bad = [t for t in self._types if t not in (1, 2, 3, 4, 5, 6)]
        if bad:
            raise TokenizerError(f"unknown token type {bad[0]} (GGUF types are 1..6)")
        if scores is not None:
            if len(scores) != n:
                raise TokenizerError(f"{len(scores)} scores for {n} pieces")
            self._scores = [float(s) for s in scores]
            if any(s != s for s in self._scores):
                raise TokenizerError("a piece score is NaN")
        else:
            self._scores = None
        self.prefix, self.split, self.fuse_unk = prefix, bool(split), bool(fuse_unk)
        self.strip_leading_space = bool(strip_leading_space)

        byte_ids = [-1] * 256
        for i, (p, t) in enumerate(zip(self._pieces, self._types)):
            if t == TT_BYTE:
                m = _BYTE_PIECE.fullmatch(p)
                if not m:
                    raise TokenizerError(f"byte token {i} is {p!r}, not <0xXX>")
                if byte_ids[int(m.group(1), 16)] < 0:
                    byte_ids[int(m.group(1), 16)] = i
        self._added = []
        for a in added_tokens:
            tid, content = int(a["id"]), str(a["content"])
            if not 0 <= tid < n:
                raise TokenizerError(f"added token {content!r}: id {tid} out of range")
            if self._pieces[tid] != content:
                raise TokenizerError(f"added token {content!r}: id {tid} holds {self._pieces[tid]!r}")
            if not content:
                raise TokenizerError(f"added token {tid} is empty")
            self._added.append({"id": tid, "content": content, "special": bool(a.get("special", True)),
                                "lstrip": bool(a.get("lstrip", False)), "rstrip": bool(a.get("rstrip", False)),
                                "single_word": bool(a.get("single_word", False)),
                                "normalized": bool(a.get("normalized", False))})
        self._added_ids = {a["content"]: a["id"] for a in self._added}
        self._added_by_id = {a["id"]: a for a in self._added}
        if unk_token is not None and unk_token not in self._pieces:
            raise TokenizerError(f"unk_token {unk_token!r} is not a piece of the vocabulary")
        self.unk_token = unk_token
        unk_id = self._pieces.index(self.unk_token) if self.unk_token is not None else -1
        char_ok = [1 if t in (TT_NORMAL, TT_USER_DEFINED) and i not in self._added_by_id else 0
                   for i, t in enumerate(self._types)]
        if merges is None:
            if self._scores is None:
                raise TokenizerError("give merges (Hugging Face) or scores (SentencePiece / GGUF)")
            quads = self._merges_from_scores(char_ok)
            self._merges = None
        else:
            self._merges = [(int(a), int(b), int(r)) for a, b, r in merges]
            quads = [(a, b, r, k) for k, (a, b, r) in enumerate(self._merges)]
        self._num_pairs = len(quads)
        self._model = _C.SpmModel([p.encode("utf-8") for p in self._pieces], char_ok, quads,
                                  byte_ids if any(b >= 0 for b in byte_ids) else [], unk_id, self.fuse_unk)
        self._raw_re = self._added_re([a for a in self._added if not a["normalized"]], normalize=False)
        # "legacy" / "never" come from a normaliser, which runs before the normalized added tokens are
        # matched (on normalised text, their content normalised too); Metaspace runs after them
        self._norm_first = prefix in ("legacy", "never")
        self._norm_re = self._added_re([a for a in self._added if a["normalized"]], normalize=self._norm_first)
        self._bytes = [self._piece_bytes(i) for i in range(n)]
        self._index = None
        self.bos_token = self._role("bos", bos_token)
        self.eos_token = self._role("eos", eos_token)
        self.pad_token = self._role("pad", pad_token)

    def _merges_from_scores(self, char_ok: list[int]) -> list[tuple[int, int, int, int]]:
        """Every split (left, right) of a normal piece into two normal pieces, ranked by the piece's
        score (equal scores share a rank: leftmost first, as in llama.cpp)."""
        index = {}
        for i, p in enumerate(self._pieces):
            if char_ok[i]:
                index.setdefault(p, i)
        ranks = {s: k for k, s in enumerate(sorted({self._scores[i] for i in index.values()}, reverse=True))}
        out = []
        for p, i in index.items():
            if len(p) < 2:
                continue
            for cut in range(1, len(p)):
                a, b = index.get(p[:cut]), index.get(p[cut:])
                if a is not None and b is not None:
                    out.append((a, b, i, ranks[self._scores[i]]))
        out.sort(key=lambda q: (q[3], q[2], q[0]))
        return out

    def _added_re(self, added: list[dict], normalize: bool):
        if not added:
            return None
        names = {}
        for a in added:
            key = self._normalize(a["content"], 0) if normalize else a["content"]
            names.setdefault(key, a)
        alts = sorted(names, key=len, reverse=True)
        return re.compile("|".join(map(re.escape, alts))), names

    def _piece_bytes(self, i: int) -> bytes:
        t, p = self._types[i], self._pieces[i]
        if i in self._added_by_id:
            return p.encode("utf-8")
        if t == TT_BYTE:
            return bytes([int(p[3:5], 16)])
        return p.replace(META, " ").encode("utf-8")

    # ---- encode ----------------------------------------------------------------------
    def _normalize(self, s: str, offset: int) -> str:
        """What the legacy normaliser / Metaspace pre-tokenizer make of a stretch of text that starts at
        `offset` in the original text."""
        if not s:
            return s
        if self.prefix == "legacy":
            return META + s.replace(" ", META)
        s = s.replace(" ", META)
        if (self.prefix == "always" or (self.prefix == "first" and offset == 0)) and not s.startswith(META):
            s = META + s
        return s

    def _split_added(self, text: str, compiled, offset: int) -> list:
        """[(token id or None, text, offset)]: text cut at the added tokens of `compiled`."""
        if compiled is None or not text:
            return [(None, text, offset)]
        rx, names = compiled
        out, pos = [], 0
        for m in rx.finditer(text):
            a = names[m.group(0)]
            s, e = m.start(), m.end()
            if a["single_word"] and ((s > 0 and _word_char(text[s - 1])) or (e < len(text) and _word_char(text[e]))):
                continue
            if s < pos:
                continue
            if a["lstrip"]:
                while s > pos and text[s - 1] in _WS:
                    s -= 1
            if a["rstrip"]:
                while e < len(text) and text[e] in _WS:
                    e += 1
            if s > pos:
                out.append((None, text[pos:s], offset + pos))
            out.append((a["id"], text[s:e], offset + s))
            pos = e
        if pos < len(text):
            out.append((None, text[pos:], offset + pos))
        return out

    def _words(self, text: str, allow_special: bool) -> list:
        """The encoding plan of one text: token ids (added tokens) and normalised words (str)."""
        plan = []
        for tid, s, off in self._split_added(text, self._raw_re if allow_special else None, 0):
            if tid is not None:
                plan.append(tid)
                continue
            if self._norm_first:
                for tid2, w, _ in self._split_added(self._normalize(s, off), self._norm_re if allow_special else None,
                                                    off):
                    if tid2 is not None:
                        plan.append(tid2)
                    elif w:
                        plan.append(w)
            else:
                for tid2, w, off2 in self._split_added(s, self._norm_re if allow_special else None, off):
                    if tid2 is not None:
                        plan.append(tid2)
                    elif w:
                        plan.append(self._normalize(w, off2))
        return plan

    def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False,
               allow_special: bool = True) -> list[int]:
        """Token ids of text. Added tokens in the text become their ids unless allow_special=False."""
        return self._encode([text], add_bos, add_eos, allow_special, 1)[0]

    def encode_batch(self, texts: Sequence[str | bytes], add_bos: bool = False, add_eos: bool = False,
                     allow_special: bool = True, num_threads: int | None = None) -> list[list[int]]:
        """encode() of each text; the merge loops run on num_threads OpenMP threads (default:
        torch.get_num_threads()). The ids do not depend on the thread count."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_batch: expected a sequence of texts, got a single text (use encode)")
        return self._encode(texts, add_bos, add_eos, allow_special, _threads(num_threads))

    def _encode(self, texts, add_bos, add_eos, allow_special, num_threads) -> list[list[int]]:
        if add_bos and self.bos_id is None:
            raise ValueError("add_bos=True but this tokenizer has no bos token")
        if add_eos and self.eos_id is None:
            raise ValueError("add_eos=True but this tokenizer has no eos token")
        raw_rx = self._raw_re[0] if allow_special and self._raw_re is not None else None
        one_word = self._norm_re is None or not allow_special
        plans, words = [], []   # plan None: the text is one word
        for i, t in enumerate(texts):
            s = t if isinstance(t, str) else _text_bytes(t, f"text {i}").decode("utf-8", "surrogateescape")
            try:
                if one_word and (raw_rx is None or raw_rx.search(s) is None):
                    w = self._normalize(s, 0)
                    plans.append(None if w else [])
                    if w:
                        words.append(w.encode("utf-8", "surrogateescape"))
                    continue
                plan = self._words(s, allow_special)
                words.extend(item.encode("utf-8", "surrogateescape") for item in plan if isinstance(item, str))
            except UnicodeEncodeError as e:
                _text_bytes(s, f"text {i}")   # raises the lone-surrogate error
                raise ValueError(f"text {i}: {e}") from None
            plans.append(plan)
        with no_gc():
            encoded = iter(self._model.encode_batch(words, self.split, num_threads))
            out = []
            for plan in plans:
                if plan is None:
                    ids = next(encoded)
                else:
                    ids = []
                    for item in plan:
                        if isinstance(item, str):
                            ids.extend(next(encoded))
                        else:
                            ids.append(item)
                if add_bos:
                    ids.insert(0, self.bos_id)
                if add_eos:
                    ids.append(self.eos_id)
                out.append(ids)
        return out

    # ---- decode ----------------------------------------------------------------------
    def _ids(self, ids) -> list[int]:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)):
            raise TypeError("decode: expected a sequence of ints, got text")
        try:
            ids = list(ids)
        except TypeError:
            raise TypeError(f"decode: expected a sequence of ints, got {type(ids).__name__}") from None
        n = len(self._pieces)
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise TypeError(f"decode: ids must be ints, got {type(i).__name__}")
            if not 0 <= i < n:
                raise ValueError(f"decode: id {i} out of range [0, {n})")
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """The bytes of ids, concatenated: "▁" as a space (the leading one kept, so that pieces decoded
        one at a time join up), byte pieces as their byte, added tokens as their content."""
        ids = self._ids(ids)
        if skip_special:
            ids = [i for i in ids if not (i in self._added_by_id and self._added_by_id[i]["special"])]
        b = self._bytes
        return b"".join([b[i] for i in ids])

    def decode(self, ids: Iterable[int], errors: str = "replace", skip_special: bool = False) -> str:
        """Text of ids, as transformers' decode gives it (one leading space dropped where the
        tokenizer's decoder drops it)."""
        s = self.decode_bytes(ids, skip_special).decode("utf-8", errors)
        return s[1:] if self.strip_leading_space and s.startswith(" ") else s

    # ---- vocabulary ------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def pieces(self) -> list[str]:
        return list(self._pieces)

    @property
    def token_types(self) -> list[int]:
        return list(self._types)

    @property
    def num_merges(self) -> int:
        return self._num_pairs

    unk_id = property(lambda self: self._pieces.index(self.unk_token) if self.unk_token else None)

    def id_to_token(self, i: int) -> bytes:
        """The bytes token i stands for (decode_bytes([i]))."""
        if isinstance(i, bool) or not 0 <= int(i) < len(self._pieces):
            raise ValueError(f"id {i} out of range [0, {len(self._pieces)})")
        return self._bytes[int(i)]

    def token_to_id(self, token: str | bytes) -> int | None:
        """The id of an added token (by content) or of a piece (its text, "▁" for a space); None if absent."""
        if isinstance(token, bytes):
            token = token.decode("utf-8", "surrogateescape")
        if token in self._added_ids:
            return self._added_ids[token]
        if self._index is None:
            self._index = {}
            for i, p in enumerate(self._pieces):
                if i not in self._added_by_id:
                    self._index.setdefault(p, i)
        return self._index.get(token)

    def __repr__(self) -> str:
        return (f"SpmTokenizer(vocab_size={self.vocab_size}, pairs={self._num_pairs}, prefix={self.prefix!r}, "
                f"special={list(self.special_tokens)})")

    # ---- scores (GGUF) ------------------------------------------------------------------
    def scores(self) -> list[float]:
        """One score per piece for a SentencePiece / GGUF vocabulary: the given ones, or (from
        Hugging Face merges) minus the rank of the first merge that makes the piece, so that merging
        by score (llama.cpp) takes the pairs in the order of the merges."""
        if self._scores is not None:
            return list(self._scores)
        first = {}
        for k, (_, _, r) in enumerate(self._merges):
            first.setdefault(r, k)
        out = []
        for i, p in enumerate(self._pieces):
            if i in first:
                out.append(-float(first[i]))
            elif self._types[i] == TT_NORMAL and len(p) > 1:
                out.append(-1e9)   # a piece no merge makes: merge it last
            else:
                out.append(0.0)
        return out

    def gguf_metadata(self, add_bos: bool | None = None, add_eos: bool = False) -> dict:
        """The tokenizer.ggml.* keys for llama.cpp's SPM tokenizer ("llama" model). llama.cpp puts a
        space before the text after every control token ("legacy" prefix); "first" tokenizers
        (Mistral v0.3) differ from it there, as every GGUF of them does."""
        if self.split:
            raise TokenizerError("llama.cpp's SPM tokenizer has no Metaspace split=true mode")
        add_bos = self.add_bos_token if add_bos is None else add_bos
        md = {
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.tokens": list(self._pieces),
            "tokenizer.ggml.scores": self.scores(),
            "tokenizer.ggml.token_type": [(TT_CONTROL if self._added_by_id[i]["special"] else TT_USER_DEFINED)
                                          if i in self._added_by_id and self._types[i] not in (TT_UNKNOWN,)
                                          else self._types[i] for i in range(len(self._pieces))],
            "tokenizer.ggml.add_bos_token": bool(add_bos),
            "tokenizer.ggml.add_eos_token": bool(add_eos),
            "tokenizer.ggml.add_space_prefix": self.prefix != "never",
        }
        for key, tid in (("bos_token_id", self.bos_id), ("eos_token_id", self.eos_id),
                         ("padding_token_id", self.pad_id), ("unknown_token_id", self.unk_id)):
            if tid is not None:
                md[f"tokenizer.ggml.{key}"] = tid
        return md

    @classmethod
    def from_gguf_metadata(cls, md: dict) -> "SpmTokenizer":
        """The tokenizer of a GGUF file with tokenizer.ggml.model = "llama" (pieces, scores, types)."""
        try:
            pieces = list(md["tokenizer.ggml.tokens"])
            n = len(pieces)
            scores = md.get("tokenizer.ggml.scores")
            scores = [0.0] * n if scores is None else list(scores)
            types = md.get("tokenizer.ggml.token_type")
            types = [TT_NORMAL] * n if types is None else [int(t) for t in types]
            if len(scores) != n or len(types) != n:
                raise TokenizerError(f"{n} tokens but {len(scores)} scores and {len(types)} token types")
            added = [{"id": i, "content": pieces[i], "special": t == TT_CONTROL, "normalized": False}
                     for i, t in enumerate(types) if t in (TT_CONTROL, TT_USER_DEFINED)]
            names = {a["content"] for a in added}

            def role(key):
                i = md.get(f"tokenizer.ggml.{key}")
                if i is None or not 0 <= int(i) < n:
                    return None
                return pieces[int(i)] if pieces[int(i)] in names or key == "unknown_token_id" else None

            unk = role("unknown_token_id")
            if unk is None:
                unk = next((pieces[i] for i, t in enumerate(types) if t == TT_UNKNOWN), None)
            prefix = "legacy" if md.get("tokenizer.ggml.add_space_prefix", True) else "never"
            tok = cls(pieces, types, None, scores, added, prefix, False, role("bos_token_id"),
                      role("eos_token_id"), role("padding_token_id"), unk, fuse_unk=True,
                      strip_leading_space=prefix != "never")
            tok.add_bos_token = bool(md.get("tokenizer.ggml.add_bos_token", True)) and tok.bos_token is not None
            return tok
        except TokenizerError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"corrupt GGUF tokenizer metadata ({type(e).__name__}: {e})") from None

    @classmethod
    def from_sentencepiece(cls, path: str | os.PathLike) -> "SpmTokenizer":
        """A SentencePiece BPE model file (the tokenizer.model of Llama 2 / Mistral checkpoints), read
        without sentencepiece: pieces merge by score; control pieces are special added tokens and
        user-defined ones plain added tokens (as transformers' converter makes them)."""
        from .sentencepiece_model import read_sentencepiece_model

        info = read_sentencepiece_model(path)
        tr, nm = info["trainer"], info["normalizer"]
        kinds = {1: "unigram", 2: "BPE", 3: "word", 4: "char"}
        if tr["model_type"] != 2:
            raise TokenizerError(f"{path}: a {kinds.get(tr['model_type'], tr['model_type'])} SentencePiece model; "
                                 "only BPE ones (Llama 2, Mistral) are supported")
        if nm["precompiled_charsmap"] or nm["name"] not in ("identity", ""):
            raise TokenizerError(f"{path}: normalization rule {nm['name']!r} is not supported (only identity, "
                                 "as Llama 2 and Mistral use)")
        if nm["remove_extra_whitespaces"] or not nm["escape_whitespaces"] or tr["treat_whitespace_as_suffix"]:
            raise TokenizerError(f"{path}: remove_extra_whitespaces, escape_whitespaces=false and "
                                 "treat_whitespace_as_suffix are not supported")
        pieces, types = info["pieces"], info["types"]
        added = [{"id": i, "content": p, "special": t == TT_CONTROL, "normalized": False}
                 for i, (p, t) in enumerate(zip(pieces, types)) if t in (TT_CONTROL, TT_USER_DEFINED)]
        names = {a["content"] for a in added}

        def piece(i, any_piece=False):
            return pieces[i] if 0 <= i < len(pieces) and (any_piece or pieces[i] in names) else None

        try:
            tok = cls(pieces, types, None, info["scores"], added, "legacy" if nm["add_dummy_prefix"] else "never",
                      False, piece(tr["bos_id"]), piece(tr["eos_id"]), piece(tr["pad_id"]),
                      piece(tr["unk_id"], True), fuse_unk=True, strip_leading_space=nm["add_dummy_prefix"])
            tok.add_bos_token = tok.bos_token is not None
            return tok
        except ValueError as e:
            raise TokenizerError(f"{path}: {e}") from None

    # ---- Hugging Face tokenizer.json ---------------------------------------------------
    @classmethod
    def _from_hf_dict(cls, d: dict, roles: dict, cfg: dict) -> "SpmTokenizer":
        m = d["model"]
        if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix") or m.get("dropout") \
                or m.get("ignore_merges"):
            raise TokenizerError("SentencePiece-style BPE with subword prefixes/suffixes, dropout or "
                                 "ignore_merges is not supported")
        prefix, split = _hf_prefix(d.get("normalizer"), d.get("pre_tokenizer"))
        strip = _hf_strips(d.get("decoder"))
        vocab = m["vocab"]
        if not isinstance(vocab, dict):
            raise TokenizerError("model.vocab must be an object")
        added_by_id = {}
        for a in d.get("added_tokens") or []:
            added_by_id[int(a["id"])] = {"id": int(a["id"]), "content": str(a["content"]),
                                         "special": bool(a.get("special", False)),
                                         "lstrip": bool(a.get("lstrip", False)), "rstrip": bool(a.get("rstrip", False)),
                                         "single_word": bool(a.get("single_word", False)),
                                         "normalized": bool(a.get("normalized", False))}
        n = max([-1] + [int(i) for i in vocab.values()] + list(added_by_id)) + 1
        pieces: list[str | None] = [None] * n
        for s, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or i < 0:
                raise TokenizerError(f"vocab entry {s!r}: bad id {i!r}")
            if pieces[i] is not None:
                raise TokenizerError(f"vocab id {i} is used twice")
            pieces[i] = s
        for i, a in added_by_id.items():
            if pieces[i] is not None and pieces[i] != a["content"]:
                raise TokenizerError(f"added token {a['content']!r}: id {i} is {pieces[i]!r} in the vocabulary")
            pieces[i] = a["content"]
        missing = [i for i, p in enumerate(pieces) if p is None]
        if missing:
            raise TokenizerError(f"token ids are not contiguous: {len(missing)} missing, first {missing[0]}")
        unk = m.get("unk_token")
        if unk is not None and unk not in vocab:
            raise TokenizerError(f"unk_token {unk!r} is not in the vocabulary")
        types = []
        for i, p in enumerate(pieces):
            if p == unk:
                types.append(TT_UNKNOWN)
            elif i in added_by_id:
                types.append(TT_CONTROL if added_by_id[i]["special"] else TT_USER_DEFINED)
            elif m.get("byte_fallback") and _BYTE_PIECE.fullmatch(p) and p[3:5].upper() == p[3:5]:
                types.append(TT_BYTE)
            else:
                types.append(TT_NORMAL)
        merges = _hf_merges(m.get("merges"), vocab)
        chosen = _hf_roles(roles, cfg, {a["content"] for a in added_by_id.values()})
        tok = cls(pieces, types, merges, None, sorted(added_by_id.values(), key=lambda a: a["id"]), prefix, split,
                  chosen["bos"], chosen["eos"], chosen["pad"], unk, bool(m.get("fuse_unk", False)), strip)
        tok.add_bos_token = _hf_adds_bos(d, cfg, tok.bos_token, tok.bos_token is not None)   # LlamaTokenizer: yes
        return tok

    def to_hf_dict(self) -> dict:
        """A tokenizer.json that Hugging Face's tokenizers reads to the same ids (merges from the
        scores where the tokenizer came from a GGUF file)."""
        merges = self._merges
        if merges is None:
            char_ok = [1 if t in (TT_NORMAL, TT_USER_DEFINED) and i not in self._added_by_id else 0
                       for i, t in enumerate(self._types)]
            merges = [(a, b, r) for a, b, r, _ in self._merges_from_scores(char_ok)]
        vocab = {}
        for i, p in enumerate(self._pieces):
            if p in vocab:
                raise TokenizerError(f"piece {i} ({p!r}) repeats piece {vocab[p]}")
            vocab[p] = i
        if self.prefix == "legacy":
            normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": META},
                                                              {"type": "Replace", "pattern": {"String": " "},
                                                               "content": META}]}
            pre = None
        elif self.prefix == "never" and not self.split:
            normalizer, pre = {"type": "Replace", "pattern": {"String": " "}, "content": META}, None
        else:
            normalizer = None
            pre = {"type": "Metaspace", "replacement": META, "prepend_scheme": self.prefix, "split": self.split}
        decoders = [{"type": "Replace", "pattern": {"String": META}, "content": " "}, {"type": "ByteFallback"},
                    {"type": "Fuse"}]
        if self.strip_leading_space:
            decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": a["id"], "content": a["content"], "single_word": a["single_word"],
                              "lstrip": a["lstrip"], "rstrip": a["rstrip"], "normalized": a["normalized"],
                              "special": a["special"]} for a in self._added],
            "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": None, "unk_token": self.unk_token, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": self.fuse_unk, "byte_fallback": True,
                      "ignore_merges": False, "vocab": vocab,
                      "merges": [[self._pieces[a], self._pieces[b]] for a, b, _ in merges]},
        }

    def _hf_config(self) -> dict:
        return {"legacy": self.prefix == "legacy", "add_bos_token": self.add_bos_token}

    # ---- own format --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "pieces": list(self._pieces), "types": list(self._types),
                "merges": None if self._merges is None else [list(m) for m in self._merges],
                "scores": self._scores, "added_tokens": self.added_tokens, "prefix": self.prefix,
                "split": self.split, "fuse_unk": self.fuse_unk, "strip_leading_space": self.strip_leading_space,
                "roles": {"bos": self.bos_token, "eos": self.eos_token, "pad": self.pad_token,
                          "unk": self.unk_token}, "add_bos_token": self.add_bos_token}

    @classmethod
    def from_dict(cls, d: dict, source: str = "tokenizer") -> "SpmTokenizer":
        with _reading(source, "llmforge tokenizer"):
            _check_format(d, FORMAT, FORMAT_VERSION, "an llmforge SentencePiece-style tokenizer")
            pieces, types = d["pieces"], d["types"]
            if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
                raise TokenizerError("pieces must be a list of strings")
            merges = d.get("merges")
            merges = None if merges is None else _id_triples(merges)
            roles = d.get("roles") or {}
            tok = cls(pieces, types, merges, d.get("scores"), d.get("added_tokens") or [], d.get("prefix", "legacy"),
                      bool(d.get("split", False)), roles.get("bos"), roles.get("eos"), roles.get("pad"),
                      roles.get("unk"), bool(d.get("fuse_unk", True)), bool(d.get("strip_leading_space", True)))
            tok.add_bos_token = bool(d.get("add_bos_token", tok.bos_token is not None))
            return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write the own format (JSON), atomically; Tokenizer.load() and SpmTokenizer.load() read it."""
        _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpmTokenizer":
        return cls.from_dict(_read_json(Path(path)), str(path))


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _is_replace_space(n) -> bool:
    return (isinstance(n, dict) and n.get("type") == "Replace" and (n.get("pattern") or {}).get("String") == " "
            and n.get("content") == META)


def _is_split_on_space(p) -> bool:
    """A Split on the string " " (Gemma's tokenizer.json since transformers' GemmaConverter): after the
    Replace(' ', '▁') normaliser the text holds no space, so it never splits."""
    return (isinstance(p, dict) and p.get("type") == "Split" and (p.get("pattern") or {}).get("String") == " "
            and not p.get("invert", False))


def _hf_prefix(norm, pre) -> tuple[str, bool]:
    """(prefix mode, split) from a tokenizer.json's normalizer and pre_tokenizer, or TokenizerError."""
    if norm is not None:
        parts = norm.get("normalizers") if isinstance(norm, dict) and norm.get("type") == "Sequence" else [norm]
        parts = parts or []
        prepends = [p for p in parts if isinstance(p, dict) and p.get("type") == "Prepend"]
        replaces = [p for p in parts if _is_replace_space(p)]
        if len(replaces) != 1 or len(prepends) > 1 or len(prepends) + len(replaces) != len(parts) \
                or (prepends and prepends[0].get("prepend") != META):
            raise TokenizerError(f"unsupported normalizer {json.dumps(norm)[:200]} (supported: Prepend('▁') + "
                                 "Replace(' ', '▁'), or Replace(' ', '▁') alone)")
        if pre is not None and not _is_split_on_space(pre):
            raise TokenizerError(f"unsupported pre_tokenizer {json.dumps(pre)[:200]} after a normalizer")
        return ("legacy" if prepends else "never"), False
    if isinstance(pre, dict) and pre.get("type") == "Metaspace" and pre.get("replacement", META) == META:
        scheme = pre.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if pre.get("add_prefix_space", True) else "never"
        if scheme not in ("always", "first", "never"):
            raise TokenizerError(f"unsupported Metaspace prepend_scheme {scheme!r}")
        return scheme, bool(pre.get("split", True))
    raise TokenizerError(f"unsupported normalizer/pre_tokenizer for a SentencePiece-style BPE "
                         f"({json.dumps(norm)[:100]} / {json.dumps(pre)[:100]})")


def _hf_strips(dec) -> bool:
    """Whether a tokenizer.json decoder drops one leading space (Strip(start=1) or Metaspace)."""
    if dec is None:
        return False
    parts = dec.get("decoders") if dec.get("type") == "Sequence" else [dec]
    for p in parts or []:
        if p.get("type") == "Strip" and p.get("content", " ") == " " and int(p.get("start", 0)) >= 1:
            return True
        if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never" \
                and p.get("add_prefix_space", True):
            return True
    return False
