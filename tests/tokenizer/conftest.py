"""Fixtures of the tokenizer tests: a real SentencePiece BPE model (sentencepiece, trained on
Shakespeare + People's Daily with byte fallback) and its tokenizer.json forms, converted by
transformers' own LlamaConverter (legacy, and Metaspace prepend_scheme "first")."""
import json

import pytest


def _convert(model_file: str, legacy: bool, out_dir):
    """tokenizer.json from a SentencePiece model by transformers' LlamaConverter (its merges from
    transformers' generate_merges, ordered by piece score)."""
    import transformers.convert_slow_tokenizer as conv
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    class Converter(conv.LlamaConverter):
        def tokenizer(self, proto):  # SpmConverter.tokenizer's BPE branch
            vocab_scores = self.vocab(proto)
            vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
            merges = conv.generate_merges(vocab, vocab_scores)
            tk = HFTokenizer(BPE(vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
                                 byte_fallback=True))
            tk.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == 3)
                           for p in proto.pieces if p.type in (3, 4)])
            return tk

    class Original:
        vocab_file, add_prefix_space = model_file, True

        def __init__(self):
            self.legacy = legacy
            import sentencepiece

            self.sp = sentencepiece.SentencePieceProcessor(model_file=model_file)

        def convert_ids_to_tokens(self, i):
            return self.sp.id_to_piece(i)

    out_dir.mkdir()
    Converter(Original()).converted().save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": legacy, "add_bos_token": True,
         "add_eos_token": False, "tokenizer_class": "LlamaTokenizer"}))
    return out_dir


@pytest.fixture(scope="session")
def corpus():
    from llmforge.data.corpora import peoples_daily, shakespeare_text

    lines = shakespeare_text().splitlines()
    zh = [d.text for d in peoples_daily(max_lines=400)]
    cut = int(len(lines) * 0.9)
    return {"train": lines[:cut] + zh[:300], "held": lines[cut:], "zh": zh[300:]}


@pytest.fixture(scope="session")
def sp_dirs(corpus, tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    d = tmp_path_factory.mktemp("spm")
    prefix = str(d / "m")
    # Llama's settings: BPE, byte fallback, identity normalisation, whitespace kept, digits split
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus["train"]), model_prefix=prefix, vocab_size=3000, model_type="bpe",
        byte_fallback=True, character_coverage=0.995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"], num_threads=2, minloglevel=2)
    return {"model": prefix + ".model", "legacy": _convert(prefix + ".model", True, d / "legacy"),
            "first": _convert(prefix + ".model", False, d / "first")}
