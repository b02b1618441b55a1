"""Chat data: readers, Jinja chat templates, assistant-only loss masks, and a template linter.

    convs = read_chats("data.jsonl")                      # OpenAI messages, ShareGPT or Alpaca, auto-detected
    text = render_chat(convs[0], "chatml")                # a template name or a Jinja string
    ex = tokenize_chat(convs[0], tokenizer, "chatml")     # input_ids, labels (-100 outside assistant turns)
    problems = lint_chat_template("chatml", tokenizer)    # [] or what is wrong (e.g. "model never stops")

A conversation is a list of {"role": "system"|"user"|"assistant", "content": str}.
Templates render in Jinja's immutable sandbox (no attribute access to Python internals,
no file system). The tokenizer is any object with ``encode(text) -> list[int]`` that maps
special-token strings in the text to their ids, plus ``bos_token`` / ``eos_token``
(strings) and ``token_to_id(str) -> int | None``.

Assistant-only masks: for assistant turn i the loss covers
render(messages[:i+1]) minus render(messages[:i], add_generation_prompt=True): the
reply and the template's end-of-turn marker, which the model must learn to emit.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .io import DataError, ReadReport, read_json_records

ROLES = ("system", "user", "assistant")
IGNORE = -100

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
          "{{ m.content | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
ALPACA = ("{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n"
          "{% elif m.role == 'user' %}### Instruction:\n{{ m.content }}\n\n"
          "{% else %}### Response:\n{{ m.content }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}### Response:\n{% endif %}")
# Llama 2 chat's (a system message folded into the first user turn) and Mistral Instruct v0.1's,
# as their tokenizer_config.json files carry them; both end an assistant turn with eos (</s>).
LLAMA2 = ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
          "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
          "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
          "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
          "{% if loop.index0 == 0 and system_message != false %}"
          "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
          "{% else %}{% set content = message['content'] %}{% endif %}"
          "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
          "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for message in messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
# Gemma's turns: <start_of_turn>user / model, contents trimmed, <end_of_turn> and a newline; a system
# message goes in front of the first user turn, separated by a blank line (Gemma 3's way; Gemma 1
# and 2 refuse system messages and otherwise render the same).
GEMMA = ("{{ bos_token }}{% if messages and messages[0]['role'] == 'system' %}"
         "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
         "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
         "{% for m in turns %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' }}"
         "{% if loop.first %}{{ prefix }}{% endif %}{{ m['content'] | trim }}{{ '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "alpaca": ALPACA, "llama2": LLAMA2, "mistral": MISTRAL,
             "gemma": GEMMA}
# The token that ends an assistant turn, per template (None: the tokenizer's eos_token).
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "alpaca": None, "llama2": None, "mistral": None,
               "gemma": "<end_of_turn>"}
SPECIAL_TOKENS = {"chatml": ["<|im_start|>", "<|im_end|>"],
                  "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "alpaca": [], "llama2": [],
                  "mistral": [], "gemma": ["<start_of_turn>", "<end_of_turn>"]}


class TemplateError(ValueError):
    pass


# ---- readers -----------------------------------------------------------------------------
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


def validate_conversation(msgs, where: str = "conversation") -> list[dict]:
    """Check roles, contents and turn order; returns the messages as plain dicts."""
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: a conversation must be a non-empty list of messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} needs 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has unknown role {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {i} content must be a string")
        if role == "system" and i != 0:
            raise DataError(f"{where}: a system message may only come first (message {i})")
        out.append({"role": role, "content": content})
    turns = [m["role"] for m in out if m["role"] != "system"]
    for a, b in zip(turns, turns[1:]):
        if a == b:
            raise DataError(f"{where}: two consecutive {a} messages; user and assistant must alternate")
    if turns and turns[0] != "user":
        raise DataError(f"{where}: the first non-system message must be from the user")
    return out


def _from_openai(rec, where):
    return validate_conversation(rec["messages"], where)


def _from_sharegpt(rec, where):
    msgs = []
    for i, m in enumerate(rec["conversations"]):
        if not isinstance(m, dict) or "from" not in m or "value" not in m:
            raise DataError(f"{where}: ShareGPT turn {i} needs 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(m["from"]).lower())
        if role is None:
            raise DataError(f"{where}: ShareGPT turn {i} has unknown speaker {m['from']!r}")
        msgs.append({"role": role, "content": m["value"]})
    return validate_conversation(msgs, where)


def _from_alpaca(rec, where):
    for k in ("instruction", "output"):
        if not isinstance(rec.get(k), str):
            raise DataError(f"{where}: Alpaca record needs string field {k!r}")
    prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    return validate_conversation([{"role": "user", "content": prompt}, {"role": "assistant", "content": rec["output"]}], where)


_FORMATS = {"openai": ("messages", _from_openai), "sharegpt": ("conversations", _from_sharegpt),
            "alpaca": ("instruction", _from_alpaca)}


def read_chats(path: str | os.PathLike, format: str = "auto", on_error: str = "raise",
               report: ReadReport | None = None) -> list[list[dict]]:
    """Conversations from a .json/.jsonl file in OpenAI ("messages"), ShareGPT ("conversations")
    or Alpaca ("instruction"/"input"/"output") format."""
    if format != "auto" and format not in _FORMATS:
        raise ValueError(f"unknown chat format {format!r}; expected auto, {', '.join(_FORMATS)}")
    path = os.fspath(path)
    convs = []
    for i, rec in enumerate(read_json_records(path, on_error=on_error, report=report)):
        fmt = format
        if fmt == "auto":
            fmt = next((f for f, (key, _) in _FORMATS.items() if key in rec), None)
        where = f"{path}: record {i}"
        try:
            if fmt is None:
                raise DataError(f"{where}: not a recognised chat record (keys: {sorted(rec)})")
            key, conv = _FORMATS[fmt]
            if key not in rec:
                raise DataError(f"{where}: missing field {key!r} for format {fmt}")
            convs.append(conv(rec, where))
        except DataError as e:
            if on_error == "raise":
                raise
            if report is not None:
                report.read -= 1
                report.skip("invalid conversation", str(e))
    return convs


# ---- templates ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _env():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(keep_trailing_newline=True)

    def raise_exception(msg):
        raise TemplateError(msg)

    env.globals["raise_exception"] = raise_exception
    return env


def template_source(template: str) -> str:
    return TEMPLATES.get(template, template)


@functools.lru_cache(maxsize=32)
def _compiled(source: str):
    return _env().from_string(source)


def render_chat(messages, template: str = "chatml", add_generation_prompt: bool = False,
                bos_token: str = "", eos_token: str = "") -> str:
    """Render a conversation with a named template or a Jinja string (sandboxed)."""
    from jinja2 import TemplateError as JinjaError

    try:
        tpl = _compiled(template_source(template))
        return tpl.render(messages=messages, add_generation_prompt=add_generation_prompt,
                          bos_token=bos_token, eos_token=eos_token)
    except JinjaError as e:
        raise TemplateError(f"chat template failed to render: {e}") from e


@dataclass
class ChatExample:
    input_ids: list[int]
    labels: list[int]          # IGNORE outside assistant turns

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _segments(messages, template, bos, eos):
    """(text, is_assistant) pieces whose concatenation is the full rendering."""
    full = render_chat(messages, template, False, bos, eos)
    pieces, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(messages[:i], template, True, bos, eos)
        upto = render_chat(messages[: i + 1], template, False, bos, eos)
        if not full.startswith(upto) or not upto.startswith(before) or len(before) < pos:
            raise TemplateError("the template does not render conversation prefixes as prefixes of the "
                                "whole conversation, so assistant turns cannot be located")
        pieces.append((full[pos:len(before)], False))
        pieces.append((full[len(before):len(upto)], True))
        pos = len(upto)
    pieces.append((full[pos:], False))
    return [(t, a) for t, a in pieces if t]


def tokenize_chat(messages, tokenizer, template: str = "chatml", add_bos: bool = False,
                  max_len: int | None = None) -> ChatExample:
    """Token ids and labels with the loss on assistant turns (reply + end-of-turn marker) only."""
    messages = validate_conversation(messages)
    bos = getattr(tokenizer, "bos_token", "") or ""
    eos = getattr(tokenizer, "eos_token", "") or ""
    ids, labels = [], []
    if add_bos:
        bos_id = tokenizer.token_to_id(bos) if bos else None
        if bos_id is None:
            raise TemplateError("add_bos=True but the tokenizer has no bos token")
        ids.append(bos_id)
        labels.append(IGNORE)
    from ..tokenizer.spm import SpmTokenizer

    segments = _segments(messages, template, bos, eos)
    if isinstance(tokenizer, SpmTokenizer):
        # a "▁" goes in front of text depending on what precedes it, so each segment is read off the
        # ids of the rendering up to its end: the ids are exactly those of the whole rendering
        start, text = len(ids), ""
        for seg, is_assistant in segments:
            text += seg
            cur = list(tokenizer.encode(text))
            keep = 0
            done = ids[start:]
            while keep < min(len(done), len(cur)) and done[keep] == cur[keep]:
                keep += 1
            new = cur[keep:]
            del ids[start + keep:], labels[start + keep:]
            ids.extend(new)
            labels.extend(new if is_assistant else [IGNORE] * len(new))
        segments = []
    for text, is_assistant in segments:
        toks = list(tokenizer.encode(text))
        ids.extend(toks)
        labels.extend(toks if is_assistant else [IGNORE] * len(toks))
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ChatExample(ids, labels)


def lint_chat_template(template: str, tokenizer, add_bos: bool = False, end_of_turn: str | None = None) -> list[str]:
    """Problems that make a fine-tuned model misbehave; [] when the template is sound.

    - the end-of-turn token is not a single token, or not inside the loss of every
      assistant turn (the model never learns to stop);
    - bos appears twice at the start (template and tokenizer both add it);
    - prefixes do not render as prefixes (masks cannot be computed).
    """
    problems = []
    sample = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Count to three"},
              {"role": "assistant", "content": "1 2 3"}]
    eot = end_of_turn if end_of_turn is not None else END_OF_TURN.get(template) or getattr(tokenizer, "eos_token", None)
    eot_id = tokenizer.token_to_id(eot) if eot else None
    if eot_id is None or list(tokenizer.encode(eot)) != [eot_id]:
        problems.append(f"end-of-turn token {eot!r} is not a single token of this tokenizer")
    try:
        ex = tokenize_chat(sample, tokenizer, template, add_bos=add_bos)
    except TemplateError as e:
        try:   # templates without a system role (Mistral's) are checked on the rest
            ex = tokenize_chat(sample[1:], tokenizer, template, add_bos=add_bos)
        except TemplateError:
            return problems + [str(e)]
    if eot_id is not None:
        # every assistant turn's loss span must contain eot
        spans, cur = [], []
        for tok, lab in zip(ex.input_ids, ex.labels):
            if lab != IGNORE:
                cur.append(tok)
            elif cur:
                spans.append(cur)
                cur = []
        if cur:
            spans.append(cur)
        if len(spans) != 2 or any(eot_id not in s for s in spans):
            problems.append(f"end-of-turn token {eot!r} is not in the loss of every assistant turn: "
                            "the model will never learn to stop")
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = tokenizer.token_to_id(bos) if bos else None
    if bos_id is not None and ex.input_ids[:2] == [bos_id, bos_id]:
        problems.append("bos is doubled: the template renders bos_token and the tokenizer adds it too")
    return problems


def check_chat_template(template: str, tokenizer, add_bos: bool = False, end_of_turn: str | None = None) -> None:
    problems = lint_chat_template(template, tokenizer, add_bos, end_of_turn)
    if problems:
        raise TemplateError("chat template problems:\n- " + "\n- ".join(problems))
