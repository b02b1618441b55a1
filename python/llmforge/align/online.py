"""`llmforge align` for the sampling methods: GRPO, PPO and rejection sampling, from a recipe.

    [align]
    method = "grpo" | "ppo" | "rejection"
    base = "runs/tiny/sft/model"        # model dir (HF layout + llmforge_tokenizer.json or tokenizer.json)
    task = "arithmetic" | "champ" | "prompts.jsonl"   # {"prompt", "answer"?} records
    n = 400                             # prompts (arithmetic: how many to draw)
    heldout = 40                        # last prompts: scored before and after training
    template = "chatml"                 # render prompts as a user turn ("none": raw text)
    reward = "exact" | "format" | "exact_format" | "model"
    format = "^\\s*-?\\d"               # regex of the format reward
    reward_model = "runs/reward/model"  # a RewardModel checkpoint dir, for reward = "model"
    out_dir = "runs/grpo"               # rejection: where sft.jsonl and preferences.jsonl go
    eval_samples = 4                    # sampled completions per held-out prompt in the evaluation
    [config]                            # GRPOConfig / PPOConfig / RejectionConfig fields

GRPO and PPO report the held-out mean reward (sampled at the training temperature,
eval_samples per prompt) and greedy reward before and after, and save the policy to
out_dir/model. Rejection sampling writes out_dir/sft.jsonl (best sample per prompt, OpenAI
messages) and out_dir/preferences.jsonl (best vs worst where they differ).
"""
from __future__ import annotations

import json
import os

import torch

METHODS = ("grpo", "ppo", "rejection")


@torch.no_grad()
def heldout_reward(model, tokenizer, prompts, reward_fn, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int = 0, samples: int = 4, seed: int = 1234, parts: dict | None = None) -> dict:
    """Mean reward of `samples` sampled completions per prompt, and of the greedy completion;
    parts: more {name: reward_fn} scored on the same completions (keys name_sampled, name_greedy)."""
    from ..generate.engine import generate
    from ..generate.sampling import SamplingParams
    from .grpo import stop_ids

    stop = stop_ids(tokenizer)
    pad = getattr(tokenizer, "pad_id", None) or 0
    ids = [tokenizer.encode(p["prompt"]) for p in prompts]
    out = {}
    for name, sp, k in (("sampled", SamplingParams(temperature=temperature, top_k=top_k), samples),
                        ("greedy", SamplingParams(temperature=0.0), 1)):
        rows = [i for i in ids for _ in range(k)]
        gen = generate(model, rows, max_new_tokens, sp, stop_ids=stop, seed=seed, pad_id=pad)
        recs = [p for p in prompts for _ in range(k)]
        texts = [tokenizer.decode([t for t in c if t not in stop]) for c in gen.tokens]
        out[f"reward_{name}"] = sum(float(reward_fn(r, t)) for r, t in zip(recs, texts)) / len(recs)
        for pname, fn in (parts or {}).items():
            out[f"{pname}_{name}"] = sum(float(fn(r, t)) for r, t in zip(recs, texts)) / len(recs)
        if name == "greedy":
            out["examples"] = [{"prompt": p.get("question", p["prompt"]), "completion": t}
                               for p, t in zip(prompts[:3], texts[:3])]
    return out


def _tokenizer(base: str):
    from ..tokenizer import load_tokenizer

    return load_tokenizer(base)


