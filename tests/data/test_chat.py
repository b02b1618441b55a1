"""Chat readers, templates, assistant-only masks and the template linter."""
from __future__ import annotations

import json

import pytest

from llmforge.data.chat import (ALPACA, IGNORE, TemplateError, check_chat_template, lint_chat_template,
                                read_chats, render_chat, tokenize_chat, validate_conversation)
from llmforge.data.io import DataError, ReadReport

from .byte_tokenizer import ByteTokenizer

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6, surely"}]


def _write(tmp_path, name, recs):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_readers_agree(tmp_path):
    openai = _write(tmp_path, "o.jsonl", [{"messages": CONV}])
    share = _write(tmp_path, "s.jsonl", [{"conversations": [{"from": {"system": "system", "user": "human",
                                                                    "assistant": "gpt"}[m["role"]], "value": m["content"]}
                                                          for m in CONV]}])
    assert read_chats(openai) == [CONV] == read_chats(share)
    alp = tmp_path / "a.json"
    alp.write_text(json.dumps([{"instruction": "Add", "input": "2 and 2", "output": "4"}]))
    assert read_chats(alp) == [[{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}]]


def test_bad_records(tmp_path):
    p = _write(tmp_path, "b.jsonl", [{"messages": CONV}, {"messages": [{"role": "robot", "content": "x"}]},
                                     {"conversations": [{"from": "alien", "value": "x"}]}, {"text": "?"},
                                     {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}])
    with pytest.raises(DataError, match="record 1: message 0 has unknown role"):
        read_chats(p)
    rep = ReadReport()
    assert read_chats(p, on_error="skip", report=rep) == [CONV]
    assert rep.read == 1 and rep.skipped == {"invalid conversation": 4}
    with pytest.raises(ValueError):
        read_chats(p, format="xml")
    with pytest.raises(DataError, match="system message may only come first"):
        validate_conversation([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}])


def test_chatml_render_and_mask():
    tok = ByteTokenizer()
    text = render_chat(CONV, "chatml")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and text.endswith("6, surely<|im_end|>\n")
    ex = tokenize_chat(CONV, tok, "chatml")
    assert tok.decode(ex.input_ids) == text
    trained = [t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE]
    assert tok.decode(trained) == "4<|im_end|>\n6, surely<|im_end|>\n"
    assert all(l == IGNORE or l == t for t, l in zip(ex.input_ids, ex.labels))


@pytest.mark.parametrize("template", ["chatml", "llama3", "alpaca"])
def test_builtin_templates_lint_clean(template):
    assert lint_chat_template(template, ByteTokenizer()) == []


def test_linter_catches_model_never_stops():
    # the classic bug: <|im_end|> closes user/system turns but not the assistant's
    bad = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
           "{% if m.role != 'assistant' %}<|im_end|>{% endif %}\n{% endfor %}"
           "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    problems = lint_chat_template(bad, ByteTokenizer(), end_of_turn="<|im_end|>")
    assert any("never learn to stop" in p for p in problems)
    with pytest.raises(TemplateError, match="never learn to stop"):
        check_chat_template(bad, ByteTokenizer(), end_of_turn="<|im_end|>")


def test_linter_catches_double_bos():
    problems = lint_chat_template("llama3", ByteTokenizer(), add_bos=True)
    assert any("bos is doubled" in p for p in problems)


def test_linter_catches_eot_not_single_token():
    tok = ByteTokenizer(specials=("<s>", "</s>"))
    assert any("not a single token" in p for p in lint_chat_template("chatml", tok))


def test_alpaca_trains_eos():
    tok = ByteTokenizer()
    ex = tokenize_chat(CONV[1:3], tok, ALPACA)
    trained = tok.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != IGNORE])
    assert trained == "4</s>\n\n"


def test_sandbox_blocks_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render_chat(CONV, evil)
    with pytest.raises(TemplateError, match="nope"):
        render_chat(CONV, "{{ raise_exception('nope') }}")


def test_non_prefix_template_is_rejected():
    tpl = "{% for m in messages|reverse %}{{ m.role }}:{{ m.content }};{% endfor %}"
    with pytest.raises(TemplateError, match="prefixes"):
        tokenize_chat(CONV, ByteTokenizer(), tpl)


def test_real_chitchat_conversations():
    try:
        from llmforge.data.corpora import chitchat
        convs = chitchat()
    except Exception:
        pytest.skip("chitchat-dataset not installed")
    assert len(convs) > 4000
    tok = ByteTokenizer()
    for conv in convs[:50]:
        if conv[-1]["role"] != "assistant":
            conv = conv[:-1]
        ex = tokenize_chat(conv, tok, "chatml")
        assert ex.n_loss_tokens > 0 and tok.decode(ex.input_ids) == render_chat(conv, "chatml")
