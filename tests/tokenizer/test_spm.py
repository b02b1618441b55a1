"""SentencePiece-style BPE (Llama 2 / Mistral / Phi-3 tokenizers) against independent references:
a real SentencePiece BPE model (sentencepiece, trained here on Shakespeare + People's Daily with
byte fallback), converted to tokenizer.json by transformers' own LlamaConverter (legacy and
Metaspace "first" forms), then encoded by sentencepiece, Hugging Face tokenizers, transformers
and llama.cpp."""
import importlib.util
import json
import random

import pytest

from llmforge.tokenizer import SpmTokenizer, Tokenizer, TokenizerError

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("tokenizers")
pytest.importorskip("google.protobuf")


def _texts(corpus, seed=0, n_random=300):
    rng = random.Random(seed)
    texts = ["", " ", "  ", "Hello world", " Hello", "Hello  world ", "\n\nx\ty", "<s>Hello</s> there", "a<s> b",
             "<|im_start|>user\nhi<|im_end|>\n", "emoji \U0001F600 and \u00f1 and \u0301 x", "\u00a0\u3000",
             "1234567 89", "\u2581\u2581 x\u2581", "<0x41> <unk>", "\n".join(corpus["held"][:300])]
    texts += corpus["held"][300:500] + corpus["zh"][:50]
    alphabet = [" ", "a", "e", "th", "\n", "\u00e9", "\u4e2d", "\U0001F600", "<s>", "</s>", "\u2581", "<0x41>", "x",
                "\u05d0", "\t", "<|im_end|>", "\u0301", "\uff21"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(n_random)]
    return texts


@pytest.mark.parametrize("form", ["legacy", "first"])
def test_encode_decode_match_hf_tokenizers(sp_dirs, corpus, form):
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(sp_dirs[form] / "tokenizer.json"))
    tok = Tokenizer.from_hf_json(sp_dirs[form])
    assert isinstance(tok, SpmTokenizer) and tok.prefix == form and tok.add_bos_token
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    for t in _texts(corpus):
        ids = tok.encode(t)
        assert ids == hf.encode(t, add_special_tokens=False).ids, repr(t[:100])
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False), repr(t[:100])
        assert tok.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True), repr(t[:100])
    # a whole play as one text (cut internally where no merge can cross: same ids as uncut)
    big = "\n".join(corpus["held"])
    assert tok.encode(big) == hf.encode(big, add_special_tokens=False).ids


def test_legacy_form_matches_sentencepiece(sp_dirs, corpus):
    """The legacy tokenizer.json is SentencePiece's own algorithm: same ids as sentencepiece on text
    without added tokens (around those the two differ: sentencepiece puts a "▁" before a leading one)."""
    sp = spm.SentencePieceProcessor(model_file=sp_dirs["model"])
    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    texts = [t for t in _texts(corpus, seed=1) if not any(a in t for a in ("<s>", "</s>", "<|im_"))]
    n_fallback = 0
    for t in texts:
        ids = tok.encode(t)
        assert ids == sp.encode(t), repr(t[:100])
        n_fallback += any(tok.token_types[i] == 6 for i in ids)
        if t:
            assert sp.decode(ids) == tok.decode(ids), repr(t[:100])
    assert n_fallback > 20          # rare characters really went through byte fallback


def test_transformers_adds_bos_like_us(sp_dirs, corpus):
    from transformers import PreTrainedTokenizerFast

    for form in ("legacy", "first"):
        ref = PreTrainedTokenizerFast(tokenizer_file=str(sp_dirs[form] / "tokenizer.json"), bos_token="<s>",
                                      eos_token="</s>", unk_token="<unk>")
        tok = Tokenizer.from_hf_json(sp_dirs[form])
        for t in corpus["held"][:50]:
            assert [tok.bos_id] + tok.encode(t) == [ref.bos_token_id] + ref(t, add_special_tokens=False)["input_ids"]
            assert tok.encode(t, add_bos=True, add_eos=True) == [1] + ref(t, add_special_tokens=False)["input_ids"] + [2]