def run_online(recipe: dict) -> dict:
    from ..model import load_hf, save_hf
    from ..generate.load import model_chat_template
    from ..recipes import _fields, save_tokenizer
    from .grpo import GRPOConfig, grpo
    from .ppo import PPOConfig, ppo
    from .rejection import RejectionConfig, as_preferences, as_sft, rejection_sample
    from .tasks import load_prompts, make_reward, render_prompts, reward_model_reward

    a = dict(recipe.get("align", {}))
    method, base = a.get("method"), a.get("base")
    if method not in METHODS:
        raise ValueError(f"[align] method must be one of {METHODS} here, got {method!r}")
    if not base:
        raise ValueError("[align] needs base = a model directory")
    known = {"method", "base", "task", "n", "heldout", "template", "reward", "format", "reward_model",
             "out_dir", "eval_samples", "seed", "config", "format_warmup"}
    unknown = sorted(set(a) - known)
    if unknown:
        raise ValueError(f"[align] unknown keys {unknown}; known: {sorted(known)}")
    tok = _tokenizer(base)
    prompts = render_prompts(load_prompts(a.get("task", "arithmetic"), a.get("n"), int(a.get("seed", 0))),
                             a.get("template", "chatml"))
    kind = a.get("reward", "exact")
    if kind == "model":
        if not a.get("reward_model"):
            raise ValueError("[align] reward = 'model' needs reward_model = a RewardModel checkpoint dir")
        reward_fn = reward_model_reward(a["reward_model"], tok, a.get("template", "chatml") or "chatml")
    else:
        reward_fn = make_reward(kind, a.get("format", r"^\s*-?\d"))
    model = load_hf(base)
    section = recipe.get("config", a.get("config", {}))
    if method == "rejection":
        cfg = RejectionConfig(**_fields(RejectionConfig, section, "config"))
        out_dir = a.get("out_dir", "runs/rejection")
        os.makedirs(out_dir, exist_ok=True)
        rows = rejection_sample(model, tok, prompts, reward_fn, cfg)
        for r in rows:  # the records keep the question, not the rendered chat prompt
            r["prompt"] = r.get("question", r["prompt"])
        sft_rows, pref_rows = as_sft(rows), as_preferences(rows)
        for name, recs in (("sft.jsonl", sft_rows), ("preferences.jsonl", pref_rows)):
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                for rec in recs:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        mean = lambda xs: sum(xs) / max(1, len(xs))
        summary = {"prompts": len(rows), "sft_records": len(sft_rows), "preference_pairs": len(pref_rows),
                   "mean_score": mean([s for r in rows for s in r["scores"]]),
                   "mean_best_score": mean([r["best_score"] for r in rows]), "out_dir": out_dir}
    else:
        cls = GRPOConfig if method == "grpo" else PPOConfig
        cfg = cls(**_fields(cls, section, "config"))
        if "out_dir" in a and "out_dir" not in section:
            cfg.out_dir = a["out_dir"]
        out_dir = cfg.out_dir
        held = int(a.get("heldout", max(1, len(prompts) // 10)))
        if len(prompts) <= held:
            raise ValueError(f"only {len(prompts)} prompts for heldout={held}")
        train, evals = prompts[:-held], prompts[-held:]
        ev = lambda: heldout_reward(model, tok, evals, reward_fn, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                                    int(a.get("eval_samples", 4)))
        if int(a.get("format_warmup", 0)) > 0:  # a model that never answers in format gets no reward signal
            model.load_state_dict(format_warmup(model, tok, train, int(a["format_warmup"]), int(a.get("seed", 0))))
        before = ev()
        res = (grpo if method == "grpo" else ppo)(model, tok, train, reward_fn, cfg)
        after = ev()
        save_hf(model, os.path.join(out_dir, "model"))
        save_tokenizer(tok, os.path.join(out_dir, "model"), model_chat_template(base))
        summary = {"before": before, "after": after, "train_reward_first": res["reward_first"],
                   "train_reward_last": res["reward_last"], "steps": res["steps"],
                   "train_seconds": round(res["seconds"], 1), "out_dir": out_dir}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def format_warmup(model, tok, prompts, steps: int, seed: int = 0) -> dict:
    """A few supervised steps teaching the reply format only: each prompt answered with a random
    number from the task's answer range (never the right answer on purpose), so that the exact-answer
    reward starts near chance and a group of samples holds both right and wrong answers."""
    import random

    import torch

    from .data import collate, tokenize_pairs

    rng = random.Random(seed)
    answers = sorted({str(p["answer"]) for p in prompts if "answer" in p},
                     key=lambda s: (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s))
    if not answers:
        raise ValueError("format_warmup needs prompt records with an 'answer' field")
    k = min(16, len(prompts))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        batch = rng.sample(prompts, k)
        recs = [{"prompt": p.get("question", p["prompt"]), "chosen": rng.choice(answers), "rejected": "x"} for p in batch]
        tokens, labels = collate(tokenize_pairs(recs, tok), getattr(tok, "pad_id", 0) or 0)
        opt.zero_grad()
        model.loss(tokens[:k], labels[:k]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
