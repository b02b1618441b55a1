"""Incremental detokenization with stop strings, for streaming text out of a token stream.

    ts = TextStream(text_decoder(tok), stop=["\\n\\n", "User:"], skip_ids={eos})
    for t in tokens:
        delta = ts.feed(t)        # text that is now safe to show ("" while it may still be a stop string)
        if ts.stopped: break      # a stop string appeared: the text ends just before it
    delta = ts.finish()           # the held-back tail when the stream ends without a stop string
    ts.text                       # everything emitted so far

Tokens become bytes (decode_bytes([id])); bytes become text only once they form complete
UTF-8 characters, so a character split over two tokens is never shown half. Text that
could be the start of a stop string is held back until it cannot be; the stop string
itself is never emitted (OpenAI's convention). Ids in skip_ids (the end-of-turn / eos
token) add no text; text_decoder(tok) also leaves the tokenizer's special tokens out.
"""
from __future__ import annotations

import codecs
import inspect
from typing import Callable, Iterable


def text_decoder(tokenizer, skip_special: bool = True) -> Callable[[Iterable[int]], bytes]:
    """tokenizer.decode_bytes, leaving special tokens (<|bos|>, ...) out of the text when it can."""
    f = tokenizer.decode_bytes
    try:
        takes = "skip_special" in inspect.signature(f).parameters
    except (TypeError, ValueError):
        takes = False
    return (lambda ids: f(ids, skip_special=True)) if (takes and skip_special) else f


def normalize_stop(stop) -> list[str]:
    """None, a string or a list of strings -> a list of non-empty strings (ValueError otherwise)."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ValueError("stop must be a string or a list of strings")
    if any(s == "" for s in stop):
        raise ValueError("stop strings must be non-empty")
    return list(stop)


class TextStream:
    def __init__(self, decode_bytes: Callable[[Iterable[int]], bytes], stop=None, skip_ids=()):
        self.decode_bytes = decode_bytes
        self.stop = normalize_stop(stop)
        self.skip_ids = set(int(i) for i in skip_ids)
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""        # decoded text not yet emitted (may start a stop string)
        self.text = ""            # emitted text
        self.stopped = False      # a stop string was found
        self.stop_string: str | None = None

    def _hold(self, s: str) -> int:
        """Length of the longest suffix of s that is a proper prefix of some stop string."""
        best = 0
        for st in self.stop:
            for k in range(min(len(st) - 1, len(s)), best, -1):
                if s.endswith(st[:k]):
                    best = k
                    break
        return best

    def _emit(self, final: bool) -> str:
        if self.stop:
            hits = [(self._pending.find(st), st) for st in self.stop]
            hits = [(i, st) for i, st in hits if i >= 0]
            if hits:
                i, st = min(hits, key=lambda h: h[0])
                out = self._pending[:i]
                self._pending = ""
                self.stopped, self.stop_string = True, st
                self.text += out
                return out
        keep = 0 if final else self._hold(self._pending)
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(out):]
        self.text += out
        return out

    def feed(self, token: int) -> str:
        """Add one token; returns the newly emittable text."""
        if self.stopped:
            return ""
        if int(token) in self.skip_ids:
            return ""
        self._pending += self._dec.decode(self.decode_bytes([int(token)]))
        return self._emit(final=False)

    def finish(self) -> str:
        """The stream ended (stop token or length): release what was held back."""
        if self.stopped:
            return ""
        self._pending += self._dec.decode(b"", final=True)
        return self._emit(final=True)
