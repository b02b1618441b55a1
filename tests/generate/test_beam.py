"""Beam search: exact against exhaustive search when the beam holds every hypothesis, and the same
hypotheses and scores as transformers' beam search on the same weights."""
from __future__ import annotations

import itertools

import pytest
import torch

from llmforge.generate.beam import beam_search
from llmforge.generate.cache import KVCache
from llmforge.model import ModelConfig, Transformer


def _model(vocab, seed=0, std=0.3):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                                max_seq_len=64)).eval()
    m.reset_parameters(std=std)          # peaked next-token distributions: no near-ties
    return m


@torch.no_grad()
def _logprobs(model, prompt, seqs, L):
    """Sum of log p(seq | prompt) for each seq, from one full (uncached) forward over padded rows:
    causal attention makes the padding after a sequence irrelevant to its own positions."""
    x = torch.tensor([prompt + s + [1] * (L - len(s)) for s in seqs])
    lp = torch.log_softmax(model(x).double(), -1)
    return [sum(float(lp[r, len(prompt) - 1 + i, t]) for i, t in enumerate(s)) for r, s in enumerate(seqs)]


def _all_hypotheses(V, L, eos):
    """Every finished sequence: ends in eos (none before), or reaches L tokens."""
    for n in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=n):
            if any(t == eos for t in seq[:-1]):
                continue
            if seq[-1] == eos or n == L:
                yield list(seq)


@pytest.mark.parametrize("length_penalty,early", [(1.0, False), (2.0, "never"), (-0.5, True)])
def test_full_width_beam_is_exhaustive_search(length_penalty, early):
    V, L, eos = 5, 4, 0
    model = _model(V, seed=3)
    prompt = [1, 3, 2]
    hyps = list(_all_hypotheses(V, L, eos))
    scored = sorted(((lp / len(h) ** length_penalty, h) for lp, h in zip(_logprobs(model, prompt, hyps, L), hyps)),
                    key=lambda x: -x[0])
    res = beam_search(model, prompt, num_beams=V ** L, max_new_tokens=L, length_penalty=length_penalty,
                      early_stopping=early, eos_ids={eos})
    assert len(res.sequences) == len(hyps)           # the beam held every hypothesis
    assert res.sequences[:20] == [h for _, h in scored[:20]]
    torch.testing.assert_close(torch.tensor(res.scores, dtype=torch.float64),
                               torch.tensor([s for s, _ in scored], dtype=torch.float64), atol=1e-4, rtol=1e-5)
    narrow = beam_search(model, prompt, num_beams=2, max_new_tokens=L, length_penalty=length_penalty,
                         early_stopping=early, eos_ids={eos})
    assert narrow.scores[0] <= scored[0][0] + 1e-6


class _Letters:
    """A 5-token vocabulary of letters; id 0 is the eos token (no text)."""
    PIECES = [b"", b"a", b"b", b"ca", b"d"]

    def decode_bytes(self, ids):
        return b"".join(self.PIECES[i] for i in ids)


def test_stop_strings_end_hypotheses_exactly():
    V, L, eos, stop = 5, 4, 0, "ab"
    model, tok = _model(V, seed=5), _Letters()
    prompt = [2, 4]

    def ended(seq):   # eos, or the text first holds the stop string at this token
        return seq[-1] == eos or stop in tok.decode_bytes(seq).decode()

    hyps = [list(h) for n in range(1, L + 1) for h in itertools.product(range(V), repeat=n)
            if not any(ended(list(h[:k])) for k in range(1, n)) and (ended(list(h)) or n == L)]
    scored = sorted(zip(_logprobs(model, prompt, hyps, L), hyps), key=lambda x: -x[0] / len(x[1]))
    res = beam_search(model, prompt, num_beams=V ** L, max_new_tokens=L, eos_ids={eos}, stop=[stop], tokenizer=tok)
    assert res.sequences[:10] == [h for _, h in scored[:10]]
    assert any(stop in tok.decode_bytes(h).decode() for h in res.sequences[:10])
    for seq, text in zip(res.sequences, res.texts):
        full = tok.decode_bytes(seq).decode()
        assert text == (full[:full.index(stop)] if stop in full else full)


def test_cache_reorder_follows_parents():
    model = _model(11)
    cache = KVCache(model.cfg, 3, 10)
    cache.set_valid(torch.ones(3, 2, dtype=torch.bool))
    toks = torch.tensor([[1, 2], [3, 4], [5, 6]])
    model.forward_cached(toks, torch.arange(2).expand(3, 2), cache)
    cache.reorder(torch.tensor([2, 2, 0, 1]))
    cache.set_valid(torch.ones(4, 1, dtype=torch.bool))
    got = model.forward_cached(torch.tensor([[7], [8], [7], [7]]), torch.full((4, 1), 2), cache)[:, -1]
    full = model(torch.tensor([[5, 6, 7], [5, 6, 8], [1, 2, 7], [3, 4, 7]]))[:, -1]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=1e-5)


def test_rejects_bad_arguments():
    model = _model(11)
    for kw in ({"num_beams": 0}, {"max_new_tokens": 0}, {"early_stopping": "sometimes"}, {"stop": ["x"]}):
        with pytest.raises(ValueError):
            beam_search(model, [1, 2], **kw)
    with pytest.raises(ValueError, match="max_seq_len"):
        beam_search(model, [1] * 60, max_new_tokens=10)
    with pytest.raises(ValueError, match="vocabulary"):
        beam_search(model, [11])


transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("num_beams,length_penalty,early", [(4, 1.0, False), (3, 0.8, True), (5, 0.5, "never"),
                                                            (2, -1.0, False)])
def test_matches_transformers(tmp_path, num_beams, length_penalty, early):
    from llmforge.model.hf import save_hf

    V = 37
    model = _model(V, seed=num_beams, std=0.2)
    save_hf(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = [4, 9, 17, 2]
    n = 10
    # an eos that beams actually meet: the third token of the best hypothesis found without one
    eos = beam_search(model, prompt, num_beams=num_beams, max_new_tokens=n).sequences[0][2]
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, num_beams=num_beams,
                          num_return_sequences=num_beams, length_penalty=length_penalty, early_stopping=early,
                          eos_token_id=eos, pad_token_id=eos, return_dict_in_generate=True, output_scores=True)
    hf_seqs = []
    for row in out.sequences[:, len(prompt):].tolist():
        hf_seqs.append(row[:row.index(eos) + 1] if eos in row else row)
    ours = beam_search(model, prompt, num_beams=num_beams, max_new_tokens=n, length_penalty=length_penalty,
                       early_stopping=early, eos_ids={eos})
    assert ours.sequences == hf_seqs
    torch.testing.assert_close(torch.tensor(ours.scores, dtype=torch.float64), out.sequences_scores.double(),
                               atol=1e-4, rtol=1e-4)
    assert any(s[-1] == eos for s in ours.sequences)      # the test exercised eos
