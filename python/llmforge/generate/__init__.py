"""llmforge.generate: decoding. cache.KVCache (contiguous), paged_cache.PagedKVCache (block pool for the paged
KV cache ops), sampling (logit processors), engine.generate."""
