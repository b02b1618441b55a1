"""GRPO raises the mean verifiable reward on a toy arithmetic task; reward functions."""
from __future__ import annotations

import random

import torch

from llmforge.align.grpo import GRPOConfig, grpo
from llmforge.align.ppo import PPOConfig, ppo
from llmforge.align.rewards import exact_answer, format_reward, unit_tests
from llmforge.model import ModelConfig, Transformer

from ..data.byte_tokenizer import ByteTokenizer


def test_reward_functions():
    assert exact_answer("The answer is 1,234.", "1234") == 1.0
    assert exact_answer("x = 12", "13") == 0.0 and exact_answer("none", "1") == 0.0
    assert format_reward("42\n", r"^\d+\n") == 1.0 and format_reward("a42", r"^\d+\n") == 0.0
    code = "def add(a, b):\n    return a + b"
    assert unit_tests(code, "assert add(2, 3) == 5") == 1.0
    assert unit_tests(code, "assert add(2, 3) == 6") == 0.0
    assert unit_tests("while True: pass", "", timeout_s=1.0) == 0.0


def _format_trained_model(tok, rng):
    """A tiny model that answers 'a*0=' with a random digit: the format is known, the answer is not."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    model = Transformer(ModelConfig(vocab_size=263, dim=48, n_layers=2, n_heads=4, ffn_dim=96, max_seq_len=64))
    # teach the format first (a digit after '='), with random answers: reward starts near 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        seqs = [tok.encode(f"{rng.randrange(10)}*0={rng.randrange(10)}") for _ in range(32)]
        t = torch.tensor(seqs)
        lab = t.clone()
        lab[:, :4] = -100
        opt.zero_grad()
        model.loss(t, lab).backward()
        opt.step()
    return model


# "a*0=" -> 0: arithmetic a 2-layer model can learn within a unit test's budget
PROMPTS = [{"prompt": f"{a}*0=", "answer": "0"} for a in range(10)]


def _reward(rec, text):
    return exact_answer(text[:1], rec["answer"]) if text[:1].isdigit() else 0.0


def test_grpo_raises_reward_on_toy_arithmetic(tmp_path):
    tok = ByteTokenizer()
    model = _format_trained_model(tok, random.Random(0))
    cfg = GRPOConfig(out_dir=str(tmp_path), steps=25, prompts_per_step=4, group_size=8, max_new_tokens=1,
                     temperature=1.0, top_k=12, lr=1e-3, beta=0.0, progress=False)
    res = grpo(model, tok, PROMPTS, _reward, cfg)
    assert res["reward_last"] > res["reward_first"] + 0.2, res


def test_ppo_raises_reward_on_toy_arithmetic(tmp_path):
    tok = ByteTokenizer()
    model = _format_trained_model(tok, random.Random(1))
    cfg = PPOConfig(out_dir=str(tmp_path), steps=25, batch_prompts=32, max_new_tokens=1, top_k=12, lr=1e-3,
                    kl_beta=0.0, progress=False)
    res = ppo(model, tok, PROMPTS, _reward, cfg)
    assert res["reward_last"] > res["reward_first"] + 0.2, res
