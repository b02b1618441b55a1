"""Byte-level BPE tokenizer: train, encode/decode, save/load, Hugging Face tokenizer.json, GGUF metadata.

The work is done in C++ (csrc/pretokenize.h: the GPT-2, Llama 3 and Qwen2 / Qwen3
pre-tokenizers written out by hand; csrc/bpe.h: the model, its cache and the trainer).
This module handles input types, files, formats and the optional NFC normalizer (Qwen2 /
Qwen3 tokenizer.json files carry one).

    tok = Tokenizer.train("corpus.txt", vocab_size=8192)         # a path, a list of paths,
    tok = Tokenizer.train(iter_of_texts, vocab_size=8192)        # or an iterable of str/bytes
    ids = tok.encode("Hello", add_bos=True); text = tok.decode(ids)

Ids: 0..255 are the bytes, then the merged tokens in order of creation, then the
special tokens. Text is bytes underneath: encode() takes str or bytes (a str with
lone surrogates from errors="surrogateescape" is encoded back to its raw bytes), and
decode(ids, errors="surrogateescape") / decode_bytes(ids) return exactly what was
encoded, valid UTF-8 or not.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from .. import _C

# The pre-tokenizer regex (Hugging Face ByteLevel(use_regex=True) uses exactly this one).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's and Qwen2 / Qwen3's (digits one at a time), as their tokenizer.json Split pre-tokenizers
# spell them (csrc/pretokenize.h implements them by hand)
LLAMA3_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                  r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
PATTERNS = {"gpt2": GPT2_PATTERN, "llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}
NORMALIZERS = (None, "NFC")

# The tokenizer.ggml.pre name llama.cpp knows for each pattern. llama.cpp src/llama-vocab.cpp
# (llama_vocab::impl::load): `tokenizer_pre == "gpt-2"` -> LLAMA_VOCAB_PRE_TYPE_GPT2, whose regex
# is the GPT-2 one above ("'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
# with the final \s+ applied by its custom splitter in src/unicode.cpp).
LLAMA_CPP_PRE = {"gpt2": "gpt-2", "llama3": "llama-bpe", "qwen2": "qwen2"}

DEFAULT_SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
_DEFAULT_ROLES = {"bos": "<|bos|>", "eos": "<|eos|>", "pad": "<|pad|>"}
_ROLE_GUESSES = {  # used when a tokenizer.json comes without roles
    "bos": ("<|bos|>", "<|begin_of_text|>", "<s>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("<|eos|>", "<|end_of_text|>", "</s>", "<|endoftext|>"),
    "pad": ("<|pad|>", "<pad>", "[PAD]"),
}
FORMAT = "llmforge-bpe"
FORMAT_VERSION = 1
_AUTO = object()

# GGUF token types (gguf-py constants.TokenType / llama.cpp llama_token_type)
_TT_NORMAL, _TT_CONTROL, _TT_USER_DEFINED = 1, 3, 4


class TokenizerError(ValueError):
    """A tokenizer file or argument that cannot be used (a ValueError)."""


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map used for vocabulary strings in tokenizer.json and GGUF."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@functools.lru_cache(maxsize=None)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _to_unicode(b: bytes) -> str:
    m = bytes_to_unicode()
    return "".join(m[x] for x in b)


def _from_unicode(s: str, what: str) -> bytes:
    m = _unicode_to_bytes()
    try:
        return bytes(m[c] for c in s)
    except KeyError as e:
        raise TokenizerError(f"{what}: {s!r} is not a byte-level token string (character {e.args[0]!r})") from None


def _text_bytes(text, what: str = "text") -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            try:  # lone surrogates U+DC80..U+DCFF stand for raw bytes (errors="surrogateescape")
                return text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError as e:
                raise ValueError(f"{what}: lone surrogate {text[e.start]!r} at index {e.start} cannot be encoded "
                                 "(only U+DC80..U+DCFF, from errors='surrogateescape', stand for bytes)") from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"{what}: expected str or bytes, got {type(text).__name__}")


def _hf_merges(raw, vocab: dict) -> list[tuple[int, int, int]]:
    """(left, right, result) ids of a tokenizer.json's merges ("a b" strings or [a, b] pairs)."""
    index = {}
    for s, i in vocab.items():
        index.setdefault(s, i)
    merges = []
    for k, mg in enumerate(raw or []):
        parts = mg.split(" ") if isinstance(mg, str) else mg if isinstance(mg, list) else None
        if not parts or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise TokenizerError(f"merge {k} {mg!r} is not a pair of tokens")
        a, b = parts
        if a not in index or b not in index or a + b not in index:
            raise TokenizerError(f"merge {k} {mg!r} uses a token missing from the vocabulary")
        merges.append((index[a], index[b], index[a + b]))
    return merges