def test_roundtrip_and_threads(sp_dirs, corpus):
    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    texts = [t for t in _texts(corpus, seed=2) if t and not t.startswith(" ") and "<" not in t and "\u2581" not in t]
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
        assert tok.decode_bytes(tok.encode(t)) == b" " + t.encode()   # the raw pieces keep the "▁" prefix
    docs = ["\n".join(corpus["held"][k:k + 40]) for k in range(0, 4000, 40)]
    assert tok.encode_batch(docs, num_threads=2) == tok.encode_batch(docs, num_threads=1) \
        == [tok.encode(d) for d in docs]


@pytest.mark.parametrize("form", ["legacy", "first"])
def test_saved_forms_reload_to_the_same_ids(sp_dirs, corpus, form, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    tok = Tokenizer.from_hf_json(sp_dirs[form])
    texts = _texts(corpus, seed=3, n_random=100)
    want = [tok.encode(t) for t in texts]
    tok.save(tmp_path / "own.json")
    again = Tokenizer.load(tmp_path / "own.json")
    assert isinstance(again, SpmTokenizer) and [again.encode(t) for t in texts] == want
    (tmp_path / "hf").mkdir()
    tok.to_hf_json(tmp_path / "hf")
    hf = HFTokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert [hf.encode(t, add_special_tokens=False).ids for t in texts] == want
    assert Tokenizer.from_hf_json(tmp_path / "hf").bos_token == "<s>"


def test_scores_reproduce_the_merges(sp_dirs, corpus):
    """A tokenizer rebuilt from GGUF metadata (pieces + scores, merging by score as llama.cpp and
    SentencePiece do) encodes like the merges it came from; and like sentencepiece's own scores."""
    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    md = tok.gguf_metadata()
    assert md["tokenizer.ggml.model"] == "llama" and md["tokenizer.ggml.add_space_prefix"] is True
    back = SpmTokenizer.from_gguf_metadata(md)
    sp = spm.SentencePieceProcessor(model_file=sp_dirs["model"])
    own = SpmTokenizer.from_gguf_metadata({**md, "tokenizer.ggml.scores": [sp.get_score(i) for i in range(len(tok))]})
    for t in _texts(corpus, seed=4):
        want = tok.encode(t)
        assert back.encode(t) == want, repr(t[:100])
        assert own.encode(t) == want, repr(t[:100])
    # its tokenizer.json (merges generated from the scores) reads back in Hugging Face tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(json.dumps(back.to_hf_dict()))
    for t in corpus["held"][:100]:
        assert hf.encode(t, add_special_tokens=False).ids == tok.encode(t)


def test_added_token_options_match_hf(sp_dirs, corpus, tmp_path):
    """lstrip / rstrip / single_word / normalized added tokens, as Hugging Face applies them."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    for form in ("legacy", "first"):
        hf = HFTokenizer.from_file(str(sp_dirs[form] / "tokenizer.json"))
        hf.add_special_tokens([AddedToken("<|end|>", rstrip=True, lstrip=True, normalized=False),
                               AddedToken("<|user|>", rstrip=True, normalized=False)])
        hf.add_tokens([AddedToken("thee", single_word=True, normalized=False),
                       AddedToken("<pad>", normalized=True), AddedToken("lord", normalized=True)])
        path = tmp_path / f"{form}.json"
        hf.save(str(path))
        tok = Tokenizer.from_hf_json(path)
        texts = ["a <|end|>  b", "<|user|>\n  hi <|end|>", "thee and theeward, fie thee", "x<pad>y <pad> z",
                 "my lord, lord<|end|>lords", " lord", "lord"] + corpus["held"][:100]
        for t in texts + _texts(corpus, seed=5, n_random=100):
            assert tok.encode(t) == hf.encode(t, add_special_tokens=False).ids, (form, repr(t[:100]))


def test_unk_listed_as_added_token_like_llama2(sp_dirs, corpus, tmp_path):
    """Llama 2's tokenizer.json lists <unk> among its added (special) tokens: "<unk>" in text is then
    the unknown token, in HF tokenizers as here, and llama.cpp agrees on it."""
    from tokenizers import Tokenizer as HFTokenizer

    d = json.loads((sp_dirs["legacy"] / "tokenizer.json").read_text())
    d["added_tokens"].insert(0, {"id": 0, "content": "<unk>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    path = tmp_path / "llama2.json"
    path.write_text(json.dumps(d))
    hf, tok = HFTokenizer.from_file(str(path)), Tokenizer.from_hf_json(path)
    assert tok.unk_id == 0 and tok.special_tokens["<unk>"] == 0
    for t in ["a <unk> b", "<unk><unk>", "x<unk>"] + _texts(corpus, seed=10, n_random=100):
        ids = tok.encode(t)
        assert ids == hf.encode(t, add_special_tokens=False).ids, repr(t[:100])
        assert tok.decode(ids, skip_special=True) == hf.decode(ids, skip_special_tokens=True)
    assert tok.gguf_metadata()["tokenizer.ggml.token_type"][0] == 2   # still the unknown token for llama.cpp


def test_metaspace_split_matches_hf(sp_dirs, corpus, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer

    d = json.loads((sp_dirs["first"] / "tokenizer.json").read_text())
    for scheme in ("always", "first", "never"):
        d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}
        path = tmp_path / f"{scheme}.json"
        path.write_text(json.dumps(d))
        hf, tok = HFTokenizer.from_file(str(path)), Tokenizer.from_hf_json(path)
        assert tok.split and tok.prefix == scheme
        for t in _texts(corpus, seed=6, n_random=150):
            assert tok.encode(t) == hf.encode(t, add_special_tokens=False).ids, (scheme, repr(t[:100]))


def test_unknown_characters_without_byte_fallback(sp_dirs, corpus, tmp_path):
    """byte_fallback off: an unknown character becomes <unk>, consecutive ones fused when fuse_unk."""
    from tokenizers import Tokenizer as HFTokenizer

    d = json.loads((sp_dirs["legacy"] / "tokenizer.json").read_text())
    d["model"]["byte_fallback"] = False
    for fuse in (True, False):
        d["model"]["fuse_unk"] = fuse
        path = tmp_path / f"fuse{fuse}.json"
        path.write_text(json.dumps(d))
        hf, tok = HFTokenizer.from_file(str(path)), Tokenizer.from_hf_json(path)
        assert isinstance(tok, SpmTokenizer)
        n_unk = 0
        for t in ["\U0001F600\U0001F600 x \U0001F600", "<0x41>"] + corpus["zh"][:20] + _texts(corpus, seed=8):
            ids = tok.encode(t)
            assert ids == hf.encode(t, add_special_tokens=False).ids, (fuse, repr(t[:100]))
            n_unk += ids.count(tok.unk_id)
        assert n_unk > 20


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs llama-cpp-python and gguf (pip install llama-cpp-python gguf)")
def test_llama_cpp_tokenizes_like_us(sp_dirs, corpus, tmp_path):
    """Our GGUF metadata (scores from the merge ranks) makes llama.cpp's SPM tokenizer give our ids."""
    import llama_cpp

    from tests.tokenizer.test_bpe import _write_vocab_gguf

    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    path = tmp_path / "vocab.gguf"
    _write_vocab_gguf(tok, path)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    # llama.cpp matches the unknown piece "<unk>" in text as a token; this tokenizer.json does not list
    # it among its added tokens (Llama 2's does), so Hugging Face and we read it as text
    texts = [t for t in _texts(corpus, seed=7) if t and "<unk>" not in t]
    for t in texts:
        assert llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) == tok.encode(t), repr(t[:100])
    assert llm.tokenize(b"Hello world", add_bos=True, special=True) == tok.encode("Hello world", add_bos=True)
    ids = tok.encode("\n".join(corpus["held"][:50]) + " \u4e2d\U0001F600")
    assert b"".join(llm.detokenize([i]) for i in ids) == tok.decode_bytes(ids)
    # Gemma's form: a Replace(" ", "▁") normaliser and no "▁" in front (add_space_prefix = false)
    from tokenizers import Tokenizer as HFTokenizer

    d = json.loads((sp_dirs["legacy"] / "tokenizer.json").read_text())
    d["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    d["decoder"]["decoders"] = d["decoder"]["decoders"][:3]   # no Strip
    (tmp_path / "never.json").write_text(json.dumps(d))
    hf, tok = HFTokenizer.from_file(str(tmp_path / "never.json")), Tokenizer.from_hf_json(tmp_path / "never.json")
    assert tok.prefix == "never" and not tok.strip_leading_space
    assert tok.gguf_metadata()["tokenizer.ggml.add_space_prefix"] is False
    # as transformers' GemmaTokenizer writes it: plus a Split(" ") pre-tokenizer, a no-op after the normaliser
    d["pre_tokenizer"] = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False}
    (tmp_path / "split.json").write_text(json.dumps(d))
    hf_split = HFTokenizer.from_file(str(tmp_path / "split.json"))
    tok_split = Tokenizer.from_hf_json(tmp_path / "split.json")
    for t in texts[:200]:
        assert tok_split.encode(t) == hf_split.encode(t, add_special_tokens=False).ids == tok.encode(t), repr(t[:100])
    _write_vocab_gguf(tok, tmp_path / "never.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "never.gguf"), vocab_only=True, verbose=False)
    back = SpmTokenizer.from_gguf_metadata(tok.gguf_metadata())   # and read back from GGUF metadata
    assert back.prefix == "never" and not back.strip_leading_space
    for t in texts:
        ids = hf.encode(t, add_special_tokens=False).ids
        assert tok.encode(t) == ids == llm.tokenize(t.encode("utf-8"), add_bos=False, special=True), repr(t[:100])
        assert back.encode(t) == ids
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=False) == back.decode(ids)


