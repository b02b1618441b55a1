"""A byte-level tokenizer with special tokens: the simplest honest tokenizer for data tests."""
from __future__ import annotations

import re


class ByteTokenizer:
    def __init__(self, specials=("<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"), bos_token="<s>", eos_token="</s>"):
        self.specials = {s: 256 + i for i, s in enumerate(specials)}
        self.inv = {v: k for k, v in self.specials.items()}
        self.bos_token, self.eos_token = bos_token, eos_token
        self._re = re.compile("|".join(re.escape(s) for s in sorted(self.specials, key=len, reverse=True)))

    @property
    def vocab_size(self):
        return 256 + len(self.specials)

    def token_to_id(self, tok):
        if tok in self.specials:
            return self.specials[tok]
        b = tok.encode("utf-8")
        return b[0] if len(b) == 1 else None

    def encode(self, text):
        out, pos = [], 0
        for m in self._re.finditer(text):
            out.extend(text[pos:m.start()].encode("utf-8"))
            out.append(self.specials[m.group()])
            pos = m.end()
        out.extend(text[pos:].encode("utf-8"))
        return out

    def decode(self, ids):
        parts, buf = [], bytearray()
        for i in ids:
            if i in self.inv:
                parts.append(buf.decode("utf-8", "replace"))
                buf = bytearray()
                parts.append(self.inv[i])
            else:
                buf.append(i)
        parts.append(buf.decode("utf-8", "replace"))
        return "".join(parts)
