"""The `llmforge generate`, `llmforge chat` and `llmforge serve` commands (cli.py wires them in).

    llmforge generate MODEL -p "Once upon a time" -p "The king" --max-tokens 64 --temperature 0.8 --quant int4
    llmforge generate MODEL -p "2 + 2 =" --num-beams 4 --length-penalty 1.0 --jsonl
    echo "Hello" | llmforge chat MODEL --system "You are terse."       # /reset, /exit; tokens stream out
    llmforge serve MODEL --port 8000                                   # OpenAI-compatible, see generate.server

MODEL is a directory in the Hugging Face layout (config.json, model.safetensors,
tokenizer.json) or a .gguf file. Every command is also a function: generate_cmd, chat_cmd,
serve_cmd take the parsed arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

COMMANDS = ("generate", "chat", "serve")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a Hugging Face layout directory (with tokenizer.json) or a .gguf file")
    p.add_argument("--quant", choices=["int8", "int4"], default=None, help="quantize the projections for inference")
    p.add_argument("--chat-template", default=None,
                   help="chatml | llama3 | alpaca | a Jinja file (default: tokenizer_config.json's, else chatml)")


def _sampling_args(p: argparse.ArgumentParser, temperature: float = 0.7) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=128, help="new tokens per completion")
    g.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="complete prompts with a model (sampling or beam search)")
    _model_args(g)
    g.add_argument("-p", "--prompt", action="append", default=[], help="a prompt (repeatable); default: stdin lines")
    g.add_argument("--prompt-file", help="a file with one prompt per line")
    g.add_argument("--chat", action="store_true", help="wrap each prompt as a user turn in the chat template")
    g.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (deterministic)")
    g.add_argument("--length-penalty", type=float, default=1.0, help="beam score = sum logprob / len**alpha")
    g.add_argument("--early-stopping", choices=["true", "false", "never"], default="false")
    g.add_argument("--jsonl", action="store_true", help="print one JSON object per prompt")
    _sampling_args(g)
    c = sub.add_parser("chat", help="an interactive chat in the terminal (/reset, /exit)")
    _model_args(c)
    c.add_argument("--system", default=None, help="a system message")
    _sampling_args(c)
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions)")
    _model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", default=None, help="the id clients ask for (default: the model's file name)")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    s.add_argument("--max-queue", type=int, default=64, help="requests in flight before HTTP 429")
    s.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for")
    s.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt accepted")
    s.add_argument("--verbose", action="store_true", help="log every HTTP request")


def _load(a):
    from .load import chat_template_for, load_for_generation

    model, tok = load_for_generation(a.model, quant=a.quant)
    if tok is None:
        raise SystemExit(f"{a.model}: no tokenizer (tokenizer.json beside the weights, or one inside the GGUF)")
    template = chat_template_for(a.model, a.chat_template)
    return model, tok, template


def _params(a):
    from .sampling import SamplingParams

    return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                          repetition_penalty=a.repetition_penalty, frequency_penalty=a.frequency_penalty,
                          presence_penalty=a.presence_penalty)


def _chat_ids(tok, template, messages) -> list[int]:
    from ..data.chat import render_chat

    text = render_chat(messages, template, add_generation_prompt=True, bos_token=tok.bos_token or "",
                       eos_token=tok.eos_token or "")
    return list(tok.encode(text))


def _fit(model, n_prompt: int, max_tokens: int) -> int:
    room = model.cfg.max_seq_len - n_prompt
    if room < 1:
        raise SystemExit(f"the prompt has {n_prompt} tokens; the model's context is {model.cfg.max_seq_len}")
    return min(max_tokens, room)


def generate_cmd(a) -> int:
    from .beam import beam_search
    from .load import prompt_ids, stop_token_ids
    from .serving_engine import Engine

    prompts = list(a.prompt)
    if a.prompt_file:
        with open(a.prompt_file, encoding="utf-8") as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        prompts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not prompts:
        raise SystemExit("no prompts: pass -p TEXT, --prompt-file FILE or lines on stdin")
    model, tok, template = _load(a)
    stop_ids = stop_token_ids(tok, template if a.chat else None)
    ids = [_chat_ids(tok, template, [{"role": "user", "content": p}]) if a.chat else prompt_ids(tok, p)
           for p in prompts]
    if any(not x for x in ids):
        raise SystemExit("a prompt encodes to no tokens")
    outs = []
    if a.num_beams > 1:
        early = {"true": True, "false": False, "never": "never"}[a.early_stopping]
        for x in ids:
            r = beam_search(model, x, a.num_beams, _fit(model, len(x), a.max_tokens), a.length_penalty, early,
                            stop_ids, a.stop or None, tok)
            last = r.sequences[0][-1] if r.sequences[0] else None
            reason = "stop" if (last in stop_ids or len(r.sequences[0]) < a.max_tokens) else "length"
            outs.append({"completion": r.texts[0], "tokens": len(r.sequences[0]), "finish_reason": reason,
                         "score": r.scores[0]})
    else:
        eng = Engine(model, num_blocks=sum(-(-model.cfg.max_seq_len // 16) for _ in ids[:16]) + 1, max_batch=16,
                     tokenizer=tok)
        rids = [eng.submit(x, _fit(model, len(x), a.max_tokens), _params(a), stop_ids, a.seed + i, stop=a.stop or None)
                for i, x in enumerate(ids)]
        res = eng.run()
        outs = [{"completion": res[r].text, "tokens": len(res[r].tokens), "finish_reason": res[r].finish_reason}
                for r in rids]
    for p, o in zip(prompts, outs):
        if a.jsonl:
            print(json.dumps({"prompt": p, **o}, ensure_ascii=False))
        else:
            print(o["completion"] if a.chat else p + o["completion"])
            if len(prompts) > 1:
                print("-" * 40)
    return 0


def chat_cmd(a, stdin=None, stdout=None) -> int:
    """Read user turns line by line; stream each answer as it is produced. /reset clears the
    history, /exit (or end of input) quits."""
    from .load import stop_token_ids
    from .serving_engine import Engine

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    model, tok, template = _load(a)
    stop_ids = stop_token_ids(tok, template)
    eng = Engine(model, num_blocks=-(-model.cfg.max_seq_len // 16) + 1, max_batch=1, tokenizer=tok)
    system = [{"role": "system", "content": a.system}] if a.system else []
    history = list(system)
    interactive = stdin.isatty()
    turn = 0
    while True:
        if interactive:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            history = list(system)
            stdout.write("[history cleared]\n")
            stdout.flush()
            continue
        msgs = history + [{"role": "user", "content": text}]
        ids = _chat_ids(tok, template, msgs)
        if len(ids) >= model.cfg.max_seq_len:
            stdout.write(f"[the conversation ({len(ids)} tokens) no longer fits the context of "
                         f"{model.cfg.max_seq_len}; /reset to start over]\n")
            stdout.flush()
            continue

        def show(rid, token, delta, finish):
            if delta:
                stdout.write(delta)
                stdout.flush()

        rid = eng.submit(ids, _fit(model, len(ids), a.max_tokens), _params(a), stop_ids, a.seed + turn,
                         stop=a.stop or None, on_token=show)
        reply = eng.run().pop(rid).text
        stdout.write("\n")
        stdout.flush()
        history = msgs + [{"role": "assistant", "content": reply}]
        turn += 1
    return 0


def serve_cmd(a) -> int:
    from .server import OpenAIServer

    model, tok, template = _load(a)
    name = a.model_name or os.path.basename(os.path.normpath(a.model))
    srv = OpenAIServer(model, tok, model_name=name, host=a.host, port=a.port, chat_template=template,
                       max_queue=a.max_queue, max_batch=a.max_batch, max_tokens_cap=a.max_tokens_cap,
                       max_prompt_tokens=a.max_prompt_tokens, verbose=a.verbose)
    print(f"serving {name!r} on {srv.url} (Ctrl-C to stop)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def run(a) -> int:
    return {"generate": generate_cmd, "chat": chat_cmd, "serve": serve_cmd}[a.cmd](a)
