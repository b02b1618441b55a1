"""ThreadChooser (generate/threads.py): all threads on an idle machine, one while all of them are
slow (oversubscribed), back to all when the load goes; the retries of the slower choice stay rare.
Driven by synthetic timings; then the native decoder on either thread count gives the same logits."""
from __future__ import annotations

import pytest
import torch

from llmforge.generate.native import NativeDecoder
from llmforge.generate.threads import ThreadChooser
from llmforge.model import ModelConfig, Transformer


def _drive(ch, rows, calls, cost):
    """Make `calls` calls; cost(threads) gives each one's seconds. Returns the threads used."""
    used = []
    for _ in range(calls):
        n = ch.pick(rows)
        ch.record(rows, n, cost(n))
        used.append(n)
    return used


def test_idle_machine_uses_every_thread_and_retries_one_rarely():
    ch = ThreadChooser(4)
    used = _drive(ch, 1, 2000, lambda n: 1e-3 if n == 4 else 3e-3)
    assert used[0] == 4
    assert used.count(1) <= 2000 // 100       # a retry of one thread at most every ~144 calls
    assert used.count(4) > 1900


def test_oversubscribed_machine_falls_back_to_one_thread_and_comes_back():
    ch = ThreadChooser(2)
    _drive(ch, 1, 50, lambda n: 1e-3 if n == 2 else 2e-3)             # idle: two threads are faster
    busy = _drive(ch, 1, 1000, lambda n: 40e-3 if n == 2 else 4e-3)  # a competing job: 2 threads stall
    assert busy[:5].count(1) >= 3                                    # noticed within a few calls
    assert busy.count(2) <= 12                                       # slow retries are rare ...
    cost = sum(40e-3 if n == 2 else 4e-3 for n in busy)
    assert cost < 1.25 * 1000 * 4e-3                                 # ... and cost < 25% together
    calm = _drive(ch, 1, 3000, lambda n: 1e-3 if n == 2 else 2e-3)    # the job ends
    assert calm[-500:].count(2) > 490                                 # back on both threads


def test_single_slow_calls_do_not_move_an_idle_machine_to_one_thread():
    """A hiccup (one call 10x slower every 40) is not a load: all threads stay, like on an idle machine."""
    ch = ThreadChooser(2)
    calls = iter(range(10**6))
    used = _drive(ch, 1, 3000, lambda n: (10e-3 if next(calls) % 40 == 0 else 1e-3) if n == 2 else 1.7e-3)
    assert used.count(1) <= 3000 // 60   # the retries: one every 48 * 1.7 calls


def test_call_sizes_are_judged_separately_and_one_thread_is_one():
    ch = ThreadChooser(2)
    _drive(ch, 16, 50, lambda n: 4e-3 if n == 2 else 8e-3)
    _drive(ch, 1, 50, lambda n: 30e-3 if n == 2 else 2e-3)
    assert ch.pick(1) == 1 and ch.pick(16) == 2
    assert _drive(ThreadChooser(1), 3, 10, lambda n: 1.0) == [1] * 10
    with pytest.raises(ValueError):
        ThreadChooser(0)


def test_decoder_results_do_not_depend_on_the_threads_chosen():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=211, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96,
                                max_seq_len=32)).eval()
    ids = torch.randint(0, 211, (12,)).tolist()
    dec = NativeDecoder(m, max_len=32, threads=2)
    dec.chooser.pick = lambda rows: 1 if rows == 1 else 2      # prefill on 2 threads, steps on 1
    got = torch.stack([dec.forward(ids[:6])] + [dec.forward([t]) for t in ids[6:]])
    ref = NativeDecoder(m, max_len=32, threads=1)
    want = torch.stack([ref.forward(ids[:6])] + [ref.forward([t]) for t in ids[6:]])
    assert torch.equal(got, want)
    assert dec._m.threads == 1
    with pytest.raises(ValueError, match="threads"):
        dec._m.threads = 0
