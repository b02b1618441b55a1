"""The code sandbox: correct, wrong, looping, exiting and crashing programs, and HumanEval's own
canonical solutions."""
from __future__ import annotations

import os
import time

import pytest

from llmforge.eval.sandbox import run_python

PROBLEM = {"task_id": "t/0", "entry_point": "add", "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def _run(completion, timeout_s=3.0, **kw):
    from llmforge.eval.humaneval import program

    return run_python(program(PROBLEM, completion), timeout_s=timeout_s, **kw)


def test_correct_and_wrong_completions():
    assert _run("    return a + b\n").status == "passed"
    r = _run("    return a - b\n")
    assert r.status == "failed" and "AssertionError" in r.stderr
    assert _run("    return a +\n").status == "failed"            # syntax error


def test_infinite_loop_times_out_and_its_process_group_is_killed():
    t0 = time.perf_counter()
    r = _run("    while True:\n        pass\n", timeout_s=1.5)
    assert r.status == "timeout"
    assert time.perf_counter() - t0 < 10


def test_endless_output_is_capped():
    r = _run("    while True:\n        print('x' * 1000)\n", timeout_s=2.0)
    assert r.status in ("failed", "timeout") and len(r.stdout) <= 2000     # RLIMIT_FSIZE stops it


@pytest.mark.parametrize("body", ["    import sys; sys.exit(0)\n", "    import os; os._exit(0)\n",
                                  "    raise SystemExit(0)\n", "    quit()\n"])
def test_early_exit_does_not_pass(body):
    # exit status 0 without reaching the end of the program is not a pass
    r = _run(body)
    assert r.status == "exited" and not r.passed


def test_exit_at_import_time_does_not_pass():
    r = run_python("import os\nos._exit(0)\n")
    assert r.status == "exited"


def test_crashes_fail():
    r = _run("    import ctypes; return ctypes.string_at(0)\n")             # segfault
    assert r.status == "failed" and r.returncode < 0
    r = _run("    x = bytearray(8 * 1024 ** 3)\n    return a + b\n", memory_mb=512)  # over RLIMIT_AS
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_escapes_are_blocked():
    # killing the parent, spawning, and networking are refused inside the sandbox
    for body in ("    import os; os.kill(os.getppid(), 9)\n",
                 "    import subprocess; subprocess.run(['true'])\n",
                 "    import socket; socket.create_connection(('127.0.0.1', 9))\n",
                 "    import os; os.system('true')\n"):
        r = _run(body)
        assert r.status == "failed" and "blocked in the llmforge eval sandbox" in r.stderr, body


def test_leftover_child_is_killed(tmp_path):
    marker = tmp_path / "child.pid"
    body = ("    import ctypes, os, time\n    if ctypes.CDLL(None).fork() == 0:\n"
            f"        open({str(marker)!r}, 'w').write(str(os.getpid()))\n        time.sleep(60)\n"
            "    return a + b\n")
    _run(body, timeout_s=2.0)
    deadline = time.time() + 5
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    pid = int(marker.read_text())
    time.sleep(0.2)
    try:
        state = open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z", "X")        # killed (maybe not yet reaped by init)


def test_runs_in_a_fresh_temporary_directory():
    r = run_python("import os\nprint(os.getcwd())\nopen('scratch.txt', 'w').write('x')\n")
    assert r.passed
    cwd = r.stdout.strip().splitlines()[0]
    assert cwd != os.getcwd() and "llmforge-sandbox-" in cwd
    assert not os.path.exists(cwd)              # removed afterwards


@pytest.mark.parametrize("guard", [True, False])
def test_resource_limits_are_in_force(guard):
    r = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_CPU))",
                   timeout_s=2.0, memory_mb=300, guard=guard)
    if guard:      # the guard also hides the resource module, so the limits cannot be raised again
        assert r.status == "failed" and "import of resource halted" in r.stderr
    else:
        assert r.passed and r.stdout.split("\n")[0] == f"{(300 << 20, 300 << 20)} {(3, 4)}"


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_python("pass", timeout_s=0)
    with pytest.raises(ValueError):
        run_python("pass", memory_mb=1)


def test_humaneval_canonical_solutions_pass_and_empty_ones_fail():
    from llmforge.data.corpora import CorpusMissing
    from llmforge.eval.humaneval import check_completions, humaneval_problems

    try:
        problems = humaneval_problems()
    except CorpusMissing as e:
        pytest.skip(str(e))
    assert len(problems) == 164
    probs = problems[:3]
    status = check_completions(probs, [[p["canonical_solution"], "    pass\n"] for p in probs], timeout_s=10)
    assert [s[0] for s in status] == ["passed"] * 3
    assert [s[1] for s in status] == ["failed"] * 3
