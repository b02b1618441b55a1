"""SmolLM3 in GGUF, as llama.cpp's arch smollm3: a Llama whose every 4th layer has no RoPE (NoPE).
gguf_export.py calls these; the tensors are Llama's (its _names), attn_q / attn_k rows permuted as
for arch llama.

What llama.cpp's smollm3 does (llama-cpp-python 0.3.36 bundle, 2026-10), from its source
(src/models/smollm3.cpp) and, where marked *, checked against the bundled library's logits
(tests/export/test_llamacpp_smollm3.py):
- Layer il applies no RoPE to q and k when (il + 1) % n_no_rope_layer_step == 0 (smollm3.cpp:
  `use_rope = (il + 1) % hparams.n_no_rope_layer_step != 0`), and n_no_rope_layer_step is 4 for
  smollm3, set in the source, not read from any GGUF key (Hugging Face's default
  no_rope_layer_interval, what convert_hf_to_gguf relies on)*. So only rope_layers of exactly that
  pattern are exported (other NoPE layers: ValueError), and import_gguf gives every smollm3 file that
  pattern.
- RoPE of the other layers rotates adjacent pairs, as arch llama*: attn_q / attn_k rows are permuted.
- The rest is Llama's graph (RMSNorm pre-norms, SwiGLU, 1/sqrt(head_dim) query scale); rope scaling
  linear / YaRN keys apply (no rope_freqs tensor: llama3 scaling is refused by gguf_rope.py).
"""
from __future__ import annotations

SMOLLM3_ARCH = "smollm3"
NO_ROPE_STEP = 4     # llama.cpp's n_no_rope_layer_step for smollm3 (no GGUF key)


def smollm3_rope_layers(n_layers: int) -> list[int]:
    """llama.cpp's smollm3 pattern: 1 (RoPE) for layer i unless (i + 1) % 4 == 0."""
    return [int((i + 1) % NO_ROPE_STEP != 0) for i in range(n_layers)]


def smollm3_arch(cfg) -> str:
    """smollm3 for a SmolLM3 model whose NoPE layers are llama.cpp's (every 4th); ValueError otherwise."""
    want = smollm3_rope_layers(cfg.n_layers)
    if list(cfg.rope_layers) != want:
        raise ValueError(f"llama.cpp's smollm3 leaves out RoPE in every 4th layer exactly ({want}): rope_layers "
                         f"{list(cfg.rope_layers)} is not exported")
    return SMOLLM3_ARCH


def read_smollm3_config(base: dict) -> dict:
    """The ModelConfig fields of a smollm3 file beyond base (its Llama fields): the NoPE layers llama.cpp
    runs (none with fewer than 4 layers: a plain Llama then)."""
    rope = smollm3_rope_layers(base["n_layers"])
    return dict(rope_layers=rope) if 0 in rope else {}
