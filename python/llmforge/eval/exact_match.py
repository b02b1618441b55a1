"""Generative exact match on champ's competition math problems (the `champ-dataset` package).

    r = champ_exact_match(model, tokenizer, limit=20, max_new_tokens=16)
    r["exact_match"], r["n"], r["items"]     # items: id, answer, completion, correct

The model answers greedily after "Problem: ...\\nAnswer:" (or, with template="chatml" etc., as
the assistant turn of a chat), up to the end of the line / turn. A completion is right when
its first number equals the reference answer (llmforge.align.rewards.exact_answer, the same
check GRPO rewards), so only problems whose reference answer is a plain number (85 of 270)
are used by default (numeric_only=True); otherwise non-numeric references are compared with
the completion's first line after normalize_answer.
"""
from __future__ import annotations

from ..align.rewards import _NUM, exact_answer, normalize_answer


def is_numeric(answer) -> bool:
    return isinstance(answer, str) and _NUM.fullmatch(normalize_answer(answer)) is not None


def answer_matches(completion: str, reference: str) -> bool:
    """Numeric references: the first number in the completion; others: its first line, normalised."""
    if is_numeric(reference):
        return exact_answer(completion, reference) == 1.0
    first = completion.strip().split("\n", 1)[0] if completion.strip() else ""
    return normalize_answer(first).lower() == normalize_answer(reference).lower()


def champ_prompt(problem: str) -> str:
    return f"Problem: {problem.strip()}\nAnswer:"


def champ_exact_match(model, tokenizer, limit: int | None = 20, max_new_tokens: int = 16,
                      numeric_only: bool = True, template: str | None = None, batch_size: int = 8,
                      problems: list[dict] | None = None) -> dict:
    from .generation import complete

    if problems is None:
        from ..data.corpora import champ_problems

        problems = champ_problems()
    problems = [p for p in problems if p.get("answer") and (is_numeric(p["answer"]) or not numeric_only)]
    problems = problems[:limit] if limit is not None else problems
    if not problems:
        raise ValueError("no champ problem to evaluate")
    if template:
        from ..data.chat import END_OF_TURN, render_chat

        prompts = [render_chat([{"role": "user", "content": p["problem"]}], template, add_generation_prompt=True,
                               bos_token=getattr(tokenizer, "bos_token", "") or "",
                               eos_token=getattr(tokenizer, "eos_token", "") or "") for p in problems]
        eot = END_OF_TURN.get(template)
        stop_ids = [tokenizer.token_to_id(eot)] if eot and tokenizer.token_to_id(eot) is not None else []
        stop_strings = ()
    else:
        prompts = [champ_prompt(p["problem"]) for p in problems]
        stop_ids, stop_strings = [], ("\n",)
    texts = complete(model, tokenizer, prompts, max_new_tokens, temperature=0.0, batch_size=batch_size,
                     stop_strings=stop_strings, stop_ids=stop_ids)
    items = [{"id": p.get("id"), "problem": p["problem"], "answer": p["answer"], "completion": t,
              "correct": answer_matches(t, p["answer"])} for p, t in zip(problems, texts)]
    return {"n": len(items), "exact_match": sum(it["correct"] for it in items) / len(items),
            "template": template, "items": items}
