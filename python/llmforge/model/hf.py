"""Load and save the Hugging Face layout: config.json + model.safetensors (sharded checkpoints
with model.safetensors.index.json load too). Local directories only; nothing is downloaded.
Loading never unpickles: only safetensors files are read.
"""
from __future__ import annotations

import json
import os

import torch

from .config import ModelConfig, gemma3_text_config
from .llama import Transformer


def _read_config(path: str) -> dict:
    cpath = os.path.join(path, "config.json")
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"{cpath} not found (a local Hugging Face model directory is required)")
    try:
        with open(cpath, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{cpath}: not a UTF-8 JSON file: {e}") from None


def _weight_files(path: str) -> list[str]:
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
        if not all(isinstance(x, str) and x and os.path.basename(x) == x for x in files):
            raise ValueError(f"{index}: weight_map must name files in {path}")
        return [os.path.join(path, x) for x in files]
    if any(n.endswith((".bin", ".pt", ".pth")) for n in os.listdir(path)):
        raise ValueError(f"{path}: only safetensors checkpoints are loaded (pickle files can execute code)")
    raise FileNotFoundError(f"{path}: no model.safetensors or model.safetensors.index.json")


_MIXTRAL_FFN = ((".gate_proj.", ".w1."), (".down_proj.", ".w2."), (".up_proj.", ".w3."))


def hf_key(cfg: ModelConfig, key: str) -> str:
    """Our state-dict key -> the checkpoint's. They are the same but for MoE layers: the router is
    `mlp.gate` (Qwen3-MoE) or `block_sparse_moe.gate` (Mixtral, whose experts' projections are
    w1 gate, w3 up, w2 down)."""
    if not cfg.n_experts or ".mlp." not in key:
        return key
    mixtral = cfg.hf_model_type() == "mixtral"
    key = key.replace(".mlp.router.", ".block_sparse_moe.gate." if mixtral else ".mlp.gate.")
    if mixtral and ".mlp.experts." in key:
        key = key.replace(".mlp.experts.", ".block_sparse_moe.experts.")
        for ours, theirs in _MIXTRAL_FFN:
            key = key.replace(ours, theirs)
    return key


def _unfuse_phi3(state: dict, cfg: ModelConfig) -> dict:
    """Phi-3's fused projections split into ours: qkv_proj rows are [q | k | v], gate_up_proj rows
    [gate | up]. (The model is Llama's otherwise; it saves in the Llama layout.)"""
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out = {}
    for k, v in state.items():
        if k.endswith("self_attn.qkv_proj.weight"):
            if v.shape[0] != q + 2 * kv:
                raise ValueError(f"{k} has {v.shape[0]} rows, expected {q + 2 * kv} (q, k and v heads)")
            pre = k[: -len("qkv_proj.weight")]
            out[pre + "q_proj.weight"], out[pre + "k_proj.weight"], out[pre + "v_proj.weight"] = v.split([q, kv, kv])
        elif k.endswith("mlp.gate_up_proj.weight"):
            if v.shape[0] != 2 * cfg.ffn_dim:
                raise ValueError(f"{k} has {v.shape[0]} rows, expected {2 * cfg.ffn_dim} (gate and up)")
            pre = k[: -len("gate_up_proj.weight")]
            out[pre + "gate_proj.weight"], out[pre + "up_proj.weight"] = v.split([cfg.ffn_dim, cfg.ffn_dim])
        else:
            out[k] = v
    return out


_LANGUAGE_MODEL = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),   # checkpoints
                   ("model.language_model.", "model."))                      # transformers 5's own names
_VISION = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def _language_model(state: dict) -> dict:
    """A Gemma 3 multimodal state dict's language model under Gemma3ForCausalLM's names (the
    vision tower and projector dropped)."""
    out = {}
    for k, v in state.items():
        if k.startswith(_VISION):
            continue
        for theirs, ours in _LANGUAGE_MODEL:
            if k.startswith(theirs):
                k = ours + k[len(theirs):]
                break
        out[k] = v
    return out


def load_hf(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Transformer:
    """A Transformer from a local Llama / Qwen2 / Qwen3 / Mistral / Phi-3 / Mixtral / Qwen3-MoE /
    Qwen2-MoE / Gemma / Gemma 2 / Gemma 3 checkpoint directory (config.json as transformers 4 or 5
    writes it; see ModelConfig.from_hf). Phi-3's fused qkv_proj / gate_up_proj are split on load; of a
    multimodal Gemma 3 (4B and up) the language model is loaded, the vision tower left out."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    raw = _read_config(path)
    multimodal = raw.get("model_type") == "gemma3"
    try:
        if multimodal:   # Gemma 3 4B / 12B / 27B: the language model, the vision tower left out
            raw = gemma3_text_config(raw)
        cfg = ModelConfig.from_hf(raw)
    except (KeyError, TypeError, ValueError) as e:
        msg = str(e) if str(e).startswith(path) else f"{path}: config.json: {type(e).__name__}: {e}"
        raise ValueError(msg) from None
    with torch.device("meta"):
        model = Transformer(cfg)
    state = {}
    for f in _weight_files(path):
        try:
            state.update(load_file(f, device=device))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f}: cannot read safetensors file: {e}") from None
    if multimodal:
        state = _language_model(state)
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    if raw.get("model_type") == "phi3":
        state = _unfuse_phi3(state, cfg)
    expected = model.state_dict()
    ours = {hf_key(cfg, k): k for k in expected}
    state = {ours.get(k, k): v for k, v in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if "rotary_emb" not in k)
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{path}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
    if cfg.norm_plus_one:   # Gemma stores w, the model holds the scale 1 + w (added in float32)
        state = {k: v.float() + 1 if _is_norm(k) else v for k, v in state.items()}
    model.load_state_dict({k: state[k].to(dtype) for k in expected}, assign=True)
    return model


def _is_norm(key: str) -> bool:
    """Is a state-dict key an RMSNorm weight (input_layernorm, q_norm, model.norm, ...)?"""
    return key.endswith(("norm.weight", "layernorm.weight"))


def save_hf(model: Transformer, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors (atomically: temp names, then rename)."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    cfg = model.cfg.to_hf()
    plus_one = model.cfg.norm_plus_one    # Gemma: the checkpoint holds w of the scale 1 + w
    state = {hf_key(model.cfg, k): ((v.double() - 1).to(v.dtype) if plus_one and _is_norm(k) else v)
             for k, v in model.state_dict().items()}
    state = {k: (v.to(dtype) if dtype else v).detach().contiguous().cpu() for k, v in state.items()}
    if dtype is not None:
        cfg["torch_dtype"] = str(dtype).replace("torch.", "")
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
    os.replace(os.path.join(path, "config.json.tmp"), os.path.join(path, "config.json"))
