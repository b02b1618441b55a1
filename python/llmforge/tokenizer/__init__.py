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
                  TokenizerError,
                  bytes_to_unicode)
from .spm import SpmTokenizer


def load_tokenizer(path, required: bool = True):
    """A tokenizer from a file (our own format, a Hugging Face tokenizer.json, or a SentencePiece
    .model) or a model directory (llmforge_tokenizer.json, else tokenizer.json, else tokenizer.model).
    None for a directory without one when required=False."""
    import json
    import os

    if os.path.isfile(path):
        with open(path, "rb") as f:
            head = f.read(64).lstrip()[:1]
        if head != b"{":   # not JSON: a SentencePiece model (protobuf)
            return SpmTokenizer.from_sentencepiece(path)
        try:
            with open(path, encoding="utf-8") as f:
                fmt = json.load(f).get("format")
        except (ValueError, AttributeError):
            fmt = None
        return Tokenizer.load(path) if fmt in ("llmforge-bpe", "llmforge-spm") else Tokenizer.from_hf_json(path)
    for name, load in (("llmforge_tokenizer.json", Tokenizer.load), ("tokenizer.json", Tokenizer.from_hf_json),
                       ("tokenizer.model", SpmTokenizer.from_sentencepiece)):
        f = os.path.join(path, name)
        if os.path.isfile(f):
            return load(f)
    if required or not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no tokenizer (a tokenizer file, or a directory with "
                                "llmforge_tokenizer.json, tokenizer.json or tokenizer.model)")
    return None


__all__ = ["Tokenizer", "SpmTokenizer", "load_tokenizer", "BPETokenizer", "TokenizerError", "DEFAULT_SPECIAL_TOKENS", "GPT2_PATTERN", "LLAMA3_PATTERN",
           "QWEN2_PATTERN", "LLAMA_CPP_PRE", "bytes_to_unicode"]
