"""Rejection sampling (best-of-N): sample N answers per prompt, score them, keep the best.

    rows = rejection_sample(model, tokenizer, prompts, score_fn, RejectionConfig(n=8))
    write_jsonl("sft.jsonl", as_sft(rows)); write_jsonl("prefs.jsonl", as_preferences(rows))

score_fn(record, completion_text) -> float: a verifiable reward or a reward model's score
(reward_model_scorer). Each row keeps the prompt, all samples and their scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config_check import check_config
from ..generate.engine import generate
from ..generate.sampling import SamplingParams
from .grpo import stop_ids


@dataclass
class RejectionConfig:
    n: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    batch_prompts: int = 4

    def __post_init__(self):
        check_config(self, positive=("n", "max_new_tokens", "batch_prompts"), fractions=("top_p",))


def rejection_sample(model, tokenizer, prompts, score_fn, cfg: RejectionConfig) -> list[dict]:
    stop = stop_ids(tokenizer)
    pad = getattr(tokenizer, "pad_id", None) or 0
    sp = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p)
    rows = []
    for start in range(0, len(prompts), cfg.batch_prompts):
        chunk = prompts[start:start + cfg.batch_prompts]
        ids = [tokenizer.encode(r["prompt"]) for r in chunk for _ in range(cfg.n)]
        gen = generate(model, ids, cfg.max_new_tokens, sp, stop_ids=stop, seed=cfg.seed + start, pad_id=pad)
        texts = [tokenizer.decode([t for t in c if t not in stop]) for c in gen.tokens]
        for j, rec in enumerate(chunk):
            samples = texts[j * cfg.n:(j + 1) * cfg.n]
            scores = [float(score_fn(rec, s)) for s in samples]
            order = sorted(range(cfg.n), key=lambda k: -scores[k])
            rows.append({**rec, "samples": samples, "scores": scores, "best": samples[order[0]],
                         "worst": samples[order[-1]], "best_score": scores[order[0]], "worst_score": scores[order[-1]]})
    return rows


def as_sft(rows, min_score: float | None = None) -> list[dict]:
    """OpenAI-messages records of the best sample of each prompt (optionally only above min_score)."""
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["best"]}]}
            for r in rows if min_score is None or r["best_score"] >= min_score]


def as_preferences(rows) -> list[dict]:
    """{prompt, chosen, rejected} from best and worst samples where their scores differ."""
    return [{"prompt": r["prompt"], "chosen": r["best"], "rejected": r["worst"]}
            for r in rows if r["best_score"] > r["worst_score"]]


def reward_model_scorer(rm, tokenizer, template: str = "chatml"):
    """A score_fn from a trained RewardModel (align.reward)."""
    from ..data.chat import tokenize_chat

    @torch.no_grad()
    def score(rec, text):
        ex = tokenize_chat([{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": text}],
                           tokenizer, template)
        t = torch.tensor([ex.input_ids])
        return float(rm.score(t, torch.tensor([t.shape[1]]))[0])

    return score
