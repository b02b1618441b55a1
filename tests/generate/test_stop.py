"""TextStream: streamed deltas equal the offline answer (decode everything, cut at the first stop string)."""
from __future__ import annotations

import random

import pytest

from llmforge.generate.stop import TextStream, normalize_stop

# a toy byte-level vocabulary: ids 0..255 are bytes, then some multi-byte pieces (incl. split UTF-8)
PIECES = [bytes([i]) for i in range(256)] + [b"ab", b"\n\n", b"User:", "é".encode(), "€".encode()[:2],
                                             "€".encode()[2:], b"<END>", b" the"]


def decode_bytes(ids):
    return b"".join(PIECES[i] for i in ids)


def offline(ids, stop, skip=()):
    """Decode each token prefix whole; the first prefix whose text holds a stop string ends the
    output just before the earliest such string."""
    ids = [i for i in ids if i not in skip]
    for k in range(1, len(ids) + 1):
        text = decode_bytes(ids[:k]).decode("utf-8", errors="replace")
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[:min(hits)], True
    return decode_bytes(ids).decode("utf-8", errors="replace"), False


def stream(ids, stop, skip=()):
    ts = TextStream(decode_bytes, stop, skip)
    out = ""
    for i in ids:
        out += ts.feed(i)
        if ts.stopped:
            break
    out += ts.finish()
    assert out == ts.text
    return out, ts.stopped


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_match_offline(seed):
    rng = random.Random(seed)
    alphabet = list(range(97, 100)) + [10, 32] + list(range(256, len(PIECES)))
    ids = [rng.choice(alphabet) for _ in range(rng.randint(1, 40))]
    full = decode_bytes(ids).decode("utf-8", errors="replace")
    stop = []
    for _ in range(rng.randint(0, 3)):   # substrings of the text (so they hit), or random short strings
        if full and rng.random() < 0.7:
            a = rng.randrange(len(full))
            stop.append(full[a:a + rng.randint(1, 4)])
        else:
            stop.append(rng.choice(["ab", "\n\n", "zz", "User:", "é", "the"]))
    stop = [x for x in stop if "\ufffd" not in x]   # a half character is never matched
    assert stream(ids, stop) == offline(ids, stop)


def test_holds_back_a_possible_stop_and_splits_utf8():
    ts = TextStream(decode_bytes, ["User:"])
    assert ts.feed(ord("h")) == "h"
    assert ts.feed(ord("U")) == ""            # could start "User:"
    assert ts.feed(ord("s")) == ""
    assert ts.feed(ord("x")) == "Usx"         # it did not
    assert ts.feed(PIECES.index("€".encode()[:2])) == ""   # half a character is never shown
    assert ts.feed(PIECES.index("€".encode()[2:])) == "€"
    assert ts.feed(PIECES.index(b"User:")) == "" and ts.stopped and ts.stop_string == "User:"
    assert ts.text == "hUsx€" and ts.feed(ord("a")) == "" and ts.finish() == ""


def test_skip_ids_and_validation():
    end = PIECES.index(b"<END>")
    assert stream([ord("o"), ord("k"), end], [], skip={end}) == ("ok", False)
    assert normalize_stop(None) == [] and normalize_stop("x") == ["x"]
    with pytest.raises(ValueError):
        normalize_stop([""])
    with pytest.raises(ValueError):
        normalize_stop([3])


def test_text_decoder_leaves_special_tokens_out():
    from llmforge.generate.stop import text_decoder
    from llmforge.tokenizer import Tokenizer

    tok = Tokenizer.train_from_iterator(["hello world " * 20], vocab_size=270)
    ids = tok.encode("hello<|bos|> world<|im_end|>")
    ts = TextStream(text_decoder(tok))
    text = "".join(ts.feed(i) for i in ids) + ts.finish()
    assert text == "hello world" and tok.decode(ids) == "hello<|bos|> world<|im_end|>"
    assert TextStream(text_decoder(tok, skip_special=False)).feed(tok.token_to_id("<|bos|>")) == "<|bos|>"
