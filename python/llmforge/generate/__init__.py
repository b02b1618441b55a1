"""llmforge.generate: decoding. cache.KVCache (contiguous), sampling (logit processors), engine.generate."""
