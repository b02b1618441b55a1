"""`llmforge generate` and `llmforge chat` from a saved model (HF layout and GGUF), fp / int8 / int4,
against the library functions they wrap; chat driven through stdin, as a pipe."""
from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from llmforge.cli import main
from llmforge.data.chat import render_chat
from llmforge.generate.beam import beam_search
from llmforge.generate.engine import generate
from llmforge.generate.load import load_for_generation, quantize_for_inference
from llmforge.generate.sampling import SamplingParams
from llmforge.model import ModelConfig, Transformer
from llmforge.model.hf import save_hf
from llmforge.tokenizer import Tokenizer

TEXT = "The quick brown fox jumps over the lazy dog. Once upon a time a king ruled the north. " * 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = Tokenizer.train_from_iterator([TEXT], vocab_size=290)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=128, max_seq_len=128)).eval()
    model.reset_parameters(std=0.15)
    d = tmp_path_factory.mktemp("model")
    save_hf(model, d)
    tok.to_hf_json(d)
    return str(d), model, tok


def _greedy_text(model, tok, ids, n, stop):
    toks = generate(model, [ids], n, SamplingParams(temperature=0), stop_ids=stop).tokens[0]
    return tok.decode(toks[:-1] if toks and toks[-1] in stop else toks, skip_special=True)


@pytest.mark.parametrize("quant", [None, "int8", "int4"])
def test_generate_command_matches_library(saved, capsys, quant):
    d, model, tok = saved
    ref = copy.deepcopy(model)
    swapped = quantize_for_inference(ref, quant)
    assert len(swapped) == (0 if quant is None else 14)
    prompts = ["Once upon a time", "The fox"]
    argv = ["generate", d, "--temperature", "0", "--max-tokens", "15", "--jsonl"]
    argv += sum((["-p", p] for p in prompts), [])
    assert main(argv + (["--quant", quant] if quant else [])) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    eos = {tok.token_to_id("<|eos|>")}
    assert [r["completion"] for r in rows] == [_greedy_text(ref, tok, tok.encode(p), 15, eos) for p in prompts]
    if quant:   # the quantized model really is a different model
        x = torch.tensor([tok.encode(prompts[0])])
        assert not torch.equal(ref(x), model(x))


def test_generate_beam_and_gguf(saved, capsys, tmp_path):
    from llmforge.export.gguf_export import export_gguf

    d, model, tok = saved
    eos = {tok.token_to_id("<|eos|>")}
    assert main(["generate", d, "-p", "The king", "--num-beams", "3", "--max-tokens", "10", "--jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    want = beam_search(model, tok.encode("The king"), 3, 10, eos_ids=eos, tokenizer=tok)
    assert row["completion"] == want.texts[0] and row["score"] == pytest.approx(want.scores[0])
    path = str(tmp_path / "m.gguf")
    export_gguf(model, tok, path, qtype="f32")
    m2, t2 = load_for_generation(path)
    assert t2.encode("The king") == tok.encode("The king")
    assert main(["generate", path, "-p", "The king", "--temperature", "0", "--max-tokens", "12", "--jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["completion"] == _greedy_text(model, tok, tok.encode("The king"), 12, eos)


def _chat_ref(model, tok, msgs, n=12):
    ids = tok.encode(render_chat(msgs, "chatml", add_generation_prompt=True, bos_token=tok.bos_token,
                                 eos_token=tok.eos_token))
    return _greedy_text(model, tok, ids, n, {tok.token_to_id("<|eos|>"), tok.token_to_id("<|im_end|>")})


def test_chat_keeps_history_and_resets(saved, capsys, monkeypatch):
    d, model, tok = saved
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello fox\nAnd the king?\n/reset\nAnd the king?\n/exit\nnot read\n"))
    assert main(["chat", d, "--temperature", "0", "--max-tokens", "12", "--system", "Be brief."]) == 0
    out = capsys.readouterr().out.split("\n")
    sys_msg = [{"role": "system", "content": "Be brief."}]
    a1 = _chat_ref(model, tok, sys_msg + [{"role": "user", "content": "Hello fox"}])
    a2 = _chat_ref(model, tok, sys_msg + [{"role": "user", "content": "Hello fox"},
                                          {"role": "assistant", "content": a1},
                                          {"role": "user", "content": "And the king?"}])
    a3 = _chat_ref(model, tok, sys_msg + [{"role": "user", "content": "And the king?"}])
    assert "\n".join(out).startswith("\n".join([a1, a2, "[history cleared]", a3]))
    assert a2 != a3      # the history mattered


def test_chat_through_a_pipe(saved):
    d, model, tok = saved
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-m", "llmforge.cli", "chat", d, "--temperature", "0", "--max-tokens", "12"],
                       input="Hello fox\n", capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == _chat_ref(model, tok, [{"role": "user", "content": "Hello fox"}]) + "\n"


def test_generate_chat_flag_uses_the_template(saved, capsys):
    d, model, tok = saved
    assert main(["generate", d, "--chat", "-p", "Hello fox", "--temperature", "0", "--max-tokens", "12", "--jsonl"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["completion"] == _chat_ref(model, tok, [{"role": "user", "content": "Hello fox"}])
