"""llmforge.export: GGUF export (arch llama) that verifies itself, and GGUF import."""
