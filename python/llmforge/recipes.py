"""TOML recipes for `llmforge pretrain` and `llmforge sft` (each recipe file starts with the command
that runs it). Every section maps onto a config dataclass:

    [data]       corpus = "shakespeare" | "peoples_daily" | files = [...]; heldout = 0.1; seq_len = 256;
                 doc_mask = true (false: attend across documents, GPT-style continuous stream);
                 fim_rate = 0.0 (fill-in-the-middle share of training documents), fim_spm_rate
    [tokenizer]  vocab_size = 4096 (trained on the training split) or path = a tokenizer file (ours,
                 tokenizer.json, a SentencePiece tokenizer.model) or a model directory
    [model]      ModelConfig fields (vocab_size and max_seq_len are filled in)
    [train]      PretrainConfig fields
    [sft]        SFTConfig fields (lora_r, template, ...), base = "runs/x/model", chats = "chitchat" | path,
                 heldout = 64 conversations, max_conversations = all; template: a name (chatml, llama3,
                 llama2, mistral, alpaca) or Jinja, default the base model's own (tokenizer_config.json),
                 else chatml; the fine-tuned model is saved with the template it was trained with

Runs are cached by out_dir: re-running resumes from the latest checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
import time

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def load_recipe(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"recipe {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML: {e}") from None


def _fields(cls, section: dict, where: str) -> dict:
    names = set(cls.__dataclass_fields__)
    unknown = sorted(set(section) - names)
    if unknown:
        raise ValueError(f"[{where}] unknown keys {unknown}; known: {sorted(names)}")
    return dict(section)


def corpus_text(data: dict) -> str:
    from .data import corpora
    from .data.io import read_text

    if "files" in data:
        return "\n".join(read_text(f) for f in data["files"])
    name = data.get("corpus", "shakespeare")
    if name == "shakespeare":
        return corpora.shakespeare_text()
    if name == "peoples_daily":
        return "\n\n".join(d.text for d in corpora.peoples_daily())
    raise ValueError(f"unknown corpus {name!r} (shakespeare, peoples_daily, or give files = [...])")


def split_documents(text: str, heldout: float) -> tuple[list[str], list[str]]:
    """Paragraphs (blank-line separated); the last `heldout` fraction of characters is held out."""
    if not 0 < heldout < 1:
        raise ValueError("heldout must be in (0, 1)")
    paras = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    total = sum(len(p) for p in paras)
    acc, cut = 0, len(paras)
    for i, p in enumerate(paras):
        acc += len(p)
        if acc >= (1 - heldout) * total:
            cut = i + 1
            break
    return paras[:cut], paras[cut:]


def run_pretrain(recipe: dict) -> dict:
    data_cfg = recipe.get("data", {})
    train_docs, held_docs = split_documents(corpus_text(data_cfg), float(data_cfg.get("heldout", 0.1)))
    return pretrain_from_docs(recipe, train_docs, held_docs)


def pretrain_from_docs(recipe: dict, train_docs: list[str], held_docs: list[str]) -> dict:
    """Train (or load) the tokenizer, pack the documents, pretrain, score held-out bits/byte and save the
    model (HF layout + tokenizer) under [train] out_dir/model. The [data] corpus keys are not used here."""
    import torch

    from .data.pack import PackedDataset, write_packed
    from .model import ModelConfig, Transformer, save_hf
    from .tokenizer import Tokenizer
    from .train.evaluate import bits_per_byte, token_byte_lengths
    from .train.pretrain import PretrainConfig, pretrain

    data_cfg, tok_cfg = recipe.get("data", {}), recipe.get("tokenizer", {})
    train_cfg = PretrainConfig(**_fields(PretrainConfig, recipe.get("train", {}), "train"))
    out = train_cfg.out_dir
    os.makedirs(out, exist_ok=True)
    seq_len = int(data_cfg.get("seq_len", 256))
    t0 = time.perf_counter()
    tok_path = os.path.join(out, "tokenizer.json")
    if tok_cfg.get("path"):   # our own file, a tokenizer.json, a SentencePiece .model, or a model directory
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(tok_cfg["path"])
    elif os.path.exists(tok_path):
        tok = Tokenizer.load(tok_path)
    else:
        from .data.fim import FIM_TOKENS
        from .tokenizer import DEFAULT_SPECIAL_TOKENS

        specials = tuple(DEFAULT_SPECIAL_TOKENS) + (FIM_TOKENS if data_cfg.get("fim_rate", 0) else ())
        tok = Tokenizer.train_from_iterator(train_docs, vocab_size=int(tok_cfg.get("vocab_size", 4096)),
                                            special_tokens=specials)
        tok.save(tok_path)
    t_tok = time.perf_counter() - t0
    fim_rate = float(data_cfg.get("fim_rate", 0.0))
    for name, docs in (("train", train_docs), ("heldout", held_docs)):
        d = os.path.join(out, "data", name)
        if not os.path.exists(os.path.join(d, "index.json")):
            ids = tok.encode_batch(docs)
            if fim_rate and name == "train":  # held-out text stays plain, so bits/byte stays comparable
                import random

                from .data.fim import fim_transform

                rng = random.Random(train_cfg.seed)
                p, m, s = (tok.token_to_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"))
                if None in (p, m, s):
                    raise ValueError("fim_rate needs a tokenizer with <|fim_prefix|>, <|fim_middle|>, <|fim_suffix|>")
                ids = [fim_transform(x, rng, fim_rate, p, s, m, float(data_cfg.get("fim_spm_rate", 0.0))) for x in ids]
            write_packed(d, ids, seq_len=seq_len, eos_id=tok.eos_id, vocab_size=tok.vocab_size)
    doc_mask = bool(data_cfg.get("doc_mask", True))
    train_data = PackedDataset(os.path.join(out, "data", "train"), seed=train_cfg.seed, doc_mask=doc_mask)
    held = PackedDataset(os.path.join(out, "data", "heldout"), seed=0, shuffle=False, doc_mask=doc_mask)
    mcfg = dict(recipe.get("model", {}))
    mcfg.update(vocab_size=tok.vocab_size, max_seq_len=seq_len, bos_id=tok.bos_id, eos_id=tok.eos_id,
                pad_id=tok.pad_id)
    torch.manual_seed(train_cfg.seed)
    model = Transformer(ModelConfig(**_fields(ModelConfig, mcfg, "model")))
    t1 = time.perf_counter()
    result = pretrain(model, train_data, train_cfg, eval_data=held)
    t_train = time.perf_counter() - t1
    ev = bits_per_byte(model, held, token_byte_lengths(tok), batch_size=train_cfg.batch_size)
    save_hf(model, os.path.join(out, "model"))
    save_tokenizer(tok, os.path.join(out, "model"))
    summary = {"params": model.cfg.n_params(), "tokenizer_s": round(t_tok, 1), "train_s": round(t_train, 1),
               "steps": result["step"], "precision": result["precision"], "heldout": ev,
               "train_tokens": result["step"] * train_cfg.batch_size
               * train_cfg.grad_accum * seq_len}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_chats(spec: str):
    """'chitchat' (the bundled corpus) or a path to OpenAI/ShareGPT/Alpaca JSON(L)."""
    from .data.chat import read_chats
    from .data.corpora import chitchat

    return chitchat() if spec == "chitchat" else read_chats(spec)


def save_tokenizer(tok, model_dir: str, chat_template: str | None = None) -> None:
    """A trained model's tokenizer beside it: llmforge_tokenizer.json, and tokenizer.json +
    tokenizer_config.json (roles, and the chat template it was trained with) for transformers."""
    tok.save(os.path.join(model_dir, "llmforge_tokenizer.json"))
    tok.to_hf_json(model_dir, chat_template=chat_template)


def run_sft(recipe: dict) -> dict:
    from .model import load_hf, save_hf
    from .tokenizer import load_tokenizer
    from .train.lora import merge_lora
    from .train.pretrain import PretrainConfig
    from .data.chat import template_source
    from .train.sft import SFTConfig, sft

    s = dict(recipe.get("sft", {}))
    base = s.pop("base", None)
    chats = s.pop("chats", "chitchat")
    heldout = int(s.pop("heldout", 64))
    max_conversations = s.pop("max_conversations", None)  # the first N conversations (held-out ones included)
    if not base:
        raise ValueError("[sft] needs base = a model directory (HF layout with llmforge_tokenizer.json or tokenizer.json)")
    train_cfg = PretrainConfig(**_fields(PretrainConfig, recipe.get("train", {}), "train"))
    if "template" not in s:   # the base model's own chat template (tokenizer_config.json), else chatml
        from .generate.load import chat_template_for

        s["template"] = chat_template_for(base, None)
    cfg = SFTConfig(**_fields(SFTConfig, s, "sft"), train=train_cfg)
    cfg.out_dir = train_cfg.out_dir
    tok = load_tokenizer(base)
    model = load_hf(base)
    convs = load_chats(chats)
    if max_conversations:
        convs = convs[: int(max_conversations)]
    if len(convs) <= heldout:
        raise ValueError(f"only {len(convs)} conversations; need more than heldout={heldout}")
    res = sft(model, tok, convs[:-heldout], cfg, eval_conversations=convs[-heldout:])
    if cfg.lora_r > 0 and not cfg.quantize_base:
        merge_lora(model)
        save_hf(model, os.path.join(cfg.out_dir, "model"))
    elif cfg.lora_r <= 0:
        save_hf(model, os.path.join(cfg.out_dir, "model"))
    if os.path.isdir(os.path.join(cfg.out_dir, "model")):   # chat with it as it was trained
        save_tokenizer(tok, os.path.join(cfg.out_dir, "model"), template_source(cfg.template))
    summary = {k: v for k, v in res.items() if k != "metrics"}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def load_preferences(spec: str, n: int | None = None) -> list[dict]:
    """'synthetic' (align.data.synthetic_preferences), 'champ' (human-labelled champ pairs),
    'champ_verified' (pairs of champ model solutions labelled by checking their final answers,
    align.champ), or a JSON(L) path of {prompt, chosen, rejected} records."""
    from .align.data import synthetic_preferences
    from .data.corpora import champ_preferences
    from .data.io import read_json_records

    if spec == "synthetic":
        return synthetic_preferences(n or 400)
    if spec == "champ":
        return champ_preferences()
    if spec == "champ_verified":
        from .align.champ import champ_verified_preferences

        return champ_verified_preferences()[:n] if n else champ_verified_preferences()
    return list(read_json_records(spec, required=("prompt", "chosen", "rejected")))


def run_align(recipe: dict) -> dict:
    """[align] method = dpo | orpo | kto | reward; base = model dir; data = synthetic | champ |
    champ_verified | path; heldout = n; plus the method's config fields in [config].
    method = grpo | ppo | rejection: prompts from a task and a reward, see align.online.
    The reward model is saved to out_dir/model (a RewardModel checkpoint: reward = "model" in GRPO/PPO)."""
    from .align.dpo import DPOConfig, dpo
    from .align.kto import KTOConfig, kto, kto_records_from_pairs
    from .align.orpo import ORPOConfig, orpo
    from .align.reward import RewardConfig, RewardModel, train_reward_model
    from .model import load_hf, save_hf
    from .tokenizer import load_tokenizer

    a = dict(recipe.get("align", {}))
    method, base = a.get("method"), a.get("base")
    if method in ("grpo", "ppo", "rejection"):
        from .align.online import run_online

        return run_online(recipe)
    if method not in ("dpo", "orpo", "kto", "reward"):
        raise ValueError(f"[align] method must be dpo, orpo, kto, reward, grpo, ppo or rejection, got {method!r}")
    if not base:
        raise ValueError("[align] needs base = a model directory")
    recs = load_preferences(a.get("data", "synthetic"), a.get("n"))
    held = int(a.get("heldout", max(1, len(recs) // 10)))
    if len(recs) <= held:
        raise ValueError(f"only {len(recs)} preference records for heldout={held}")
    train, evals = recs[:-held], recs[-held:]
    tok = load_tokenizer(base)
    model = load_hf(base)
    cls = {"dpo": DPOConfig, "orpo": ORPOConfig, "kto": KTOConfig, "reward": RewardConfig}[method]
    cfg = cls(**_fields(cls, recipe.get("config", a.get("config", {})), "config"))
    if method == "dpo":
        res = dpo(model, tok, train, cfg, evals)
    elif method == "orpo":
        res = orpo(model, tok, train, cfg, evals)
    elif method == "kto":
        res = kto(model, tok, kto_records_from_pairs(train), cfg, kto_records_from_pairs(evals))
    else:
        rm = RewardModel(model)
        res = train_reward_model(rm, tok, train, cfg, evals)
        rm.save(os.path.join(cfg.out_dir, "model"))
    if method != "reward":
        save_hf(model, os.path.join(cfg.out_dir, "model"))
    from .generate.load import model_chat_template

    save_tokenizer(tok, os.path.join(cfg.out_dir, "model"), model_chat_template(base))
    out = {k: v for k, v in res.items() if k in ("before", "after", "accuracy_before", "accuracy_after")}
    with open(os.path.join(cfg.out_dir, "summary.json"), "w") as f:
        json.dump(out, f, indent=2)
    return out
