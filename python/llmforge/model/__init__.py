"""llmforge.model: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, GQA, optional MoE) and its
Hugging Face layout (safetensors + config.json).

    from llmforge.model import ModelConfig, Transformer, load_hf, save_hf
    model = Transformer(ModelConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=2))
    logits = model(tokens)                        # (B, T, vocab)
    save_hf(model, "out/")                        # transformers.LlamaForCausalLM loads it
    model = load_hf("some/llama-qwen-mistral-or-mixtral-dir")   # local directory only
"""
from .config import ModelConfig
from .hf import load_hf, save_hf
from .llama import Transformer

__all__ = ["ModelConfig", "Transformer", "load_hf", "save_hf"]
