"""`llmforge align` recipes for GRPO, PPO and rejection sampling; tasks, rewards, reward model checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.align.data import collate, synthetic_preferences, tokenize_pairs
from llmforge.align.reward import RewardModel
from llmforge.align.tasks import arithmetic_prompts, load_prompts, make_reward, render_prompts
from llmforge.data.chat import validate_conversation
from llmforge.model import ModelConfig, Transformer, save_hf
from llmforge.recipes import run_align
from llmforge.tokenizer import Tokenizer


def test_arithmetic_prompts_are_correct():
    recs = arithmetic_prompts(300, seed=5)
    for r in recs:
        a, op, b = r["prompt"][0], r["prompt"][1], r["prompt"][2]
        assert r["prompt"].endswith("=") and int(r["answer"]) == eval(f"{a}{op}{b}") >= 0
    assert {r["prompt"][1] for r in recs} == set("+-*")
    with pytest.raises(ValueError):
        arithmetic_prompts(3, ops="/")


def test_rewards_and_rendering():
    rec = render_prompts([{"prompt": "3+4=", "answer": "7"}], "chatml")[0]
    assert rec["question"] == "3+4=" and rec["prompt"].endswith("<|im_start|>assistant\n")
    exact, fmt, both = make_reward("exact"), make_reward("format"), make_reward("exact_format")
    assert exact(rec, "7 is it") == 1.0 and exact(rec, "8") == 0.0 and exact(rec, "it is 7") == 1.0
    assert fmt(rec, " 8") == 1.0 and fmt(rec, "it is 7") == 0.0
    assert both(rec, "7") == 1.0 and both(rec, "8") == 0.5 and both(rec, "it is 7") == 0.5 and both(rec, "no") == 0
    champ = {"prompt": "How many of the 6 boxes?", "answer": "239", "checker": "champ"}
    assert exact(champ, "There are 239 boxes of 6.") == 1.0 and exact(champ, "There are 6 boxes, 74 ways.") == 0.0
    with pytest.raises(ValueError):
        make_reward("bogus")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    texts = [f"{a}+{b}={a + b} and some words to merge" for a in range(10) for b in range(10)]
    tok = Tokenizer.train_from_iterator(texts, vocab_size=280)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, ffn_dim=64,
                                    max_seq_len=128, eos_id=tok.eos_id, pad_id=tok.pad_id))
    save_hf(model, str(d))
    tok.save(str(d / "llmforge_tokenizer.json"))
    return d


def test_grpo_and_ppo_recipes(base_dir, tmp_path):
    for method, cfg in (("grpo", {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 3}),
                        ("ppo", {"steps": 2, "batch_prompts": 4, "max_new_tokens": 3})):
        out = tmp_path / method
        res = run_align({"align": {"method": method, "base": str(base_dir), "task": "arithmetic", "n": 24,
                                   "heldout": 4, "reward": "exact_format", "eval_samples": 2},
                         "config": {**cfg, "out_dir": str(out), "progress": False}})
        for k in ("before", "after"):
            assert 0.0 <= res[k]["reward_sampled"] <= 1.0 and 0.0 <= res[k]["reward_greedy"] <= 1.0
        assert (out / "model" / "config.json").exists() and (out / "summary.json").exists()
        assert (out / "model" / "llmforge_tokenizer.json").exists()
    with pytest.raises(ValueError, match="unknown keys"):
        run_align({"align": {"method": "grpo", "base": str(base_dir), "bogus": 1}})


def test_rejection_recipe_writes_sft_and_preferences(base_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+1=", "answer": str(a + 1)}) + "\n" for a in range(6)))
    res = run_align({"align": {"method": "rejection", "base": str(base_dir), "task": str(prompts),
                               "reward": "format", "format": r"^\s*\d", "out_dir": str(tmp_path / "rej")},
                     "config": {"n": 6, "max_new_tokens": 4, "batch_prompts": 3}})
    sft = [json.loads(l) for l in open(tmp_path / "rej" / "sft.jsonl")]
    prefs = [json.loads(l) for l in open(tmp_path / "rej" / "preferences.jsonl")]
    assert res["prompts"] == 6 and len(sft) == 6 and len(prefs) == res["preference_pairs"]
    fmt = make_reward("format", r"^\s*\d")
    for rec in sft:
        validate_conversation(rec["messages"])
        assert rec["messages"][0]["content"].endswith("+1=")           # the question, not the chat rendering
    for p in prefs:
        assert fmt(p, p["chosen"]) > fmt(p, p["rejected"])


def test_reward_model_checkpoint_roundtrip_and_scoring(base_dir, tmp_path):
    res = run_align({"align": {"method": "reward", "base": str(base_dir), "data": "synthetic", "n": 40, "heldout": 8},
                     "config": {"out_dir": str(tmp_path / "rm"), "steps": 3, "progress": False}})
    assert 0 <= res["accuracy_after"] <= 1
    tok = Tokenizer.load(str(base_dir / "llmforge_tokenizer.json"))
    pairs = tokenize_pairs(synthetic_preferences(4, seed=9), tok)
    tokens, _ = collate(pairs, tok.pad_id)
    lengths = torch.tensor([len(p.chosen) for p in pairs] + [len(p.rejected) for p in pairs])
    rm = RewardModel.load(str(tmp_path / "rm" / "model"))
    again = RewardModel.load(str(tmp_path / "rm" / "model"))
    assert torch.equal(rm.score(tokens, lengths), again.score(tokens, lengths))
    assert rm.head.weight.abs().sum() > 0
    with pytest.raises(FileNotFoundError):
        RewardModel.load(str(base_dir))
    # GRPO scored by that reward model
    out = run_align({"align": {"method": "grpo", "base": str(base_dir), "task": "arithmetic", "n": 12, "heldout": 2,
                               "reward": "model", "reward_model": str(tmp_path / "rm" / "model"), "eval_samples": 1},
                     "config": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 2,
                                "out_dir": str(tmp_path / "g"), "progress": False}})
    assert isinstance(out["after"]["reward_sampled"], float)


def test_load_prompts_rejects_bad_records(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ValueError):
        load_prompts(str(p))


def test_format_warmup_teaches_the_reply_format(base_dir):
    from llmforge.align.online import _tokenizer, format_warmup, heldout_reward
    from llmforge.align.tasks import load_prompts, make_reward, render_prompts
    from llmforge.model import load_hf

    tok, model = _tokenizer(str(base_dir)), load_hf(str(base_dir))
    prompts = render_prompts(load_prompts("arithmetic", 40, 0), "chatml")
    fmt = make_reward("format")
    before = heldout_reward(model, tok, prompts[:8], fmt, 3, 1.0, 0, 2)["reward_greedy"]
    model.load_state_dict(format_warmup(model, tok, prompts, 60))
    after = heldout_reward(model, tok, prompts[:8], fmt, 3, 1.0, 0, 2)["reward_greedy"]
    assert after == 1.0 and after > before
    with pytest.raises(ValueError, match="answer"):
        format_warmup(model, tok, [{"prompt": "x"}], 1)
