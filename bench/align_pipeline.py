"""Every alignment method, starting from a chat model SFT'd by `llmforge pipeline`; writes bench/results/align.md.

    python bench/align_pipeline.py --recipe recipes/align_bench.toml     # runs the pipeline up to SFT first
    python bench/align_pipeline.py --sft runs/align_bench/sft/model     # or start from an existing SFT model

From the SFT model (each method starts again from it):
  * reward model (Bradley-Terry) on the learnable synthetic preference: held-out accuracy before/after;
  * DPO, KTO, ORPO on the same pairs: held-out preference accuracy and reward margin before/after,
    all measured the same way (implicit reward beta * (log pi - log pi_sft) of chosen vs rejected),
    plus each method's own metric;
  * GRPO and PPO on toy arithmetic ("a op b=" as a user turn; reward = mean of "answers with a number"
    and "the right number"), each within a wall-clock budget: held-out mean reward before/after;
  * peak resident memory of DPO (cached reference log-probs) vs SFT, each in a fresh process, on the
    SFT model with the same batch shape (16 sequences x 256 tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tok(model_dir):
    from llmforge.tokenizer import Tokenizer

    f = os.path.join(model_dir, "llmforge_tokenizer.json")
    return Tokenizer.load(f) if os.path.exists(f) else Tokenizer.from_hf_json(os.path.join(model_dir, "tokenizer.json"))


def memory_child(method: str, model_dir: str) -> None:
    """A few full-parameter optimisation steps of SFT or DPO; prints the peak RSS (MiB)."""
    import torch

    from llmforge.align.data import TokenizedPair, collate
    from llmforge.align.dpo import pair_logprobs
    from llmforge.align.logprobs import sequence_logprobs
    from llmforge.align.losses import dpo_loss
    from llmforge.model import load_hf

    torch.manual_seed(0)
    model = load_hf(model_dir)
    V, T = model.cfg.vocab_size, min(256, model.cfg.max_seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    g = torch.Generator().manual_seed(0)
    if method == "sft":
        for _ in range(3):
            tokens = torch.randint(0, V, (16, T), generator=g)
            opt.zero_grad()
            model.loss(tokens).backward()
            opt.step()
    else:  # 8 pairs = 16 sequences of T tokens, replies = the last 3/4 of each
        pairs = []
        for _ in range(8):
            c, r = torch.randint(0, V, (T,), generator=g).tolist(), torch.randint(0, V, (T,), generator=g).tolist()
            k = T // 4
            pairs.append(TokenizedPair(c, [-100] * k + c[k:], r, [-100] * k + r[k:]))
        ref = pair_logprobs(model, pairs, 0, 8, 1024, reference=True)
        for _ in range(3):
            tokens, labels = collate(pairs, 0)
            lp = sequence_logprobs(model, tokens, labels)
            loss, _ = dpo_loss(lp[:8], lp[8:], ref[:, 0], ref[:, 1])
            opt.zero_grad()
            loss.backward()
            opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": method, "peak_rss_mib": peak / 1024, "after_model_mib": base / 1024, "seq_len": T}))


def measure_memory(model_dir: str) -> dict:
    res = {}
    for m in ("sft", "dpo"):
        out = subprocess.run([sys.executable, __file__, "--memory-child", m, "--sft", model_dir],
                             capture_output=True, text=True, check=True).stdout
        res[m] = json.loads(out.strip().splitlines()[-1])
    res["ratio_peak"] = res["dpo"]["peak_rss_mib"] / res["sft"]["peak_rss_mib"]
    inc = lambda r: r["peak_rss_mib"] - r["after_model_mib"]
    res["ratio_training_increment"] = inc(res["dpo"]) / max(1e-9, inc(res["sft"]))
    return res


def make_sft(recipe_path: str) -> str:
    from llmforge.pipeline import run_pipeline
    from llmforge.recipes import load_recipe

    recipe = load_recipe(recipe_path)
    root = recipe.get("out_dir") or os.path.join("runs", recipe.get("name", "pipeline"))
    model = os.path.join(root, "sft", "model")
    if not os.path.exists(os.path.join(root, "sft", "stage.json")):
        run_pipeline(recipe, until="sft")  # the stages after SFT are not needed here
    return model


def preference_suite(model_dir: str, out_root: str, steps: int, n_train: int) -> dict:
    import torch

    from llmforge.align.data import synthetic_preferences, tokenize_pairs
    from llmforge.align.dpo import DPOConfig, _pad_id, dpo, pair_logprobs, preference_metrics
    from llmforge.align.kto import KTOConfig, kto, kto_records_from_pairs
    from llmforge.align.orpo import ORPOConfig, orpo
    from llmforge.align.reward import RewardConfig, RewardModel, train_reward_model
    from llmforge.model import load_hf

    tok = _tok(model_dir)
    pad = _pad_id(tok)
    recs = synthetic_preferences(n_train + 40, seed=0)
    train, held_recs = recs[:n_train], recs[n_train:]
    held = tokenize_pairs(held_recs, tok)
    probe = DPOConfig(beta=0.1, batch_size=8)
    ref_held = pair_logprobs(load_hf(model_dir), held, pad, 8, 1024)
    common = dict(steps=steps, batch_size=8, progress=False)
    out = {}

    def implicit(model):
        return preference_metrics(model, held, ref_held, pad, probe)

    t = time.perf_counter()
    torch.manual_seed(0)
    rm = RewardModel(load_hf(model_dir))
    r = train_reward_model(rm, tok, train, RewardConfig(out_dir=f"{out_root}/reward", lr=1e-3, **common), held_recs)
    out["reward"] = {"accuracy_before": r["accuracy_before"], "accuracy_after": r["accuracy_after"],
                     "seconds": time.perf_counter() - t}
    for name, run in (
        ("dpo", lambda m: dpo(m, tok, train, DPOConfig(out_dir=f"{out_root}/dpo", beta=0.1, lr=5e-4, **common), held_recs)),
        ("kto", lambda m: kto(m, tok, kto_records_from_pairs(train), KTOConfig(out_dir=f"{out_root}/kto", beta=0.1,
                                                                                lr=5e-4, **common),
                              kto_records_from_pairs(held_recs))),
        ("orpo", lambda m: orpo(m, tok, train, ORPOConfig(out_dir=f"{out_root}/orpo", lam=0.5, lr=5e-4, **common),
                                held_recs)),
    ):
        t = time.perf_counter()
        torch.manual_seed(0)
        model = load_hf(model_dir)
        before = implicit(model)
        res = run(model)
        out[name] = {"before": before, "after": implicit(model), "own_before": res["before"],
                     "own_after": res["after"], "seconds": time.perf_counter() - t}
    return out


from llmforge.align.online import format_warmup  # noqa: E402


def online_suite(model_dir: str, out_root: str, grpo_s: float, ppo_s: float, warmup_steps: int = 30,
                 task: str = "add_sub") -> dict:
    import torch

    from llmforge.align.grpo import GRPOConfig, grpo
    from llmforge.align.online import heldout_reward
    from llmforge.align.ppo import PPOConfig, ppo
    from llmforge.align.tasks import arithmetic_prompts, make_reward, render_prompts
    from llmforge.model import load_hf

    tok = _tok(model_dir)
    if task == "times01":  # a*0 and a*1 for a in 0..99: answers a model can read off the prompt
        import random

        raw = [{"prompt": f"{a}*{b}=", "answer": str(a * b)} for a in range(100) for b in (0, 1)]
        random.Random(0).shuffle(raw)
        raw = raw[:-40] * 2 + raw[-40:]           # 160 distinct training prompts (twice), 40 held out
    else:
        raw = arithmetic_prompts(440, seed=0, ops="+-", max_operand=3)
    prompts = render_prompts(raw, "chatml")
    train, held = prompts[:400], prompts[400:]
    warm = format_warmup(load_hf(model_dir), tok, train, warmup_steps)
    reward = make_reward("exact_format")
    parts = {"exact": make_reward("exact"), "format": make_reward("format")}
    out = {}

    def evaluate(model, cfg):
        return heldout_reward(model, tok, held, reward, cfg.max_new_tokens, cfg.temperature, cfg.top_k, samples=4,
                              parts=parts)

    for name, cfg, fn in (
        ("grpo", GRPOConfig(out_dir=f"{out_root}/grpo", steps=10_000, prompts_per_step=4, group_size=8,
                            max_new_tokens=4, lr=2e-3, beta=0.01, max_seconds=grpo_s, progress=False), grpo),
        ("ppo", PPOConfig(out_dir=f"{out_root}/ppo", steps=10_000, batch_prompts=32, max_new_tokens=4, lr=2e-3,
                          kl_beta=0.01, max_seconds=ppo_s, progress=False), ppo),
    ):
        torch.manual_seed(0)
        model = load_hf(model_dir)
        model.load_state_dict(warm)
        before = evaluate(model, cfg)
        res = fn(model, tok, train, reward, cfg)
        out[name] = {"before": before, "after": evaluate(model, cfg), "steps": res["steps"],
                     "train_seconds": res["seconds"], "train_reward_first": res["reward_first"],
                     "train_reward_last": res["reward_last"]}
    return out


def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return "?"


def write_report(path: str, info: dict, pref: dict, online: dict, mem: dict) -> None:
    f3 = lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else str(x)
    L = ["# Alignment on the pipeline's SFT model", "",
         f"- date: {info['date']}", f"- machine: {info['machine']}", f"- commit: {info['commit']}",
         f"- SFT model: `{info['sft']}` ({info['params']:,} parameters; {info['sft_how']})",
         f"- load: {info['load']} (timings measured under heavy load: 2 cores shared by several jobs)",
         f"- command: `{info['command']}` ({info['total_s']:.0f} s in all)", "",
         f"## Preference methods (learnable synthetic preference, {info['pairs']} train / 40 held-out pairs, "
         f"{info['steps']} steps of 8 pairs each)", "",
         "Reward model: held-out accuracy of reward(chosen) > reward(rejected) (target > 0.6).", "",
         "| method | held-out accuracy before | after | seconds |", "|---|---|---|---|",
         f"| reward model | {f3(pref['reward']['accuracy_before'])} | {f3(pref['reward']['accuracy_after'])} "
         f"| {pref['reward']['seconds']:.0f} |", "",
         "DPO / KTO / ORPO, all measured the same way: implicit reward r = 0.1 * (log pi(reply) - log pi_sft(reply))"
         " on held-out pairs; accuracy = share with r(chosen) > r(rejected), margin = mean r(chosen) - r(rejected),"
         " and the mean log-prob gap log pi(chosen) - log pi(rejected) (which the SFT model starts from). Before"
         " training the policy is the reference, so r = 0 and the accuracy is 0 by construction.", "",
         "| method | accuracy before | after | margin before | after | logp gap before | after | seconds |",
         "|---|---|---|---|---|---|---|---|"]
    for m in ("dpo", "kto", "orpo"):
        b, a = pref[m]["before"], pref[m]["after"]
        L.append(f"| {m.upper()} | {f3(b['accuracy'])} | {f3(a['accuracy'])} | {f3(b['reward_margin'])} | "
                 f"{f3(a['reward_margin'])} | {f3(b['logp_chosen_minus_rejected'])} | "
                 f"{f3(a['logp_chosen_minus_rejected'])} | {pref[m]['seconds']:.0f} |")
    L += ["", "Each method's own held-out metric: "
          f"KTO reward margin desirable - undesirable {f3(pref['kto']['own_before']['margin'])} -> "
          f"{f3(pref['kto']['own_after']['margin'])}; ORPO length-normalised log-odds accuracy "
          f"{f3(pref['orpo']['own_before']['accuracy'])} -> {f3(pref['orpo']['own_after']['accuracy'])}.", "",
          f"## GRPO and PPO (toy arithmetic, task {info['task']}, 400 train / 40 held-out prompts)", "",
          ("Prompt: \"a op b=\" (a, b in 0..3, + or -)" if info["task"] == "add_sub" else
           "Prompt: \"a*0=\" or \"a*1=\" (a in 0..99; 40 held-out prompts never trained on)") + " as a user turn. Reward = mean of format (the reply starts "
          "with a number) and exact (its first number is the answer). The SFT model never answers with a number "
          "(a first run straight from it: reward 0 in every sample, so no learning signal), so both start from "
          "the SFT model after 30 supervised steps teaching the format only, with random answers from the "
          "answer range. Held-out: 4 samples per prompt at temperature 1, and greedy.", "",
          "| method | budget steps | train s | mean reward before | after | exact before | after | format before "
          "| after | greedy before | after |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in ("grpo", "ppo"):
        o = online[m]
        b, a = o["before"], o["after"]
        L.append(f"| {m.upper()} | {o['steps']} | {o['train_seconds']:.0f} | {f3(b['reward_sampled'])} | "
                 f"{f3(a['reward_sampled'])} | {f3(b['exact_sampled'])} | {f3(a['exact_sampled'])} | "
                 f"{f3(b['format_sampled'])} | {f3(a['format_sampled'])} | {f3(b['reward_greedy'])} | "
                 f"{f3(a['reward_greedy'])} |")
    ex = online["grpo"]["after"].get("examples", [])
    if ex:
        L += ["", "GRPO greedy replies after training: " + "; ".join(
            f"`{e['prompt'].strip()}` -> `{e['completion'].strip()[:30]}`" for e in ex)]
    L += ["", "## Peak memory: DPO with cached reference log-probs vs SFT", "",
          "Fresh process each, the SFT model, full-parameter AdamW, 3 steps of 16 sequences x "
          f"{mem['sft']['seq_len']} tokens (DPO: 8 pairs; reference log-probs computed once, one model held).", "",
          "| | peak RSS MiB | after loading MiB |", "|---|---|---|",
          f"| SFT | {mem['sft']['peak_rss_mib']:.0f} | {mem['sft']['after_model_mib']:.0f} |",
          f"| DPO | {mem['dpo']['peak_rss_mib']:.0f} | {mem['dpo']['after_model_mib']:.0f} |", "",
          f"DPO / SFT peak: **{mem['ratio_peak']:.2f}x** (target <= 1.3x); training increment "
          f"(peak minus after-loading) ratio {mem['ratio_training_increment']:.2f}x.", ""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", help="pipeline recipe: run it up to SFT (cached) and use its SFT model")
    ap.add_argument("--sft", help="an SFT model directory")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "align.md"))
    ap.add_argument("--runs", default="runs/align_bench_methods")
    ap.add_argument("--steps", type=int, default=40, help="optimisation steps of RM/DPO/KTO/ORPO")
    ap.add_argument("--pairs", type=int, default=200, help="training pairs (40 more are held out)")
    ap.add_argument("--grpo-seconds", type=float, default=240.0)
    ap.add_argument("--ppo-seconds", type=float, default=120.0)
    ap.add_argument("--task", default="add_sub", help="add_sub (a+-b, a,b in 0..3) | times01 (a*0, a*1, a in 0..99)")
    ap.add_argument("--memory-child")
    ap.add_argument("--only", default="memory,preference,online")
    a = ap.parse_args()
    if a.memory_child:
        memory_child(a.memory_child, a.sft)
        return
    import torch

    t0 = time.perf_counter()
    sft_how = "given"
    if a.recipe:
        t = time.perf_counter()
        a.sft = make_sft(a.recipe)
        sft_how = f"`llmforge pipeline {a.recipe}` up to SFT, {time.perf_counter() - t:.0f} s here (0 if cached)"
    if not a.sft or not os.path.exists(os.path.join(a.sft, "config.json")):
        raise SystemExit("give --sft MODEL_DIR or --recipe PIPELINE.toml")
    from llmforge.model import load_hf

    only = set(a.only.split(","))
    cache = os.path.join(a.runs, "results.json")
    done = json.load(open(cache)) if os.path.exists(cache) else {}

    def stage(name, fn):
        if name in only or name not in done:
            done[name] = fn()
            os.makedirs(a.runs, exist_ok=True)
            with open(cache, "w") as f:
                json.dump(done, f, indent=2, default=str)
            print(f"[align bench] {name}: {json.dumps(done[name], default=str)[:600]}", file=sys.stderr, flush=True)
        return done[name]

    mem = stage("memory", lambda: measure_memory(a.sft))
    pref = stage("preference", lambda: preference_suite(a.sft, a.runs, a.steps, a.pairs))
    online = stage("online", lambda: online_suite(a.sft, a.runs, a.grpo_seconds, a.ppo_seconds, task=a.task))
    cpu = _sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": f"{platform.machine()}, {cpu or '?'}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads",
            "commit": _sh("git rev-parse --short HEAD") + (" (with uncommitted changes)" if _sh("git status --porcelain -uno") else ""),
            "sft": a.sft, "params": load_hf(a.sft).cfg.n_params(), "sft_how": sft_how,
            "load": "load average " + _sh("cut -d' ' -f1-3 /proc/loadavg"),
            "command": "nice python bench/align_pipeline.py " + " ".join(sys.argv[1:]),
            "total_s": time.perf_counter() - t0, "pairs": a.pairs, "steps": a.steps, "task": a.task}
    write_report(a.out, info, pref, online, mem)
    print(open(a.out).read())


if __name__ == "__main__":
    main()