def test_bad_input(sp_dirs, tmp_path):
    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([len(tok)])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError):
        tok.decode("abc")
    with pytest.raises(TypeError):
        tok.decode([1.5])
    with pytest.raises(TypeError):
        tok.encode(3)
    with pytest.raises(ValueError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TypeError, match="single text"):
        tok.encode_batch("abc")
    d = json.loads((sp_dirs["legacy"] / "tokenizer.json").read_text())
    cases = {
        "normalizer": dict(d, normalizer={"type": "NFKC"}),
        "merge": dict(d, model=dict(d["model"], merges=[["\u2581t", "zzz"]])),
        "contiguous": dict(d, model=dict(d["model"], vocab={k: v + (v > 10) for k, v in d["model"]["vocab"].items()})),
        "unk_token": dict(d, model=dict(d["model"], unk_token="<nope>")),
        "dropout": dict(d, model=dict(d["model"], dropout=0.1)),
    }
    for what, bad in cases.items():
        p = tmp_path / f"{what}.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(TokenizerError, match=what if what != "contiguous" else "not contiguous"):
            Tokenizer.from_hf_json(p)
    md = tok.gguf_metadata()
    with pytest.raises(TokenizerError, match="scores"):
        SpmTokenizer.from_gguf_metadata({**md, "tokenizer.ggml.scores": [0.0] * 5})
    with pytest.raises(TokenizerError, match="NaN"):
        SpmTokenizer.from_gguf_metadata({**md, "tokenizer.ggml.scores": [float("nan")] * len(tok)})
    with pytest.raises(TokenizerError, match="not <0xXX>"):
        SpmTokenizer(["<unk>", "ab"], [2, 6], merges=[])
    with pytest.raises(ValueError, match="no piece, no byte-fallback piece"):
        SpmTokenizer(["a", "b"], [1, 1], merges=[]).encode("c")
    (tmp_path / "own.json").write_text(json.dumps({"format": "llmforge-spm", "version": 1, "pieces": [1, 2]}))
    with pytest.raises(TokenizerError, match="own.json"):
        Tokenizer.load(tmp_path / "own.json")


