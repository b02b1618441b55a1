"""llama.cpp's sliding-window layer pattern, shared by the archs that read one (gemma2, gemma3,
olmo2): a period p makes layer i slide when i % p < p - 1 (the last layer of every period global),
0 makes every layer slide (llama_hparams::set_swa_pattern)."""
from __future__ import annotations

SLIDING, FULL = "sliding_attention", "full_attention"


def period_layer_types(period: int, n_layers: int) -> list[str]:
    """The layer_types of llama.cpp's periodic pattern (every layer sliding for period 0)."""
    return [SLIDING if period == 0 or i % period < period - 1 else FULL for i in range(n_layers)]


def sliding_period(layer_types: list[str]) -> int | None:
    """The period p whose pattern is layer_types (0 when every layer slides), None when none is."""
    n = len(layer_types)
    if all(t == SLIDING for t in layer_types):
        return 0
    return next((p for p in range(2, n + 1) if period_layer_types(p, n) == list(layer_types)), None)
