"""Verifiable reward functions: (prompt, completion, reference) -> float.

    exact_answer(completion, "42")         1.0 when the first number in the completion equals the answer
    format_reward(completion, r"^\\d+\\n") 1.0 when the completion matches the pattern
    unit_tests(completion, tests)          1.0 when the code passes the tests in a sandboxed subprocess
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def normalize_answer(s: str) -> str:
    s = s.strip().strip("$").replace(",", "").replace(" ", "")
    return s.rstrip(".")


def exact_answer(completion: str, answer: str) -> float:
    m = _NUM.search(completion)
    return float(m is not None and normalize_answer(m.group()) == normalize_answer(answer))


def format_reward(completion: str, pattern: str) -> float:
    return float(re.match(pattern, completion) is not None)


def unit_tests(code: str, tests: str, timeout_s: float = 5.0) -> float:
    """Run code + tests in a fresh Python process (isolated mode, temp dir, time limit)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "prog.py")
        with open(path, "w") as f:
            f.write(code + "\n\n" + tests + "\n")
        try:
            r = subprocess.run([sys.executable, "-I", path], cwd=d, capture_output=True, timeout=timeout_s,
                               env={"PATH": os.environ.get("PATH", "")})
        except subprocess.TimeoutExpired:
            return 0.0
    return float(r.returncode == 0)
