"""Byte-level BPE tokenizer (C++ core in csrc/bpe.cpp, csrc/pretokenize.cpp).

    from llmforge.tokenizer import Tokenizer
    tok = Tokenizer.train(["corpus.txt"], vocab_size=8192)      # or any iterable of str/bytes
    ids = tok.encode("Hello world", add_bos=True)
    tok.decode(ids)                                              # -> "<|bos|>Hello world"
    tok.save("tok.json"); Tokenizer.load("tok.json")             # own format
    tok.to_hf_json("tokenizer.json"); Tokenizer.from_hf_json("tokenizer.json")
    tok.gguf_metadata()                                          # tokenizer.ggml.* for GGUF export

SentencePiece-style BPE (Llama 2, Mistral v0.1-v0.3, Phi-3): Tokenizer.from_hf_json() of their
tokenizer.json gives an SpmTokenizer (tokenizer/spm.py), with the same encode/decode interface.
"""
from .bpe import (DEFAULT_SPECIAL_TOKENS, GPT2_PATTERN, LLAMA3_PATTERN, LLAMA_CPP_PRE, QWEN2_PATTERN, Tokenizer,
                  TokenizerError, _from_own, _read_json, bytes_to_unicode, is_own_format)
from .spm import SpmTokenizer

BPETokenizer = Tokenizer


def load_tokenizer(path, required: bool = True):
    """A tokenizer from a file (our own format, a Hugging Face tokenizer.json, or a SentencePiece
    .model) or a model directory (llmforge_tokenizer.json, else tokenizer.json, else tokenizer.model).
    None for a directory without one when required=False."""
    import os
    from pathlib import Path

    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(64).lstrip()[:1]
        if head != b"{":   # not JSON: a SentencePiece model (protobuf)
            return SpmTokenizer.from_sentencepiece(path)
        d = _read_json(Path(path))   # read once: our own format, else a Hugging Face tokenizer.json
        return _from_own(d, str(path)) if is_own_format(d) else Tokenizer._from_hf_file(Path(path), d)
    for name, load in (("llmforge_tokenizer.json", Tokenizer.load), ("tokenizer.json", Tokenizer.from_hf_json),
                       ("tokenizer.model", SpmTokenizer.from_sentencepiece)):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            return load(f)
    if required or not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no tokenizer (a tokenizer file, or a directory with "
                                "llmforge_tokenizer.json, tokenizer.json or tokenizer.model)")
    return None


__all__ = ["Tokenizer", "SpmTokenizer", "load_tokenizer", "BPETokenizer", "TokenizerError", "DEFAULT_SPECIAL_TOKENS",
           "GPT2_PATTERN", "LLAMA3_PATTERN", "QWEN2_PATTERN", "LLAMA_CPP_PRE", "bytes_to_unicode"]
