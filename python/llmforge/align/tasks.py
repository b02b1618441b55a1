"""Prompt sets with verifiable answers and the reward functions the online methods score them with.

    prompts = arithmetic_prompts(200, seed=0)          # [{"prompt", "answer"}], toy arithmetic
    prompts = champ_prompts()                          # champ problems with checkable reference answers
    prompts = load_prompts("my.jsonl")                 # {"prompt", "answer"?} records
    reward = make_reward("exact")                      # (record, completion) -> float
    rendered = render_prompts(prompts, "chatml")       # the user turn + the assistant header

Rewards: "exact" (the first number of the completion equals the record's answer; for champ
records with a non-numeric reference, align.champ.verify_summary), "format" (the completion
matches a regex, default: starts with a number), "exact_format" (mean of the two: a denser
signal for a model that rarely answers with a number at first), or a RewardModel (see
reward_model_reward).
"""
from __future__ import annotations

import random
import re

from .rewards import exact_answer, format_reward

NUMBER_FIRST = r"^\s*-?\d"


def arithmetic_prompts(n: int, seed: int = 0, ops: str = "+-*", max_operand: int = 9) -> list[dict]:
    """n prompts "a op b=" with single-digit (or up to max_operand) operands and their answers;
    subtraction keeps a >= b so answers are non-negative."""
    if n < 1 or max_operand < 1 or not ops or set(ops) - set("+-*"):
        raise ValueError("arithmetic_prompts needs n >= 1, max_operand >= 1 and ops drawn from '+-*'")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        op = rng.choice(ops)
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        val = a + b if op == "+" else a - b if op == "-" else a * b
        out.append({"prompt": f"{a}{op}{b}=", "answer": str(val)})
    return out


def champ_prompts() -> list[dict]:
    """champ problems whose reference answer can be checked automatically (a number or yes/no)."""
    from ..data.corpora import champ_problems
    from .champ import reference_values

    return [{"prompt": p["problem"], "answer": p["answer"], "id": p["id"], "checker": "champ"}
            for p in champ_problems() if p["answer"] and reference_values(p["answer"]) is not None]


def load_prompts(spec: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """"arithmetic", "champ" or a JSON(L) path of {"prompt", "answer"?} records."""
    if spec == "arithmetic":
        return arithmetic_prompts(n or 400, seed)
    if spec == "champ":
        return champ_prompts()[:n] if n else champ_prompts()
    from ..data.io import read_json_records

    recs = list(read_json_records(spec, required=("prompt",)))
    for i, r in enumerate(recs):
        if not isinstance(r["prompt"], str) or not r["prompt"]:
            raise ValueError(f"{spec}: record {i}: 'prompt' must be a non-empty string")
    return recs[:n] if n else recs


def render_prompts(prompts: list[dict], template: str | None) -> list[dict]:
    """Copies whose "prompt" is the chat rendering of the user turn plus the assistant header
    (the model then answers as in SFT); the original text is kept as "question".
    template None or "none": unchanged (raw completion, as for a pretrained model)."""
    if not template or template == "none":
        return [dict(p) for p in prompts]
    from ..data.chat import render_chat

    return [{**p, "question": p["prompt"],
             "prompt": render_chat([{"role": "user", "content": p["prompt"]}], template, add_generation_prompt=True)}
            for p in prompts]


def _exact(rec: dict, text: str) -> float:
    if "answer" not in rec:
        raise ValueError("the exact-answer reward needs an 'answer' field in every prompt record")
    if rec.get("checker") == "champ":
        from .champ import verify_summary

        return float(verify_summary(text, str(rec["answer"]), rec.get("question", rec["prompt"])) is True)
    return exact_answer(text, str(rec["answer"]))


def make_reward(kind: str, pattern: str = NUMBER_FIRST):
    """A reward function (record, completion text) -> float for kind exact | format | exact_format."""
    re.compile(pattern)
    if kind == "exact":
        return _exact
    if kind == "format":
        return lambda rec, text: format_reward(text, pattern)
    if kind == "exact_format":
        return lambda rec, text: 0.5 * (_exact(rec, text) + format_reward(text, pattern))
    raise ValueError(f"unknown reward {kind!r} (exact, format, exact_format, or model = a RewardModel dir)")


def reward_model_reward(path: str, tokenizer, template: str = "chatml"):
    """A reward function scoring (question, completion) with the RewardModel checkpoint at path."""
    from .rejection import reward_model_scorer
    from .reward import RewardModel

    score = reward_model_scorer(RewardModel.load(path), tokenizer, template)
    return lambda rec, text: score({"prompt": rec.get("question", rec["prompt"])}, text)
