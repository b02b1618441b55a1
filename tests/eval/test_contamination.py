"""Contamination report on planted overlaps."""
from __future__ import annotations

from llmforge.eval.contamination import contamination_report

ITEMS = [
    "Which of the following best describes the process by which plants convert light energy into chemical energy?",
    "A train leaves the station at noon travelling at sixty miles per hour towards a distant city in the north.",
    "Define entropy.",
    "The quick brown fox jumps over the lazy dog while the farmer sleeps under the old oak tree nearby.",
]
FILLER = "Now is the winter of our discontent made glorious summer by this sun of York and all the clouds"


def test_planted_overlaps_are_found_and_near_misses_are_not():
    w1 = ITEMS[1].split()
    w3 = ITEMS[3].split()
    docs = [
        FILLER,
        FILLER + " " + ITEMS[0].upper().replace(",", " ;") + " " + FILLER,   # whole item, other case/punct.
        "prefix " + " ".join(w1[2:15]) + " suffix",                          # exactly 13 words of item 1
        "prefix " + " ".join(w3[:12]) + " suffix",                           # only 12 words of item 3: no hit
        "we must define, entropy! said the teacher",                         # a short item matches whole
        FILLER,
    ]
    rep = contamination_report({"bench": ITEMS, "other": [FILLER + " extra words here"]}, docs, n=13)
    b = rep["benchmarks"]["bench"]
    assert b["items"] == 4 and b["contaminated"] == 3 and b["examples"] == [0, 1, 2]
    assert b["fraction"] == 0.75
    assert rep["benchmarks"]["other"]["contaminated"] == 1            # FILLER's first 13 words are in docs
    assert rep["training_docs"] == 6 and rep["training_docs_hit"] == 6 - 1   # doc 3 is clean
    assert rep["n"] == 13 and rep["training_chars"] == sum(len(d) for d in docs)


def test_clean_training_text_reports_nothing():
    rep = contamination_report({"bench": ITEMS}, [FILLER] * 3, n=13)
    assert rep["benchmarks"]["bench"]["contaminated"] == 0 and rep["training_docs_hit"] == 0


def test_examples_are_item_ids_when_items_are_keyed():
    rep = contamination_report({"b": {"HumanEval/7": ITEMS[0], "HumanEval/9": ITEMS[1]}}, [ITEMS[1]], n=13)
    assert rep["benchmarks"]["b"]["examples"] == ["HumanEval/9"] and rep["benchmarks"]["b"]["contaminated"] == 1
