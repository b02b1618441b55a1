"""champ preference pairs labelled by checking final answers: the verifier against hand-read cases,
and the labels against champ's human first-wrong-step annotations."""
from __future__ import annotations

from fractions import Fraction

import pytest

from llmforge.align.champ import label_solutions, numbers_in, reference_values, verify_summary
from llmforge.data.corpora import CorpusMissing


def test_numbers_and_references():
    assert numbers_in("is 2,001,000 or -1/2, or \\frac{5}{14}; n-1 and x_2") == [
        Fraction(2001000), Fraction(-1, 2), Fraction(5, 14), Fraction(1)]
    assert reference_values("C(10, 5), or equivalently 252") == [252]
    assert reference_values("5/14, or approximately 35.7%") == [Fraction(5, 14)]
    assert reference_values("100 (i.e., all values)") == [100] and reference_values("98 values") == [98]
    assert reference_values("No") == "no" and reference_values("2^(n-1)") is None


def test_verify_summary_rules():
    prob = "How many strings of length 6 use the digits 1, 2 and 3?"
    assert verify_summary("There are 239 such strings of length 6.", "239", prob) is True   # 6 is in the problem
    assert verify_summary("There are 74 such strings.", "239", prob) is False
    assert verify_summary("There are 3^5 = 243 or 239 strings.", "239", prob) is None          # hedged
    assert verify_summary("The count is 2^10.", "1024", "") is None                          # unevaluated form
    assert verify_summary("The count is given by the formula above.", "239", prob) is None   # no answer stated
    assert verify_summary("No, it cannot.", "No") is True and verify_summary("Yes, always.", "No") is False
    assert verify_summary("It depends.", "Yes") is None
    assert verify_summary("The value is 17.", "n(n+1)/2") is None                           # not checkable


def _problems():
    try:
        from llmforge.data.corpora import _champ

        return _champ()["problems"]
    except CorpusMissing as e:
        pytest.skip(str(e))


# (problem, conversation, verdict), each read by hand: the summary's final answer against the reference
HAND_CHECKED = [
    ("P_Combinatorics_40", "GPT-3.5|No C w/o H", True),             # 144 ways; reference 144
    ("P_Combinatorics_26", "GPT-3.5|No C w/o H", False),            # 74 strings; reference 239
    ("P_Combinatorics_1", "GPT-3.5|0-Shot", False),                 # 29 strings; reference 239
    ("P_Number-Theory_16", "GPT-4|Root C w/ H", False),             # "Yes, n+2 can be"; reference No
    ("P_Combinatorics_30", "GPT-4 Turbo|1/3 Soln", True),           # 2,001,000 terms; reference 2001000
    ("P_Inequality_36", "GPT-4 Turbo|Misleading C w/o H", True),    # smallest value \( -1 \); reference -1
    ("P_Combinatorics_2", "GPT-3.5|Misleading C w/o H", False),     # 30,240; reference C(10, 5) = 252
]


def test_hand_checked_champ_solutions():
    probs = _problems()
    for pid, key, want in HAND_CHECKED:
        got = {k: v for k, _, v in label_solutions(probs[pid])}[key]
        assert got is want, (pid, key, got)


def test_agrees_with_human_annotations():
    """Solutions that champ's annotators found free of wrong steps must never be verified wrong;
    most must be verified at all."""
    probs = _problems()
    ok = wrong = unknown = 0
    for p in probs.values():
        verdict = {k: v for k, _, v in label_solutions(p)}
        for k, ann in (p.get("fws_annotations") or {}).items():
            if isinstance(ann, dict) and ann.get("start_idx", 0) is None and k in verdict:
                ok += verdict[k] is True
                wrong += verdict[k] is False
                unknown += verdict[k] is None
    assert wrong == 0 and ok >= 40 and ok > unknown, (ok, wrong, unknown)
