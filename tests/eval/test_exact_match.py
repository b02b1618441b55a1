"""Generative exact match (champ): answer checking, and the whole path from prompt to score with a
model whose output is known."""
from __future__ import annotations

import pytest
import torch

from llmforge.eval.exact_match import answer_matches, champ_exact_match, champ_prompt, is_numeric
from llmforge.model import Transformer

from ..data.byte_tokenizer import ByteTokenizer
from .helpers import tiny_model


@pytest.mark.parametrize("completion,reference,ok", [
    (" 42", "42", True), (" 42\n", "42", True), ("The answer is 1,000.", "1000", True), (" 41", "42", False),
    ("-3/4 maybe", "-3/4", True), (" 3/4", "-3/4", False), ("no number", "42", False), (" 7 or 42", "42", False),
    (" No", "No", True), (" no.", "No", True), (" Yes", "No", False), ("", "No", False),
])
def test_answer_matches(completion, reference, ok):
    assert answer_matches(completion, reference) is ok


def test_is_numeric():
    assert is_numeric("239") and is_numeric("$1,000$") and is_numeric("-3/4")
    assert not is_numeric("2^(n-1)") and not is_numeric("No") and not is_numeric(None)


class Scripted(Transformer):
    """A real model (its KV cache is filled) whose logits are overridden to emit `script`."""

    def __init__(self, cfg, script):
        super().__init__(cfg)
        self.script, self.step = script, 0

    def forward_cached(self, tokens, position_ids, cache):
        logits = super().forward_cached(tokens, position_ids, cache)
        nxt = self.script[min(self.step, len(self.script) - 1)]
        self.step += 1
        logits[:, -1, nxt] += 1e4
        return logits


def test_scored_from_the_generated_answer():
    tok = ByteTokenizer()
    base = tiny_model(tok.vocab_size)
    model = Scripted(base.cfg, list(b" 42\nand 41"))
    model.load_state_dict(base.state_dict())
    problems = [{"id": "a", "problem": "What is six times seven?", "answer": "42"},
                {"id": "b", "problem": "What is 41 + 2?", "answer": "43"},
                {"id": "c", "problem": "Is it?", "answer": "No"}]
    r = champ_exact_match(model.eval(), tok, max_new_tokens=8, problems=problems, batch_size=2)
    assert r["n"] == 2                                   # the non-numeric reference is left out
    assert [it["completion"] for it in r["items"]] == [" 42", " 42"]   # cut at the end of the line
    assert [it["correct"] for it in r["items"]] == [True, False]
    assert r["exact_match"] == 0.5


def test_greedy_completion_matches_a_step_by_step_decode():
    tok = ByteTokenizer()
    model = tiny_model(tok.vocab_size, std=0.05)
    problems = [{"id": str(i), "problem": p, "answer": "1"} for i, p in enumerate(["Add 1 and 0.", "What is 3-2?"])]
    r = champ_exact_match(model, tok, max_new_tokens=6, problems=problems)
    for p, it in zip(problems, r["items"]):
        seq = tok.encode(champ_prompt(p["problem"]))
        out = []
        with torch.no_grad():
            for _ in range(6):
                t = int(model(torch.tensor([seq]))[0, -1].argmax())
                if t == tok.token_to_id(tok.eos_token):
                    break
                seq.append(t)
                out.append(t)
        assert it["completion"] == tok.decode(out).split("\n")[0]
        assert it["correct"] == answer_matches(it["completion"], "1")


def test_real_champ_problems_load_and_run():
    from llmforge.data.corpora import CorpusMissing

    tok = ByteTokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    try:
        r = champ_exact_match(model, tok, limit=3, max_new_tokens=4)
    except CorpusMissing as e:
        pytest.skip(str(e))
    assert r["n"] == 3 and all(is_numeric(it["answer"]) for it in r["items"])
    assert 0.0 <= r["exact_match"] <= 1.0
