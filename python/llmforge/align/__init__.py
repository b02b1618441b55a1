"""llmforge.align: preference alignment. Each method is a config dataclass plus one function;
the losses (align.losses) and chunked log-probabilities (align.logprobs) are shared."""
