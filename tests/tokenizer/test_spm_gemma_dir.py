"""A Gemma-2-style model directory (a SentencePiece tokenizer in Gemma's form: no space prefix,
<start_of_turn> / <end_of_turn> control tokens; a Gemma 2 model with soft-caps and sandwich norms),
through the library: chat masks with Gemma's template as transformers builds them, greedy
generation equal to transformers' generate, serving, and LoRA SFT."""
import json

import pytest
import torch

from llmforge.data.chat import TEMPLATES, lint_chat_template, render_chat, tokenize_chat
from llmforge.model import ModelConfig, Transformer
from llmforge.tokenizer import SpmTokenizer, Tokenizer

pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

GEMMA_CHAT = TEMPLATES["gemma"]


@pytest.fixture(scope="module")
def gemma_dir(sp_dirs, tmp_path_factory):
    from llmforge.model.hf import save_hf

    d = tmp_path_factory.mktemp("gemma2")
    tj = json.loads((sp_dirs["legacy"] / "tokenizer.json").read_text())
    tj["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    tj["decoder"]["decoders"] = tj["decoder"]["decoders"][:3]   # no Strip: Gemma has no space prefix
    n = len(tj["model"]["vocab"])
    tj["added_tokens"] += [{"id": n + i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
                           for i, t in enumerate(["<start_of_turn>", "<end_of_turn>"])]
    (d / "tokenizer.json").write_text(json.dumps(tj))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
         "chat_template": GEMMA_CHAT, "tokenizer_class": "GemmaTokenizer"}))
    tok = Tokenizer.from_hf_json(d / "tokenizer.json")
    cfg = ModelConfig(vocab_size=len(tok), dim=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=24, ffn_dim=96,
                      max_seq_len=256, norm_eps=1e-6, hidden_act="gelu_tanh", embed_scale=True, norm_plus_one=True,
                      tie_embeddings=True, sandwich_norm=True, attn_scale=24 ** -0.5, attn_softcap=50.0,
                      final_softcap=30.0, sliding_window=24,   # generation runs past it
                      layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                      bos_id=tok.bos_id, eos_id=tok.eos_id)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
            else:
                p.mul_(4)   # peaked enough for greedy decoding to be unambiguous
    save_hf(model, d)
    return d, model, tok


def _hf_tok(d):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")
    ref.chat_template = GEMMA_CHAT
    return ref


def test_chat_masks_match_transformers(gemma_dir, corpus):
    d, _, tok = gemma_dir
    assert isinstance(tok, SpmTokenizer) and tok.prefix == "never"
    ref = _hf_tok(d)
    held = [t for t in corpus["held"] if len(t.strip()) > 3]
    for k in range(0, 50, 5):
        conv = [{"role": "system", "content": held[k]}, {"role": "user", "content": held[k + 1] + " \u4e2d"},
                {"role": "assistant", "content": "  " + held[k + 2]}, {"role": "user", "content": held[k + 3]},
                {"role": "assistant", "content": held[k + 4] + " \U0001F600"}]
        ex = tokenize_chat(conv, tok, "gemma")
        text = render_chat(conv, "gemma", False, "<s>", "</s>")
        assert text.startswith("<s><start_of_turn>user\n" + held[k].strip() + "\n\n")
        assert ex.input_ids == ref.apply_chat_template(conv, tokenize=True, return_dict=False)
        learned = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100])
        assert learned.count("<end_of_turn>") == 2 and held[k + 2].strip() in learned
        assert "<start_of_turn>" not in learned and held[k + 1] not in learned
    assert lint_chat_template("gemma", tok) == []
    with pytest.raises(Exception, match="alternate"):
        render_chat([{"role": "assistant", "content": "hi"}], "gemma")


def test_greedy_generation_equals_transformers(gemma_dir, corpus):
    from llmforge.generate.engine import generate
    from llmforge.generate.load import chat_template_for, load_for_generation, prompt_ids, stop_token_ids
    from llmforge.generate.sampling import SamplingParams
    from llmforge.generate.serving_engine import Engine

    d, model, tok = gemma_dir
    m2, tok2 = load_for_generation(str(d))
    assert m2.cfg == model.cfg and chat_template_for(str(d), None) == "gemma"
    assert tok2.token_to_id("<end_of_turn>") in stop_token_ids(tok2, "gemma")
    hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    lines = [t for t in corpus["held"] if len(t) > 25]
    prompts = [prompt_ids(tok2, lines[i]) for i in (3, 40)]
    greedy = SamplingParams(temperature=0)
    eng = Engine(m2, num_blocks=64, block_size=16, max_batch=4, native=False)
    rids = [eng.submit(p, max_new_tokens=20, params=greedy) for p in prompts]
    served = eng.run()
    for p, rid in zip(prompts, rids):
        assert len(p) + 20 > m2.cfg.sliding_window
        ref = hf.generate(torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(p):].tolist()
        assert generate(m2, [p], 20, greedy).tokens[0] == ref
        assert generate(m2, [p], 20, greedy, native=False).tokens[0] == ref
        assert served[rid].tokens == ref


def test_lora_sft_with_gemma_template(gemma_dir, tmp_path):
    """LoRA SFT of the Gemma-2-style directory on chitchat with the base's own (Gemma) template:
    the held-out assistant loss falls and the result saves as a Gemma 2 checkpoint transformers reads."""
    from llmforge.generate.load import chat_template_for
    from llmforge.model.hf import load_hf
    from llmforge.recipes import run_sft

    d, _, _ = gemma_dir
    out = tmp_path / "sft"
    s = run_sft({"sft": {"base": str(d), "chats": "chitchat", "max_conversations": 120, "heldout": 16,
                         "seq_len": 128, "lora_r": 8, "lora_alpha": 16},
                 "train": {"out_dir": str(out), "steps": 30, "batch_size": 4, "lr": 1e-2, "warmup": 3,
                           "eval_every": 30, "eval_batches": 2, "progress": False}})
    assert s["eval_loss"] < s["eval_loss_before"] - 0.1, s
    assert chat_template_for(str(out / "model"), None) == "gemma"
    tuned = load_hf(out / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    ids = torch.randint(3, tuned.cfg.vocab_size, (1, 40))
    with torch.no_grad():
        assert (tuned(ids) - hf(ids).logits).abs().max().item() < 1e-4
