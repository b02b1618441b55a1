"""llmforge.generate: decoding. cache.KVCache (contiguous), paged_cache.PagedKVCache (block pool for the paged
KV cache ops), sampling (logit processors), engine.generate (static batch), beam.beam_search,
serving_engine.Engine (continuous batching), stop.TextStream (detokenization + stop strings),
load (models for generation, int8/int4), server.OpenAIServer (`llmforge serve`), commands (the CLI)."""
