"""A Llama-2-style model directory with a SentencePiece tokenizer, through the rest of the library:
chat masks with Llama 2's template, load + generate, GGUF export read by llama.cpp (same ids and
logits) and by our importer."""
import importlib.util
import json

import numpy as np
import pytest
import torch

from llmforge.data.chat import TEMPLATES, lint_chat_template, render_chat, tokenize_chat
from llmforge.model import ModelConfig, Transformer
from llmforge.tokenizer import SpmTokenizer, Tokenizer

pytest.importorskip("sentencepiece")

LLAMA2_CHAT = TEMPLATES["llama2"]   # Llama 2 chat's template, as its tokenizer_config.json carries it


@pytest.mark.parametrize("form", ["legacy", "first"])
def test_chat_masks_encode_the_whole_conversation(sp_dirs, corpus, form):
    """Turn-by-turn encoding (for the assistant-only loss mask) gives the ids of the whole rendering,
    as transformers' apply_chat_template(tokenize=True) does."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_hf_json(sp_dirs[form])
    ref = PreTrainedTokenizerFast(tokenizer_file=str(sp_dirs[form] / "tokenizer.json"), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>")
    ref.chat_template = LLAMA2_CHAT
    held = corpus["held"]
    for k in range(0, 60, 6):
        conv = [{"role": "system", "content": held[k]}, {"role": "user", "content": held[k + 1]},
                {"role": "assistant", "content": held[k + 2]}, {"role": "user", "content": held[k + 3] + " \u4e2d"},
                {"role": "assistant", "content": held[k + 4] + "  !"}]
        ex = tokenize_chat(conv, tok, LLAMA2_CHAT)
        text = render_chat(conv, LLAMA2_CHAT, False, "<s>", "</s>")
        assert ex.input_ids == tok.encode(text)
        assert ex.input_ids == ref.apply_chat_template(conv, tokenize=True, return_dict=False)
        learned = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100])
        assert learned.count("</s>") == 2 and held[k + 2].strip() in learned and "[INST]" not in learned
    assert lint_chat_template(LLAMA2_CHAT, tok) == []
    # Mistral Instruct's template (no system role), named
    conv = [{"role": "user", "content": held[0]}, {"role": "assistant", "content": held[1]},
            {"role": "user", "content": held[2]}, {"role": "assistant", "content": held[3]}]
    ex = tokenize_chat(conv, tok, "mistral")
    assert ex.input_ids == tok.encode(render_chat(conv, "mistral", False, "<s>", "</s>"))
    ref.chat_template = TEMPLATES["mistral"]
    assert ex.input_ids == ref.apply_chat_template(conv, tokenize=True, return_dict=False)
    assert lint_chat_template("mistral", tok) == []


@pytest.fixture(scope="module")
def llama2_dir(sp_dirs, tmp_path_factory):
    from llmforge.model.hf import save_hf

    tok = Tokenizer.from_hf_json(sp_dirs["legacy"])
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(tok), dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=160,
                                    max_seq_len=256, norm_eps=1e-5)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
    d = tmp_path_factory.mktemp("llama2")
    save_hf(model, d)
    tok.to_hf_json(d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": LLAMA2_CHAT}))
    return d, model, tok


def test_load_and_generate(llama2_dir):
    from llmforge.generate.load import chat_template_for, load_for_generation, stop_token_ids

    d, model, tok = llama2_dir
    m2, tok2 = load_for_generation(str(d))
    assert isinstance(tok2, SpmTokenizer) and tok2.encode("Hello world") == tok.encode("Hello world")
    assert chat_template_for(str(d), None) == "llama2"    # tokenizer_config.json's template, known by name
    assert tok2.eos_id in stop_token_ids(tok2, "llama2")
    from llmforge.generate.load import prompt_ids

    assert tok2.add_bos_token and prompt_ids(tok2, "Now is the winter") == tok.encode("Now is the winter", add_bos=True)
    ids = tok2.encode("Now is the winter", add_bos=True)
    with torch.no_grad():
        torch.testing.assert_close(m2(torch.tensor([ids])), model(torch.tensor([ids])))


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
                    reason="needs llama-cpp-python and gguf")
def test_gguf_export_runs_in_llama_cpp_and_imports_back(llama2_dir, corpus, tmp_path):
    import llama_cpp

    from llmforge.export.gguf_export import export_gguf, import_gguf

    d, model, tok = llama2_dir
    path = tmp_path / "m.gguf"
    export_gguf(model, tok, str(path), "f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    text = " ".join(corpus["held"][:12]) + " \u4e2d\u6587 \U0001F600"
    ids = tok.encode(text, add_bos=True)
    assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == ids   # bos added, as in the metadata
    ids = ids[:200]
    llm.reset()
    llm.eval(ids)
    lc = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].double().numpy()
    assert np.abs(lc - ref).max() < 1e-3
    m2, tok2 = import_gguf(str(path))
    assert isinstance(tok2, SpmTokenizer) and (tok2.bos_token, tok2.eos_token) == ("<s>", "</s>")
    assert tok2.add_bos_token
    for t in corpus["held"][:100] + corpus["zh"][:20]:
        assert tok2.encode(t) == tok.encode(t)


def test_lora_sft_with_llama2_template(llama2_dir, tmp_path):
    """LoRA SFT of the Llama-2-style directory on chitchat with Llama 2's chat template: the
    held-out assistant loss falls, and the saved model's tokenizer files reload to the same ids."""
    from tokenizers import Tokenizer as HFTokenizer

    from llmforge.recipes import run_sft
    from llmforge.tokenizer import load_tokenizer

    d, _, tok = llama2_dir
    out = tmp_path / "sft"
    s = run_sft({"sft": {"base": str(d), "chats": "chitchat", "max_conversations": 120, "heldout": 16,
                         "seq_len": 128, "lora_r": 8, "lora_alpha": 16},   # template: the base's own
                 "train": {"out_dir": str(out), "steps": 30, "batch_size": 4, "lr": 1e-2, "warmup": 3,
                           "eval_every": 30, "eval_batches": 2, "progress": False}})
    assert s["eval_loss"] < s["eval_loss_before"] - 0.1, s
    from llmforge.generate.load import chat_template_for

    assert chat_template_for(str(out / "model"), None) == "llama2"   # saved with the template it learned,
    from llmforge.generate.load import model_chat_template

    assert model_chat_template(out / "model") == LLAMA2_CHAT          # as Jinja source, for transformers
    again = load_tokenizer(out / "model")
    hf = HFTokenizer.from_file(str(out / "model" / "tokenizer.json"))
    for t in ["[INST] Hello there [/INST] Hi! </s>", "\u4e2d\u6587 and \U0001F600"]:
        assert again.encode(t) == tok.encode(t) == hf.encode(t, add_special_tokens=False).ids