def test_native_model_rejects_bad_tables():
    from llmforge import _C

    pieces = [b"<unk>", b"a", b"b", b"ab", b"<0x41>"]
    ok = [0, 1, 1, 1, 0]
    byte_ids = [-1] * 256
    _C.SpmModel(pieces, ok, [(1, 2, 3, 0)], byte_ids, 0, True)   # a sound table builds
    bad = {
        "out of range": dict(merges=[(1, 9, 3, 0)]),
        "concatenation": dict(merges=[(2, 1, 3, 0)]),
        "negative rank": dict(merges=[(1, 2, 3, -1)]),
        "256 ids": dict(byte_ids=[4] * 10),
        "byte token id": dict(byte_ids=[7] * 256),
        "unk id": dict(unk=5),
        "one entry per piece": dict(ok=[1, 1]),
    }
    for what, kw in bad.items():
        with pytest.raises(ValueError, match=what):
            _C.SpmModel(pieces, kw.get("ok", ok), kw.get("merges", [(1, 2, 3, 0)]), kw.get("byte_ids", byte_ids),
                        kw.get("unk", 0), True)
    with pytest.raises(ValueError, match="empty"):
        _C.SpmModel([], [], [], [], -1, True)
    m = _C.SpmModel(pieces, ok, [(1, 2, 3, 0)], byte_ids, 0, True)
    assert m.encode_batch([b"abab", b"", b"xxab\xff"], False, 1) == [[3, 3], [], [0, 3, 0]]


