"""A Qwen3 (and Mixtral, Qwen3-MoE, Qwen2-MoE) checkpoint directory as transformers writes it (config.json with rope_parameters,
safetensors, a tokenizer.json with Qwen's pre-tokenizer and NFC normalizer) generates, through
llmforge's loader and native decode step, the greedy tokens transformers generates."""
from __future__ import annotations

import pytest
import torch

from llmforge.generate.engine import generate
from llmforge.generate.load import load_for_generation
from llmforge.generate.native import native_decoder
from llmforge.generate.sampling import SamplingParams
from llmforge.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")


def _save_directory(hf, tok, path):
    """hf's weights away from their init (norms around 1), saved with tok's tokenizer.json, as a
    transformers checkpoint directory; then read back by llmforge's loader."""
    with torch.no_grad():
        for n, p in hf.named_parameters():
            (p.uniform_(0.5, 2.0) if "norm" in n else p.normal_(0, 0.2))
    hf.save_pretrained(path)
    tok.to_hf_json(path)
    return load_for_generation(path)


def _assert_greedy_like_transformers(model, hf, prompt):
    ours = generate(model, [prompt], 20, SamplingParams(temperature=0)).tokens[0]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                             pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert ours == theirs


def test_qwen3_directory_generates_like_transformers(tmp_path):
    text = ("The quick brown fox jumps over the lazy dog 1234567 times; café, naïve, Straße. ") * 40
    tok = Tokenizer.train([text], vocab_size=300, pattern="qwen2")
    tok = Tokenizer.from_dict({**tok.to_dict(), "normalizer": "NFC"})
    torch.manual_seed(0)
    conf = transformers.Qwen3Config(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=160,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                    max_position_embeddings=128, rope_theta=1e6, tie_word_embeddings=True)
    hf = transformers.Qwen3ForCausalLM(conf).eval()
    model, tok2 = _save_directory(hf, tok, tmp_path)
    assert model.cfg.qk_norm and model.cfg.rope_theta == 1e6 and tok2.normalizer == "NFC"
    assert native_decoder(model, 64) is not None          # the C++ step runs Qwen3
    prompt = tok2.encode("The quick brown cafe\u0301 fox")     # NFC: e + combining acute -> é
    assert prompt == tok2.encode("The quick brown café fox")
    _assert_greedy_like_transformers(model, hf, prompt)


@pytest.mark.parametrize("which", ["qwen2_moe", "qwen3_moe", "mixtral"])
def test_moe_directory_generates_like_transformers(tmp_path, which):
    """The MoE layouts through the loader and the native step's MoE feed-forward (routing, experts,
    Qwen2-MoE's shared expert): transformers' greedy tokens."""
    tok = Tokenizer.train(["The quality of mercy is not strain'd; it droppeth as the gentle rain. " * 40],
                          vocab_size=300)
    torch.manual_seed(1)
    common = dict(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, num_experts_per_tok=2)
    conf = {"qwen2_moe": lambda: transformers.Qwen2MoeConfig(**common, moe_intermediate_size=48, num_experts=6,
                                                             shared_expert_intermediate_size=80),
            "qwen3_moe": lambda: transformers.Qwen3MoeConfig(**common, moe_intermediate_size=48, num_experts=6,
                                                             head_dim=16, norm_topk_prob=True),
            "mixtral": lambda: transformers.MixtralConfig(**common, num_local_experts=5)}[which]()
    hf = transformers.AutoModelForCausalLM.from_config(conf).eval()
    model, tok2 = _save_directory(hf, tok, tmp_path)
    assert model.cfg.n_experts and native_decoder(model, 64) is not None
    _assert_greedy_like_transformers(model, hf, tok2.encode("The quality of mercy"))