def _hf_roles(roles: dict, cfg: dict, names: set) -> dict:
    """bos / eos / pad token names: as given, else tokenizer_config.json's, else a well-known name
    among the added tokens (or None)."""
    chosen = {}
    for role in ("bos", "eos", "pad"):
        given = roles.get(role, _AUTO)
        if given is _AUTO:
            c = cfg.get(f"{role}_token")
            if isinstance(c, dict):
                c = c.get("content")
            given = c if c in names else next((g for g in _ROLE_GUESSES[role] if g in names), None)
        chosen[role] = given
    return chosen


@contextlib.contextmanager
def _reading(source: str, what: str):
    """TokenizerError naming source for what goes wrong in the block (a malformed entry: corrupt what)."""
    try:
        yield
    except TokenizerError as e:
        raise TokenizerError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerError(f"{source}: corrupt {what} ({type(e).__name__}: {e})") from None


def _check_format(d, fmt: str, version: int, what: str) -> None:
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise TokenizerError(f"not {what} (missing format marker)")
    if d.get("version") != version:
        raise TokenizerError(f"unsupported version {d.get('version')!r} (this reads {version})")


def _hf_adds_bos(d: dict, cfg: dict, bos: str | None, default: bool) -> bool:
    """tokenizer_config.json's add_bos_token, else whether the tokenizer.json post-processor puts
    bos first (Llama 3's TemplateProcessing), else default."""
    if isinstance(cfg.get("add_bos_token"), bool):
        return cfg["add_bos_token"]
    post = d.get("post_processor")
    procs = (post.get("processors") or []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    for pp in procs:
        if isinstance(pp, dict) and pp.get("type") == "TemplateProcessing":
            single = pp.get("single") or []
            first = single[0] if single and isinstance(single[0], dict) else {}
            return bos is not None and (first.get("SpecialToken") or {}).get("id") == bos
    return default


def _id_triples(merges) -> list:
    """merges of an own-format file, checked to be [left, right, result] id triples."""
    if not isinstance(merges, list) or not all(
            isinstance(m, list) and len(m) == 3 and all(isinstance(x, int) for x in m) for m in merges):
        raise TokenizerError("merges must be a list of [left, right, result] id triples")
    return merges


def _threads(num_threads) -> int:
    """num_threads of an encode_batch call (None: torch.get_num_threads()), checked."""
    if num_threads is None:
        import torch

        num_threads = torch.get_num_threads()
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1, got {num_threads!r}")
    return num_threads


class _AddedTokens:
    """What both tokenizer kinds share about their added tokens (self._added: [{"id", "content",
    "special", ...}], self._added_ids: content -> id) and the bos / eos / pad roles.

    add_bos_token: whether a bare prompt for generation starts with bos, as the model's own
    tokenizer does it (tokenizer_config.json's add_bos_token, a tokenizer.json post-processor that
    adds bos, GGUF's tokenizer.ggml.add_bos_token); encode() itself adds bos only when asked."""

    add_bos_token = False

    def _role(self, role: str, name: str | None) -> str | None:
        if name is None:
            return None
        if name not in self._added_ids:
            raise TokenizerError(f"{role}_token {name!r} is not one of the special tokens "
                                 f"{sorted(self._added_ids)}")
        return name

    @property
    def special_tokens(self) -> dict[str, int]:
        return {a["content"]: a["id"] for a in self._added if a["special"]}

    @property
    def added_tokens(self) -> list[dict]:
        return [dict(a) for a in self._added]

    bos_id = property(lambda self: self._added_ids[self.bos_token] if self.bos_token else None)
    eos_id = property(lambda self: self._added_ids[self.eos_token] if self.eos_token else None)
    pad_id = property(lambda self: self._added_ids[self.pad_token] if self.pad_token else None)

    def __len__(self) -> int:
        return self.vocab_size

    def to_hf_json(self, path: str | os.PathLike, chat_template: str | None = None) -> Path:
        """Write a Hugging Face tokenizer.json. A directory gets tokenizer.json and tokenizer_config.json
        (the bos / eos / pad / unk roles for transformers' PreTrainedTokenizerFast, and chat_template
        when given: the Jinja source a model was fine-tuned with). Returns the tokenizer.json path."""
        path = Path(path)
        if path.is_dir():
            cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                   **self._hf_config()}
            if chat_template:
                cfg["chat_template"] = chat_template
            for role in ("bos", "eos", "pad", "unk"):
                if getattr(self, f"{role}_token", None):
                    cfg[f"{role}_token"] = getattr(self, f"{role}_token")
            _write_json(path / "tokenizer_config.json", cfg)
            path = path / "tokenizer.json"
        _write_json(path, self.to_hf_dict())
        return path


