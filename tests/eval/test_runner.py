"""evaluate_all end to end on a tiny model: every task runs, results land in JSON and Markdown, and
the `llmforge eval` command does the same from a saved model directory."""
from __future__ import annotations

import json

import pytest
import torch

from llmforge.align.reward import RewardModel
from llmforge.eval import EvalConfig, evaluate_all, write_results
from llmforge.eval.runner import TASKS

from .helpers import bpe_tokenizer, tiny_model


def _packages_present():
    from llmforge.data.corpora import CorpusMissing, champ_problems, mmlu
    from llmforge.eval.humaneval import humaneval_problems

    try:
        mmlu(), champ_problems(), humaneval_problems()
    except CorpusMissing as e:
        pytest.skip(str(e))


def _small_cfg(**kw):
    return EvalConfig(mmlu_limit=4, champ_limit=3, champ_max_new_tokens=4, humaneval_limit=1, humaneval_n=2,
                      humaneval_k=[1, 2], humaneval_max_new_tokens=8, timeout_s=3.0, **kw)


def test_evaluate_all_writes_json_and_markdown(tmp_path):
    _packages_present()
    from llmforge.data.corpora import mmlu

    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    rm = RewardModel(tiny_model(tok.vocab_size, max_seq_len=256, seed=1))
    q = next(x for x in mmlu() if x["subject"] == "astronomy")
    # MMLU item 0 (the subject's first question) leaks into training, with its choices
    planted = "Some training text. " + q["question"] + "\n" + "\n".join(q["choices"]) + " More text after it."
    res = evaluate_all(model, tok, _small_cfg(mmlu_subjects=[q["subject"]]), str(tmp_path),
                       heldout_texts=["To be, or not to be.", "that is the question"],
                       train_texts=["Clean text about nothing in particular.", planted], reward_model=rm, progress=False)
    t = res["tasks"]
    assert set(t) == set(TASKS)
    assert t["perplexity"]["bytes"] == len("To be, or not to be.") + len("that is the question")
    assert t["mmlu"]["n"] == 4 and 0 <= t["mmlu"]["acc"] <= 1
    assert t["champ"]["n"] == 3 and len(t["champ"]["items"]) == 3
    assert t["humaneval"]["n_problems"] == 1 and len(t["humaneval"]["problems"][0]["results"]) == 2
    assert set(t["humaneval"]) >= {"pass@1", "pass@2"}
    assert t["judge"]["n"] == 3 and len(t["judge"]["scores"]) == 3 and "win_rate" in t["judge"]
    c = t["contamination"]
    assert c["benchmarks"]["mmlu"]["contaminated"] == 1 and c["benchmarks"]["mmlu"]["examples"] == [0]
    assert c["benchmarks"]["champ"]["contaminated"] == 0 and c["training_docs_hit"] == 1
    # the files
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["tasks"]["mmlu"]["acc"] == t["mmlu"]["acc"]
    assert on_disk["tasks"]["humaneval"]["problems"][0]["results"] == t["humaneval"]["problems"][0]["results"]
    md = (tmp_path / "eval.md").read_text()
    assert f"| mmlu | acc | {t['mmlu']['acc']:.4f} | 4 |" in md
    assert f"| perplexity | bits_per_byte | {t['perplexity']['bits_per_byte']:.4f} |" in md
    assert "| contamination (13-gram) | mmlu contaminated | 1 / 4 |" in md
    assert "## MMLU by subject" in md and "## HumanEval samples" in md


def test_judge_is_skipped_without_a_reward_model_and_tasks_are_selectable(tmp_path):
    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=128)
    res = evaluate_all(model, tok, EvalConfig(tasks=["perplexity", "judge"]), str(tmp_path),
                       heldout_texts=["abc def"], progress=False)
    assert set(res["tasks"]) == {"perplexity", "judge"}
    assert "skipped" in res["tasks"]["judge"]
    assert "| judge | skipped |" in (tmp_path / "eval.md").read_text()
    with pytest.raises(ValueError, match="unknown eval tasks"):
        EvalConfig(tasks=["mmlu", "gsm8k"])
    with pytest.raises(ValueError):
        EvalConfig(humaneval_n=1, humaneval_k=[1, 2])


def test_write_results_handles_non_json_types(tmp_path):
    paths = write_results({"tasks": {"x": {"n": 1, "t": torch.tensor([1.5]), "s": {3}}}}, str(tmp_path), name="r")
    assert json.loads(open(paths["json"]).read())["tasks"]["x"]["t"] == [1.5]
    assert open(paths["markdown"]).read().startswith("# Evaluation")


def test_cli_eval_on_a_saved_model(tmp_path, capsys):
    _packages_present()
    from llmforge.cli import main
    from llmforge.model import save_hf

    tok = bpe_tokenizer()
    model = tiny_model(tok.vocab_size, max_seq_len=256)
    save_hf(model, str(tmp_path / "model"))
    tok.save(str(tmp_path / "model" / "llmforge_tokenizer.json"))
    recipe = tmp_path / "eval.toml"
    recipe.write_text(f'[eval]\nmodel = "{tmp_path / "model"}"\ntasks = ["mmlu"]\nmmlu_limit = 3\n')
    assert main(["eval", str(recipe), "--out", str(tmp_path / "out"), "--mmlu-shots", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mmlu"]["n"] == 3
    res = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert res["config"]["mmlu_shots"] == 1 and res["tasks"]["mmlu"]["shots"] == 1
    assert (tmp_path / "out" / "eval.md").exists()
