"""llmforge microbenchmarks: `python -m bench <op>|all [--record]` (see bench/harness.py)."""