class Tokenizer(_AddedTokens):
    """A byte-level BPE tokenizer. Build one with train(), load(), from_hf_json() (or the constructor)."""

    def __init__(self, tokens: Sequence[bytes], merges: Sequence[tuple[int, int, int]],
                 added_tokens: Sequence[dict] = (), pattern: str = "gpt2", bos_token: str | None = None,
                 eos_token: str | None = None, pad_token: str | None = None, ignore_merges: bool = False,
                 normalizer: str | None = None):
        """tokens[id] = the token's bytes (added tokens: their UTF-8 content); merges = (left, right, result)
        ids in rank order; added_tokens = [{"id", "content", "special"}] (matched in text before
        pre-tokenization, never split); bos/eos/pad_token name added tokens; normalizer: None, or
        "NFC" (Qwen2/Qwen3: text between added tokens is NFC-normalised before encoding)."""
        if pattern not in PATTERNS:
            raise TokenizerError(f"unknown pre-tokenizer pattern {pattern!r} (supported: {sorted(PATTERNS)})")
        if normalizer not in NORMALIZERS:
            raise TokenizerError(f"unknown normalizer {normalizer!r} (supported: None, 'NFC')")
        self.pattern = pattern
        self.normalizer = normalizer
        self.ignore_merges = bool(ignore_merges)
        self._tokens = [bytes(t) for t in tokens]
        self._merges = [(int(a), int(b), int(r)) for a, b, r in merges]
        self._added = []
        for a in added_tokens:
            tid, content = int(a["id"]), str(a["content"])
            if not 0 <= tid < len(self._tokens):
                raise TokenizerError(f"added token {content!r}: id {tid} out of range")
            if self._tokens[tid] != content.encode("utf-8"):
                raise TokenizerError(f"added token {content!r}: id {tid} holds {self._tokens[tid]!r}")
            self._added.append({"id": tid, "content": content, "special": bool(a.get("special", True))})
        self._model = _C.BpeModel(self._tokens, self._merges, [a["id"] for a in self._added], pattern,
                                  self.ignore_merges)
        self._added_ids = {a["content"]: a["id"] for a in self._added}
        self._special_re = None
        self._index: dict[bytes, int] | None = None
        self.bos_token = self._role("bos", bos_token)
        self.eos_token = self._role("eos", eos_token)
        self.pad_token = self._role("pad", pad_token)

    # ---- training ------------------------------------------------------------------
    @classmethod
    def train(cls, files_or_iterator, vocab_size: int, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
              bos_token=_AUTO, eos_token=_AUTO, pad_token=_AUTO, min_frequency: int = 1,
              pattern: str = "gpt2", chunk_bytes: int = 16 << 20) -> "Tokenizer":
        """Learn a vocabulary of vocab_size tokens (256 bytes + merges + special tokens).

        files_or_iterator: a path, a list/tuple of paths (UTF-8 text files; strings count as
        paths when each is an existing file or has a path's shape: no whitespace and a '/' or
        a file extension), or any other iterable of str/bytes documents (train_from_iterator
        takes texts only). Special tokens in the text
        are cut out, never learnt. bos/eos/pad_token default to <|bos|>/<|eos|>/<|pad|> when
        those are among special_tokens. Stops early (with a warning) when no pair is left.
        """
        if isinstance(files_or_iterator, (str, os.PathLike)):
            files, texts = [files_or_iterator], None
        elif isinstance(files_or_iterator, (list, tuple)) and files_or_iterator and all(
                isinstance(f, os.PathLike) or _looks_like_path(f) for f in files_or_iterator):
            files, texts = list(files_or_iterator), None
        elif isinstance(files_or_iterator, (bytes, bytearray)):
            raise TypeError("train: pass a path, a list of paths or an iterable of texts, not a bytes object")
        else:
            files, texts = None, files_or_iterator
        return cls._train(files, texts, vocab_size, special_tokens, bos_token, eos_token, pad_token,
                          min_frequency, pattern, chunk_bytes)

    @classmethod
    def train_from_iterator(cls, texts: Iterable, vocab_size: int, **kw) -> "Tokenizer":
        """Like train(), over an iterable of str/bytes documents (each pre-tokenized on its own)."""
        kw.setdefault("special_tokens", DEFAULT_SPECIAL_TOKENS)
        return cls._train(None, texts, vocab_size, kw.pop("special_tokens"), kw.pop("bos_token", _AUTO),
                          kw.pop("eos_token", _AUTO), kw.pop("pad_token", _AUTO), kw.pop("min_frequency", 1),
                          kw.pop("pattern", "gpt2"), kw.pop("chunk_bytes", 16 << 20), **kw)

    @classmethod
    def _train(cls, files, texts, vocab_size, special_tokens, bos_token, eos_token, pad_token, min_frequency,
               pattern, chunk_bytes) -> "Tokenizer":
        if pattern not in PATTERNS:
            raise ValueError(f"unknown pre-tokenizer pattern {pattern!r} (supported: {sorted(PATTERNS)})")
        specials = list(special_tokens or ())
        for s in specials:
            if not isinstance(s, str) or not s:
                raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
            _text_bytes(s, "special token")
        if len(set(specials)) != len(specials):
            raise ValueError(f"special tokens listed twice: {specials}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size {vocab_size} is below 256 byte tokens + {len(specials)} special tokens")
        if vocab_size >= 2**31 - 1:
            raise ValueError(f"vocab_size {vocab_size} is too large")
        if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be an int >= 1, got {chunk_bytes!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        for role, given in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            if given is not _AUTO and given is not None and given not in specials:
                raise ValueError(f"{role}_token {given!r} is not one of the special tokens {specials}")

        trainer = _C.BpeTrainer(pattern, [s.encode("utf-8") for s in specials])
        if files is not None:
            for f in files:  # fail before any work on a missing file
                if not Path(f).exists():
                    raise FileNotFoundError(f"train: no such file: {f}")
            for f in files:
                _feed_file(trainer, Path(f), chunk_bytes)
        else:
            try:
                it = iter(texts)
            except TypeError:
                raise TypeError(f"train: expected a path, a list of paths or an iterable of texts, "
                                f"got {type(texts).__name__}") from None
            for i, doc in enumerate(it):
                b = _text_bytes(doc, f"train: document {i}")
                if isinstance(doc, (bytes, bytearray, memoryview)):
                    try:
                        b.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ValueError(f"train: document {i} is not valid UTF-8 (byte {e.start}: {e.reason})") \
                            from None
                if b:
                    trainer.feed(b)
        if trainer.num_bytes == 0:
            raise ValueError("train: no training text (empty input)")

        want = vocab_size - 256 - len(specials)
        merges = trainer.train(want, min_frequency)
        tokens = [bytes([b]) for b in range(256)]
        for a, b, r in merges:
            if r == len(tokens):
                tokens.append(tokens[a] + tokens[b])
        if len(tokens) - 256 < want:
            warnings.warn(f"tokenizer: the text only supports {len(tokens) + len(specials)} tokens "
                          f"(asked for {vocab_size})", stacklevel=3)
        added = []
        for s in specials:
            added.append({"id": len(tokens), "content": s, "special": True})
            tokens.append(s.encode("utf-8"))
        roles = {}
        for role, given in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token)):
            roles[role] = (_DEFAULT_ROLES[role] if _DEFAULT_ROLES[role] in specials else None) \
                if given is _AUTO else given
        return cls(tokens, merges, added, pattern, roles["bos"], roles["eos"], roles["pad"])

    # ---- encode / decode ----------------------------------------------------------
    def encode(self, text: str | bytes, add_bos: bool = False, add_eos: bool = False,
               allow_special: bool = True) -> list[int]:
        """Token ids of text (str or bytes). Special tokens in the text become their ids unless
        allow_special=False (then they are encoded as plain text)."""
        ids = self._model.encode(self._normalized(_text_bytes(text), allow_special), bool(allow_special))
        return self._wrap(ids, add_bos, add_eos)

    def _normalized(self, b: bytes, allow_special: bool) -> bytes:
        """b with the normalizer applied to the text between added tokens (as Hugging Face does:
        an added token is matched first and never normalised). ASCII is left as it is."""
        if self.normalizer is None or b.isascii():
            return b
        text = b.decode("utf-8", "surrogateescape")
        if allow_special and self._added:
            if self._special_re is None:
                names = sorted(self._added_ids, key=len, reverse=True)
                self._special_re = re.compile("(" + "|".join(map(re.escape, names)) + ")")
            parts = self._special_re.split(text)
        else:
            parts = [text]
        out = "".join(p if i % 2 else unicodedata.normalize(self.normalizer, p) for i, p in enumerate(parts))
        return out.encode("utf-8", "surrogateescape")

    def encode_batch(self, texts: Sequence[str | bytes], add_bos: bool = False, add_eos: bool = False,
                     allow_special: bool = True, num_threads: int | None = None) -> list[list[int]]:
        """encode() of each text, on num_threads OpenMP threads (default: torch.get_num_threads();
        small batches run on one). The ids do not depend on the thread count."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_batch: expected a sequence of texts, got a single text (use encode)")
        num_threads = _threads(num_threads)
        texts = [self._normalized(_text_bytes(t, f"text {i}"), allow_special) for i, t in enumerate(texts)]
        with no_gc():
            out = self._model.encode_batch(texts, bool(allow_special), num_threads)
            return [self._wrap(ids, add_bos, add_eos) for ids in out] if (add_bos or add_eos) else out

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True but this tokenizer has no bos token")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id is None:
                raise ValueError("add_eos=True but this tokenizer has no eos token")
            ids.append(self.eos_id)
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special: bool = False) -> bytes:
        """The bytes of ids, concatenated (exactly what was encoded)."""
        if hasattr(ids, "tolist"):  # torch / numpy
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)):
            try:
                ids = list(ids)
            except TypeError:
                raise TypeError(f"decode: expected a sequence of ints, got {type(ids).__name__}") from None
        return self._model.decode(ids, bool(skip_special))

    def decode(self, ids: Iterable[int], errors: str = "replace", skip_special: bool = False) -> str:
        """Text of ids. errors: how to decode bytes that are not valid UTF-8 ("replace";
        "surrogateescape" round-trips any bytes; "strict" raises)."""
        return self.decode_bytes(ids, skip_special).decode("utf-8", errors)

    # ---- vocabulary -----------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def merges(self) -> list[tuple[int, int, int]]:
        return list(self._merges)

    def id_to_token(self, i: int) -> bytes:
        if not 0 <= int(i) < len(self._tokens):
            raise ValueError(f"id {i} out of range [0, {len(self._tokens)})")
        return self._tokens[int(i)]

    def token_to_id(self, token: str | bytes) -> int | None:
        """The id of a special token (by name) or of a token's bytes; None if absent."""
        if isinstance(token, str) and token in self._added_ids:
            return self._added_ids[token]
        if self._index is None:
            added = {a["id"] for a in self._added}
            self._index = {}
            for i, t in enumerate(self._tokens):
                if i not in added:
                    self._index.setdefault(t, i)
        return self._index.get(_text_bytes(token, "token"))

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, pattern={self.pattern!r}, "
                f"special={list(self.special_tokens)})")

    # ---- own format ---------------------------------------------------------------
    def to_dict(self) -> dict:
        added = {a["id"] for a in self._added}
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "pattern": self.pattern,
            "ignore_merges": self.ignore_merges,
            "normalizer": self.normalizer,
            "tokens": [t.decode("utf-8") if i in added else _to_unicode(t) for i, t in enumerate(self._tokens)],
            "merges": [list(m) for m in self._merges],
            "added_tokens": [dict(a) for a in self._added],
            "roles": {"bos": self.bos_token, "eos": self.eos_token, "pad": self.pad_token},
            "add_bos_token": self.add_bos_token,
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "tokenizer") -> "Tokenizer":
        with _reading(source, "llmforge tokenizer"):
            _check_format(d, FORMAT, FORMAT_VERSION, "an llmforge tokenizer")
            added = d["added_tokens"]
            if not isinstance(added, list) or not all(isinstance(a, dict) for a in added):
                raise TokenizerError("added_tokens must be a list of objects")
            added_ids = {int(a["id"]) for a in added}
            raw = d["tokens"]
            if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
                raise TokenizerError("tokens must be a list of strings")
            tokens = [t.encode("utf-8") if i in added_ids else _from_unicode(t, f"token {i}")
                      for i, t in enumerate(raw)]
            merges = _id_triples(d["merges"])
            roles = d.get("roles") or {}
            tok = cls(tokens, merges, added, d.get("pattern", "gpt2"), roles.get("bos"), roles.get("eos"),
                      roles.get("pad"), bool(d.get("ignore_merges", False)), d.get("normalizer"))
            tok.add_bos_token = bool(d.get("add_bos_token", False))
            return tok

    def save(self, path: str | os.PathLike) -> None:
        """Write the own format (JSON: version, pattern, tokens, merges, added tokens, roles), atomically."""
        _write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by save() (a Hugging Face tokenizer.json is read by from_hf_json); an
        SpmTokenizer's file gives an SpmTokenizer."""
        return _from_own(_read_json(Path(path)), str(path))

    # ---- Hugging Face tokenizer.json --------------------------------------------------
    def to_hf_dict(self) -> dict:
        added = {a["id"] for a in self._added}
        vocab = {}
        for i, t in enumerate(self._tokens):
            key = t.decode("utf-8") if i in added else _to_unicode(t)
            if key in vocab:
                raise TokenizerError(f"token {i} ({key!r}) has the same vocabulary string as token {vocab[key]}")
            vocab[key] = i
        tok = self._tokens
        if self.pattern == "gpt2":
            pre = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        else:
            pre = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": PATTERNS[self.pattern]}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [{"id": a["id"], "content": a["content"], "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": a["special"]} for a in self._added],
            "normalizer": None if self.normalizer is None else {"type": self.normalizer},
            "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.ignore_merges, "vocab": vocab,
                      "merges": [f"{_to_unicode(tok[a])} {_to_unicode(tok[b])}" for a, b, _ in self._merges]},
        }

    def _hf_config(self) -> dict:
        return {"model_max_length": 1_000_000_000_000_000_019_884_624_838_656, "add_bos_token": self.add_bos_token}

    @classmethod
    def from_hf_json(cls, path: str | os.PathLike, bos_token=_AUTO, eos_token=_AUTO, pad_token=_AUTO) -> "Tokenizer":
        """Load a tokenizer.json (file, or a directory holding one). Roles come from the arguments, else
        a tokenizer_config.json beside it, else well-known special token names. A SentencePiece-style
        file (byte_fallback: Llama 2, Mistral v0.1-v0.3, Phi-3) gives an llmforge.tokenizer.SpmTokenizer."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        return cls._from_hf_file(path, _read_json(path), bos_token, eos_token, pad_token)

    @classmethod
    def _from_hf_file(cls, path: Path, d, bos_token=_AUTO, eos_token=_AUTO, pad_token=_AUTO) -> "Tokenizer":
        """from_hf_json of the already read tokenizer.json d at path (tokenizer_config.json beside it)."""
        cfg = {}
        cfg_path = path.parent / "tokenizer_config.json"
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
                cfg = cfg if isinstance(cfg, dict) else {}
            except (OSError, ValueError):
                cfg = {}
        with _reading(path, "tokenizer.json"):
            return cls._from_hf_dict(d, {"bos": bos_token, "eos": eos_token, "pad": pad_token}, cfg)

    @classmethod
    def from_hf_dict(cls, d: dict, **roles) -> "Tokenizer":
        return cls._from_hf_dict(d, {r: roles.get(f"{r}_token", _AUTO) for r in ("bos", "eos", "pad")}, {})

    @classmethod
    def _from_hf_dict(cls, d: dict, roles: dict, cfg: dict) -> "Tokenizer":
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise TokenizerError("not a tokenizer.json (no model)")
        m = d["model"]
        if m.get("type", "BPE") != "BPE":
            raise TokenizerError(f"model type {m.get('type')!r} is not supported (only BPE)")
        if m.get("byte_fallback") or _spm_style(d):   # Llama 2, Mistral v0.1-v0.3, Phi-3
            from .spm import SpmTokenizer

            return SpmTokenizer._from_hf_dict(d, roles, cfg)
        if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix") or m.get("dropout"):
            raise TokenizerError("only plain byte-level BPE is supported (subword prefixes/suffixes and "
                                 "dropout are not)")
        normalizer = _hf_normalizer(d.get("normalizer"))
        pattern = _hf_pattern(d.get("pre_tokenizer"))
        vocab = m["vocab"]
        if not isinstance(vocab, dict):
            raise TokenizerError("model.vocab must be an object")
        added_raw = d.get("added_tokens") or []
        added_by_id = {}
        for a in added_raw:
            added_by_id[int(a["id"])] = {"id": int(a["id"]), "content": str(a["content"]),
                                         "special": bool(a.get("special", False))}
            if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
                warnings.warn(f"added token {a['content']!r}: lstrip/rstrip/single_word are ignored "
                              "(matched as plain text)", stacklevel=4)
        n = max([-1] + [int(i) for i in vocab.values()] + list(added_by_id)) + 1
        if n > len(vocab) + len(added_by_id):
            raise TokenizerError(f"token ids are not contiguous (largest id {n - 1}, "
                                 f"{len(vocab) + len(added_by_id)} entries)")
        tokens: list[bytes | None] = [None] * n
        for s, i in vocab.items():
            if not isinstance(i, int) or i < 0:
                raise TokenizerError(f"vocab entry {s!r}: bad id {i!r}")
            if i in added_by_id:
                continue
            if tokens[i] is not None:
                raise TokenizerError(f"vocab id {i} is used twice")
            tokens[i] = _from_unicode(s, "vocab")
        for i, a in added_by_id.items():
            tokens[i] = a["content"].encode("utf-8")
        missing = [i for i, t in enumerate(tokens) if t is None]
        if missing:
            raise TokenizerError(f"token ids are not contiguous: {len(missing)} missing, first {missing[0]}")
        merges = _hf_merges(m.get("merges"), vocab)
        chosen = _hf_roles(roles, cfg, {a["content"] for a in added_by_id.values()})
        tok = cls(tokens, merges, sorted(added_by_id.values(), key=lambda a: a["id"]), pattern,
                  chosen["bos"], chosen["eos"], chosen["pad"], bool(m.get("ignore_merges", False)), normalizer)
        tok.add_bos_token = _hf_adds_bos(d, cfg, tok.bos_token, False)
        return tok

    # ---- GGUF -----------------------------------------------------------------------
    def gguf_metadata(self, add_bos: bool | None = None, add_eos: bool = False) -> dict:
        """The tokenizer.ggml.* keys a GGUF file needs for llama.cpp to tokenize exactly like this
        (add_bos: default this tokenizer's add_bos_token)."""
        add_bos = self.add_bos_token if add_bos is None else add_bos
        added = {a["id"]: a for a in self._added}
        tokens, types = [], []
        for i, t in enumerate(self._tokens):
            if i in added:
                tokens.append(added[i]["content"])
                types.append(_TT_CONTROL if added[i]["special"] else _TT_USER_DEFINED)
            else:
                tokens.append(_to_unicode(t))
                types.append(_TT_NORMAL)
        md = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": LLAMA_CPP_PRE[self.pattern],
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": [f"{_to_unicode(self._tokens[a])} {_to_unicode(self._tokens[b])}"
                                      for a, b, _ in self._merges],
            "tokenizer.ggml.add_bos_token": bool(add_bos),
            "tokenizer.ggml.add_eos_token": bool(add_eos),
        }
        for key, tid in (("bos_token_id", self.bos_id), ("eos_token_id", self.eos_id),
                         ("padding_token_id", self.pad_id)):
            if tid is not None:
                md[f"tokenizer.ggml.{key}"] = tid
        return md