def test_sentencepiece_model_file_read_without_sentencepiece(sp_dirs, corpus, tmp_path):
    """tokenizer.model read by our own protobuf reader: sentencepiece's ids on plain text, and the
    converted tokenizer.json's ids on everything (control / user-defined pieces as added tokens)."""
    import shutil

    from llmforge.tokenizer import load_tokenizer

    sp = spm.SentencePieceProcessor(model_file=sp_dirs["model"])
    tok = SpmTokenizer.from_sentencepiece(sp_dirs["model"])
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == ("<s>", "</s>", "<unk>", None)
    assert tok.pieces == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    hf = Tokenizer.from_hf_json(sp_dirs["legacy"])
    for t in _texts(corpus, seed=9):
        ids = tok.encode(t)
        assert ids == hf.encode(t), repr(t[:100])
        if not any(a in t for a in ("<s>", "</s>", "<|im_")):
            assert ids == sp.encode(t), repr(t[:100])
    d = tmp_path / "m"
    d.mkdir()
    shutil.copy(sp_dirs["model"], d / "tokenizer.model")
    assert load_tokenizer(d).encode("Hello world") == sp.encode("Hello world")
    tok.save(d / "own.json")
    for f in (d / "tokenizer.model", d / "own.json", sp_dirs["legacy"] / "tokenizer.json"):   # single files
        assert load_tokenizer(f).encode("Hello world") == sp.encode("Hello world"), f
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "nothing")


def test_corrupt_sentencepiece_model_files(sp_dirs, tmp_path):
    import numpy as np

    from tests.damage import spoilt

    raw = open(sp_dirs["model"], "rb").read()
    rng = np.random.default_rng(0)
    n_ok = 0
    for i in range(60):
        p = tmp_path / f"d{i}.model"
        p.write_bytes(spoilt(raw, rng))
        try:
            SpmTokenizer.from_sentencepiece(p).encode("Hello world \u4e2d")
            n_ok += 1          # damage inside a piece's text or a score can leave a valid model
        except ValueError as e:
            assert str(p) in str(e), e
    assert n_ok < 50
    for bad in (b"", b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3, b"not a model at all"):
        (tmp_path / "x.model").write_bytes(bad)
        with pytest.raises(ValueError, match="x.model"):
            SpmTokenizer.from_sentencepiece(tmp_path / "x.model")
