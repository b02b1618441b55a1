"""`llmforge <command>`: the command-line face of the library.

    llmforge info                                   build and machine information
    llmforge pretrain recipes/pretrain_shakespeare.toml
    llmforge sft recipes/sft_chitchat.toml
    llmforge align recipes/dpo_synthetic.toml        (dpo | orpo | kto | reward)
    llmforge pipeline recipes/tiny.toml
"""
from __future__ import annotations

import argparse
import json
import sys


def info() -> dict:
    import llmforge

    return llmforge.build_info()


def pipeline(recipe: str, out_dir: str | None = None) -> int:
    from .pipeline import run_pipeline
    from .recipes import load_recipe

    res = run_pipeline(load_recipe(recipe), out_dir=out_dir)
    print(f"report: {res['report']}")
    return 0


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
    al = sub.add_parser("align", help="preference alignment (DPO, ORPO, KTO, reward model) from a TOML recipe")
    al.add_argument("recipe")
    a = p.parse_args(argv)
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
    return 2


if __name__ == "__main__":
    sys.exit(main())