def _from_own(d, source: str):
    """A tokenizer from our own format's dict: byte-level (FORMAT) or SentencePiece-style."""
    from .spm import FORMAT as SPM_FORMAT, SpmTokenizer

    if isinstance(d, dict) and d.get("format") == SPM_FORMAT:
        return SpmTokenizer.from_dict(d, source)
    return Tokenizer.from_dict(d, source)


def is_own_format(d) -> bool:
    """Whether a JSON document is one of our own tokenizer files (else, say, a tokenizer.json)."""
    from .spm import FORMAT as SPM_FORMAT

    return isinstance(d, dict) and d.get("format") in (FORMAT, SPM_FORMAT)


def _spm_style(d: dict) -> bool:
    """A tokenizer.json that spells spaces as "▁" (Metaspace, or a Replace(" ", "▁") normaliser)."""
    def has(node, pred) -> bool:
        if not isinstance(node, dict):
            return False
        kids = node.get("normalizers") or node.get("pretokenizers") or []
        return pred(node) or any(has(k, pred) for k in kids if isinstance(kids, list))

    return has(d.get("pre_tokenizer"), lambda n: n.get("type") == "Metaspace") or has(
        d.get("normalizer"), lambda n: n.get("type") == "Replace" and n.get("content") == "\u2581")


