"""llmforge.model: a Llama-style decoder (RoPE, RMSNorm, SwiGLU, GQA, optional MoE; Gemma's and
OLMo's variations: GeGLU, post-norms, soft-caps, sliding-window layers) and its Hugging Face layouts
(safetensors + config.json: Llama, Qwen2 / 3, Mistral, Phi-3, Mixtral, Qwen MoE, Gemma 1-3, OLMo 2 / 3).

    from llmforge.model import ModelConfig, Transformer, load_hf, save_hf
    model = Transformer(ModelConfig(vocab_size=4096, dim=256, n_layers=4, n_heads=8, n_kv_heads=2))
    logits = model(tokens)                        # (B, T, vocab)
    save_hf(model, "out/")                        # transformers.LlamaForCausalLM loads it
    model = load_hf("some/llama-qwen-gemma-or-olmo-dir")       # local directory only
"""
from .config import ModelConfig
from .hf import load_hf, save_hf
from .llama import Transformer

__all__ = ["ModelConfig", "Transformer", "load_hf", "save_hf"]
