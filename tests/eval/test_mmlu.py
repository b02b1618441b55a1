"""MMLU by log-likelihood: lm-eval's prompt format, and scores equal to a hand computation (a plain
float64 forward over the concatenated tokens and a log_softmax) on 5 real questions."""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from llmforge.eval.loglik import encode_pair, loglikelihoods
from llmforge.eval.multiple_choice import mmlu, mmlu_items, score_items

from ..data.byte_tokenizer import ByteTokenizer
from .helpers import bpe_tokenizer, tiny_model


@functools.lru_cache(maxsize=1)
def _load():
    from llmforge.data.corpora import mmlu as load

    return load()


def _questions():
    from llmforge.data.corpora import CorpusMissing

    try:
        return _load()
    except CorpusMissing as e:
        pytest.skip(str(e))


def _hand_loglik(model64, tokenizer, context: str, continuation: str, max_len: int) -> float:
    """log p(continuation | context), computed the plain way."""
    whole = tokenizer.encode(context + continuation)
    n_ctx = len(tokenizer.encode(context))
    seq = whole[-(max_len + 1):]
    n_cont = len(whole) - n_ctx
    with torch.no_grad():
        logits = model64(torch.tensor([seq[:-1]]))[0]                   # (T, vocab), float64
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for j in range(len(seq) - n_cont, len(seq)):
        total += float(logp[j - 1, seq[j]])
    return total


def test_prompt_is_lm_eval_format():
    q = {"question": "  What is 2+2? ", "choices": ["3", "4", "5", "22"], "answer": 1, "subject": "elementary mathematics"}
    ex = {"question": "What is 1+1?", "choices": ["2", "3", "4", "5"], "answer": 0, "subject": "elementary mathematics"}
    [item] = mmlu_items([ex, q], shots=1)
    assert item.context == ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
                            "What is 1+1?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer: A\n\n"
                            "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert item.choices == ["A", "B", "C", "D"] and item.gold == 1 and item.delimiter == " "


# bpe: " A" is one token (one shared forward per question); byte: two tokens, with a one-shot
# example in front and a 160-token window, so most contexts are cut from the left
@pytest.mark.parametrize("tok_kind,shots,max_len", [("bpe", 0, 512), ("byte", 1, 160)])
def test_matches_hand_computed_loglikelihood_on_5_questions(tok_kind, shots, max_len):
    questions = _questions()
    tok = bpe_tokenizer() if tok_kind == "bpe" else ByteTokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=max_len)
    model64 = copy.deepcopy(model).double()
    r = mmlu(model, tok, limit=5, shots=shots, questions=questions, batch_size=3)
    items = mmlu_items(questions, limit=5, shots=shots)
    assert r["n"] == 5 and len({it.subject for it in items}) == 5      # round-robin over subjects
    acc = 0
    for it, got in zip(items, r["items"]):
        hand = [_hand_loglik(model64, tok, it.context, " " + c, max_len) for c in "ABCD"]
        assert got["loglik"] == pytest.approx(hand, abs=2e-4, rel=1e-5)
        best = max(range(4), key=lambda j: hand[j])
        second = sorted(hand)[-2]
        if hand[best] - second > 1e-3:                                   # not a near-tie
            assert got["pred"] == best
        acc += got["pred"] == it.gold
    assert r["acc"] == acc / 5
    assert r["acc_norm"] == r["acc"]                                    # one-letter choices: same ranking


def test_text_style_acc_norm_divides_by_choice_length():
    questions = _questions()
    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size)
    model64 = copy.deepcopy(model).double()
    r = mmlu(model, tok, limit=3, style="text", questions=questions, subjects=["astronomy", "virology"])
    items = mmlu_items(questions, limit=3, style="text", subjects=["astronomy", "virology"])
    assert {it.subject for it in items} == {"astronomy", "virology"}
    for it, got in zip(items, r["items"]):
        assert it.context.endswith("Answer:") and it.context.split("\n\n", 1)[1].startswith("Question: ")
        hand = [_hand_loglik(model64, tok, it.context, " " + c, 512) for c in it.choices]
        assert got["loglik"] == pytest.approx(hand, abs=2e-4, rel=1e-5)
        norm = [h / len(c) for h, c in zip(hand, it.choices)]
        assert got["pred_norm"] == max(range(4), key=lambda j: norm[j])


def test_shared_context_gives_the_same_scores_as_separate_requests():
    tok = ByteTokenizer()
    model = tiny_model(tok.vocab_size)
    reqs = [encode_pair(tok, "Question: x?\nAnswer:", " " + c) for c in ("A", "B", "long answer")]
    together = loglikelihoods(model, reqs, batch_size=2)
    alone = [loglikelihoods(model, [r])[0] for r in reqs]
    for (a, ga), (b, gb) in zip(together, alone):
        assert a == pytest.approx(b, abs=1e-5) and ga == gb


def test_encode_pair_moves_trailing_space_and_rejects_empty():
    tok = ByteTokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "B")
    assert bytes(ctx) == b"Answer:" and bytes(cont) == b" B"
    with pytest.raises(ValueError):
        encode_pair(tok, "Answer:", "")
    with pytest.raises(ValueError):
        encode_pair(tok, "", "B")


def test_subject_filter_and_bad_input():
    questions = _questions()
    items = mmlu_items(questions, limit=7, subjects="high_school_physics", shots=2)
    assert len(items) == 7 and {it.subject for it in items} == {"high school physics"}
    assert all(it.context.count("Answer:") == 3 for it in items)
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        mmlu_items(questions, subjects=["alchemy"])
    with pytest.raises(ValueError):
        mmlu_items(questions, style="cloze")
    tok = ByteTokenizer()
    from llmforge.eval.multiple_choice import MCItem

    with pytest.raises(ValueError, match="gold"):
        score_items(tiny_model(tok.vocab_size), tok, [MCItem("Q:", ["a", "b"], 2)])