@contextlib.contextmanager
def no_gc():
    """Python's cyclic GC off while many id lists are made: a collection every few hundred new
    lists cost more than the encoding itself (2.4-4x on a batch of short lines)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _hf_normalizer(norm) -> str | None:
    """None or "NFC" from a tokenizer.json normalizer (NFC alone, or a Sequence of just NFC)."""
    if norm is None:
        return None
    if isinstance(norm, dict) and norm.get("type") == "Sequence" and len(norm.get("normalizers") or []) == 1:
        norm = norm["normalizers"][0]
    if isinstance(norm, dict) and norm.get("type") == "NFC":
        return "NFC"
    kind = norm.get("type") if isinstance(norm, dict) else norm
    raise TokenizerError(f"normalizer {kind!r} is not supported (only NFC)")


def _hf_pattern(pre) -> str:
    """The pattern name of a tokenizer.json pre_tokenizer, or TokenizerError."""
    def is_bytelevel(p, regex: bool) -> bool:
        return (isinstance(p, dict) and p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)
                and bool(p.get("use_regex", True)) == regex)

    if is_bytelevel(pre, True):
        return "gpt2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        seq = pre.get("pretokenizers") or []
        if len(seq) == 2 and is_bytelevel(seq[1], False) and isinstance(seq[0], dict) \
                and seq[0].get("type") == "Split" and not seq[0].get("invert", False) \
                and seq[0].get("behavior") == "Isolated":
            rx = (seq[0].get("pattern") or {}).get("Regex")
            for name, p in PATTERNS.items():
                if rx == p:
                    return name
    raise TokenizerError(f"unsupported pre_tokenizer {json.dumps(pre)[:200]} (supported: ByteLevel with the "
                         "GPT-2 regex, or Split with the GPT-2, Llama 3 or Qwen2 regex then ByteLevel; "
                         "add_prefix_space=false)")


def _looks_like_path(s) -> bool:
    if not isinstance(s, str) or not s or len(s) > 4096:
        return False
    if os.path.isfile(s):
        return True
    return not re.search(r"\s", s) and ("/" in s or os.sep in s or re.search(r"\.[A-Za-z0-9]{1,6}$", s) is not None)


def _feed_file(trainer, path: Path, chunk_bytes: int) -> None:
    """Feeds a UTF-8 file in chunks cut where a piece must end anyway (an ASCII letter before a newline),
    so the words are exactly those of the whole file."""
    size = path.stat().st_size  # FileNotFoundError / PermissionError as usual
    if path.is_dir():
        raise IsADirectoryError(f"train: {path} is a directory")
    if size == 0:
        raise ValueError(f"train: {path} is empty")
    offset = 0
    carry = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            data = carry + block
            if not block:
                cut = len(data)
            else:
                cut = _safe_cut(data)
            piece, carry = data[:cut], data[cut:]
            if piece:
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(f"train: {path} is not valid UTF-8 (byte {offset + e.start}: {e.reason})") \
                        from None
                trainer.feed(piece)
                offset += len(piece)
            if not block:
                break


def _safe_cut(data: bytes) -> int:
    """The last position p with data[p-1] an ASCII letter and data[p] == '\\n' (0 if none)."""
    p = data.rfind(b"\n")
    while p > 0:
        c = data[p - 1]
        if 65 <= c <= 90 or 97 <= c <= 122:
            return p
        p = data.rfind(b"\n", 0, p)
    return 0


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise TokenizerError(f"{path}: empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False)
    os.replace(tmp, path)
