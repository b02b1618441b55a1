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


def load_tokenizer(model_dir, required: bool = True):
    """The tokenizer of a model directory: llmforge_tokenizer.json (our own format), else
    tokenizer.json (Hugging Face), else tokenizer.model (SentencePiece). None when there is none
    and required=False."""
    import os

    for name, load in (("llmforge_tokenizer.json", Tokenizer.load), ("tokenizer.json", Tokenizer.from_hf_json),
                       ("tokenizer.model", SpmTokenizer.from_sentencepiece)):
        f = os.path.join(model_dir, name)
        if os.path.isfile(f):
            return load(f)
    if required:
        raise FileNotFoundError(f"{model_dir}: no tokenizer (llmforge_tokenizer.json, tokenizer.json or "
                                "tokenizer.model)")
    return None

BPETokenizer = Tokenizer

__all__ = ["Tokenizer", "SpmTokenizer", "load_tokenizer", "BPETokenizer", "TokenizerError", "DEFAULT_SPECIAL_TOKENS", "GPT2_PATTERN", "LLAMA3_PATTERN",
           "QWEN2_PATTERN", "LLAMA_CPP_PRE", "bytes_to_unicode"]
