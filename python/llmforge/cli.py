"""`llmforge <command>`: the command-line face of the library.

    llmforge info                                   build and machine information
    llmforge pretrain recipes/pretrain_shakespeare.toml
    llmforge sft recipes/sft_chitchat.toml
    llmforge align recipes/dpo_synthetic.toml        (dpo | orpo | kto | reward)
    llmforge eval recipe.toml | --model DIR [--out DIR] [--tasks mmlu,champ,...]
    llmforge pipeline recipes/tiny.toml
    llmforge generate MODEL -p "Once upon a time"   (MODEL: HF-layout dir or .gguf; --quant int8|int4)
    llmforge chat MODEL                              interactive chat, streaming (/reset, /exit)
    llmforge serve MODEL --port 8000                 OpenAI-compatible HTTP server
    llmforge quant-ladder runs/x/model --text held.txt  every quantiser on one model, judged on text
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

# glibc's malloc told to keep freed memory (as `python -m bench` measures): with the defaults
# every large activation or gradient of a training step is a fresh mmap whose page faults cost
# ~4% of a CPU step (llmforge pretrain recipes/pretrain_shakespeare.toml: 1.03-1.04 s -> 1.00 s)
CACHING_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
TRAINING_COMMANDS = ("pretrain", "sft", "align", "pipeline")


def _reexec_with_caching_malloc(argv: list[str]) -> None:
    """Restart this program (`llmforge <training command>` from a shell) with CACHING_MALLOC, unless
    the user set GLIBC_TUNABLES or LLMFORGE_SYSTEM_MALLOC, or this is not glibc. Tunables are read
    only at process start, hence the exec; callers of main(argv) in a live process are left alone."""
    if (not argv or argv[0] not in TRAINING_COMMANDS or "GLIBC_TUNABLES" in os.environ
            or os.environ.get("LLMFORGE_SYSTEM_MALLOC") or not sys.executable or platform.libc_ver()[0] != "glibc"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, GLIBC_TUNABLES=CACHING_MALLOC)
    os.execve(sys.executable, [sys.executable, "-m", "llmforge.cli", *argv], env)


def info() -> dict:
    import llmforge

    return llmforge.build_info()


def pipeline(recipe: str, out_dir: str | None = None) -> int:
    from .pipeline import run_pipeline
    from .recipes import load_recipe

    res = run_pipeline(load_recipe(recipe), out_dir=out_dir)
    print(f"report: {res['report']}")
    return 0


# ---- eval ------------------------------------------------------------------------------------
def add_eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model: perplexity, MMLU, champ, HumanEval, contamination")
    ev.add_argument("recipe", nargs="?", help="TOML recipe with an [eval] section (or give --model)")
    ev.add_argument("--model", help="model directory (HF layout, as llmforge saves it)")
    ev.add_argument("--out", help="output directory for eval.json / eval.md (default: next to the model)")
    ev.add_argument("--tasks", help="comma-separated: perplexity,mmlu,champ,humaneval,contamination")
    ev.add_argument("--mmlu-limit", type=int)
    ev.add_argument("--mmlu-shots", type=int)
    ev.add_argument("--mmlu-subjects", help="comma-separated subject names")
    ev.add_argument("--champ-limit", type=int)
    ev.add_argument("--humaneval-limit", type=int)
    ev.add_argument("--humaneval-n", type=int)


def eval_command(a) -> int:
    from .eval.runner import run_eval
    from .recipes import load_recipe

    recipe = load_recipe(a.recipe) if a.recipe else {}
    e = recipe.setdefault("eval", {})
    for key, val in (("model", a.model), ("out_dir", a.out), ("mmlu_limit", a.mmlu_limit),
                     ("mmlu_shots", a.mmlu_shots), ("champ_limit", a.champ_limit),
                     ("humaneval_limit", a.humaneval_limit), ("humaneval_n", a.humaneval_n)):
        if val is not None:
            e[key] = val
    if a.tasks:
        e["tasks"] = [t.strip() for t in a.tasks.split(",") if t.strip()]
    if a.mmlu_subjects:
        e["mmlu_subjects"] = [t.strip() for t in a.mmlu_subjects.split(",") if t.strip()]
    if "humaneval_n" in e and "humaneval_k" not in e:
        e["humaneval_k"] = [k for k in (1, 2, 5, 10) if k <= e["humaneval_n"]]
    print(json.dumps(run_eval(recipe), indent=2))
    return 0


# ---- quant-ladder ---------------------------------------------------------------------------
def quant_ladder_cmd(model_dir: str, text: str, out: str, methods: str | None = None, seq_len: int = 256,
                     calib: int = 32, heldout: int = 64) -> dict:
    """Run llmforge.quant.ladder on an HF-layout model directory (tokenizer beside it). `text`
    (a UTF-8 file) is tokenised and cut into seq_len windows: the first half's windows
    calibrate, the second half's are held out."""
    import torch

    from .model import load_hf
    from .quant.ladder import DEFAULT_METHODS, quant_ladder
    from .tokenizer import load_tokenizer

    model = load_hf(model_dir)
    tok = load_tokenizer(model_dir)
    with open(text, encoding="utf-8") as f:
        ids = torch.tensor(tok.encode(f.read()), dtype=torch.int64)
    seq_len = min(seq_len, model.cfg.max_seq_len)
    half = len(ids) // 2
    cut = lambda t, k: t[: min(k, len(t) // seq_len) * seq_len].view(-1, seq_len)
    c, h = cut(ids[:half], calib), cut(ids[half:], heldout)
    if not len(c) or not len(h):
        raise ValueError(f"{text}: too short for two windows of {seq_len} tokens")
    names = DEFAULT_METHODS if not methods else [m.strip() for m in methods.split(",") if m.strip()]
    res = quant_ladder(model.eval(), tok, list(c.split(8)), list(h.split(8)), methods=names, out_dir=out,
                       title=f"Quant ladder: {model_dir}", progress=True)
    return {"paths": res["paths"], "ppl_fp": res["ppl_fp"],
            "rows": [{k: r.get(k) for k in ("method", "bits_per_weight", "ppl", "kl_per_token", "error") if k in r}
                     for r in res["rows"]]}


def add_quant_ladder_parser(sub) -> None:
    ql = sub.add_parser("quant-ladder", help="every quantiser on one model: perplexity, KL, top-1, SQNR, size")
    ql.add_argument("model_dir")
    ql.add_argument("--text", required=True, help="UTF-8 text: first half calibrates, second half is held out")
    ql.add_argument("--out", default="quant_ladder")
    ql.add_argument("--methods", default=None, help="comma-separated (default: all; see llmforge.quant.ladder)")
    ql.add_argument("--seq-len", type=int, default=256)


def quant_ladder_command(a) -> int:
    print(json.dumps(quant_ladder_cmd(a.model_dir, a.text, a.out, a.methods, a.seq_len), indent=2))
    return 0
# ---- end quant-ladder ----


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmforge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="build and machine information")
    pp = sub.add_parser("pipeline", help="run a recipe end to end")
    pp.add_argument("recipe")
    pp.add_argument("--out-dir", default=None, help="default: the recipe's out_dir, else runs/<name>")
    pt = sub.add_parser("pretrain", help="train a tokenizer and pretrain a model from a TOML recipe")
    pt.add_argument("recipe")
    st = sub.add_parser("sft", help="supervised fine-tuning (full, LoRA, QLoRA) from a TOML recipe")
    st.add_argument("recipe")
    al = sub.add_parser("align", help="alignment (DPO, ORPO, KTO, reward model, GRPO, PPO, rejection sampling) from a TOML recipe")
    al.add_argument("recipe")
    add_eval_parser(sub)
    add_quant_ladder_parser(sub)
    # ---- generate / chat / serve (llmforge.generate.commands) ----
    from .generate import commands as gen_commands

    gen_commands.add_parsers(sub)
    # ---- end generate / chat / serve ----
    a = p.parse_args(argv)
    if argv is not None:  # called in a process (tests, notebooks): exceptions propagate
        return _run(a, gen_commands)
    _reexec_with_caching_malloc(sys.argv[1:])  # run as a program
    try:
        return _run(a, gen_commands)
    except (OSError, ValueError, TypeError) as e:  # a missing file, a bad recipe or model: one line
        if os.environ.get("LLMFORGE_TRACEBACK"):
            raise
        print(f"llmforge {a.cmd}: error: {type(e).__name__}: {e}\n(LLMFORGE_TRACEBACK=1 shows where it was raised)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"llmforge {a.cmd}: interrupted", file=sys.stderr)
        return 130


def _run(a, gen_commands) -> int:
    if a.cmd in gen_commands.COMMANDS:
        return gen_commands.run(a)
    if a.cmd == "info":
        print(json.dumps(info(), indent=2))
        return 0
    if a.cmd == "pipeline":
        return pipeline(a.recipe, a.out_dir)
    if a.cmd == "pretrain":
        from .recipes import load_recipe, run_pretrain

        print(json.dumps(run_pretrain(load_recipe(a.recipe)), indent=2))
        return 0
    if a.cmd == "sft":
        from .recipes import load_recipe, run_sft

        print(json.dumps(run_sft(load_recipe(a.recipe)), indent=2))
        return 0
    if a.cmd == "align":
        from .recipes import load_recipe, run_align

        print(json.dumps(run_align(load_recipe(a.recipe)), indent=2))
        return 0
    if a.cmd == "eval":
        return eval_command(a)
    if a.cmd == "quant-ladder":
        return quant_ladder_command(a)
    return 2


if __name__ == "__main__":
    sys.exit(main())
