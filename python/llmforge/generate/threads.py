"""How many threads a native decode call should use: all of them, unless the machine is busy.

The native step (csrc/cpu/decode_model.cpp) meets its threads at ~5 barriers per layer. On an idle
machine that is what makes it fast; on an oversubscribed one (a training job or another server on
the same cores) a thread waiting at a barrier spins while the thread it waits for is descheduled,
and a step can take 10-40x longer than on one thread (measured on this project's 2-core machine
next to a 2-thread torch job: 64 ms/token on 2 threads, 5 ms on 1).

ThreadChooser keeps a running mean of the seconds per call for "all threads" and "one thread",
per call size (rows of the call, in power-of-two buckets), uses the faster, and now and then tries
the other again so that it notices when the load comes or goes. One thread is first tried at the
third call of a size (at once when all threads run 2x slower than their best). The cost of the
tries is bounded: the slower choice is retried after `base * (its time / the faster's)` calls, so
the retries cost about 1/base of the run whatever the ratio.

Timing noise on a shared machine is one-sided: a descheduled call is slower, never faster. So
one call over twice its choice's mean is ignored until a second one in a row confirms a load
(on the 2-core Zen 5 VM a single 3 ms hiccup among 0.77 ms steps had moved decode to one thread,
1.3 ms, for ~100 calls at a time: 1.8x slower idle), while a call under half its choice's mean (a
slow first call) or a retry of the slower choice that beats the faster one's mean is believed at
once.

    chooser = ThreadChooser(4)
    n = chooser.pick(rows)            # threads for this call
    ... time the call ...
    chooser.record(rows, n, seconds)
"""
from __future__ import annotations


class ThreadChooser:
    def __init__(self, threads: int, base: int = 48, alpha: float = 0.3, max_gap: int = 2048):
        if threads < 1:
            raise ValueError(f"ThreadChooser: threads must be >= 1, got {threads}")
        self.threads, self.base, self.alpha, self.max_gap = int(threads), int(base), float(alpha), int(max_gap)
        self._mean: dict[tuple[int, int], float] = {}     # (bucket, threads) -> running mean seconds
        self._since: dict[int, int] = {}                  # bucket -> calls since the slower arm ran
        self._best: dict[int, float] = {}                 # bucket -> fastest all-thread call seen
        self._outlier: set[tuple[int, int]] = set()       # (bucket, threads) whose last call was an outlier

    @staticmethod
    def _bucket(rows: int) -> int:
        return max(int(rows), 1).bit_length()

    def pick(self, rows: int) -> int:
        """Threads for a call of `rows` rows."""
        full = self.threads
        if full == 1:
            return 1
        b = self._bucket(rows)
        t_full, t_one = self._mean.get((b, full)), self._mean.get((b, 1))
        if t_full is None:
            return full
        if t_one is None:   # one try of one thread after a few calls (at once if all threads look slow)
            n = self._since.get(b, 0) + 1
            self._since[b] = n
            return 1 if n >= 3 or t_full > 2.0 * self._best.get(b, t_full) else full
        fast, slow = (full, 1) if t_full <= t_one else (1, full)
        ratio = max(t_full, t_one) / max(min(t_full, t_one), 1e-9)
        gap = min(self.max_gap, int(self.base * ratio))
        n = self._since.get(b, 0) + 1
        if n >= gap:
            self._since[b] = 0
            return slow
        self._since[b] = n
        return fast

    def record(self, rows: int, threads: int, seconds: float) -> None:
        """The measured time of a call made with `threads` threads."""
        if not seconds >= 0:
            return
        b = self._bucket(rows)
        key = (b, int(threads))
        old = self._mean.get(key)
        other = self._mean.get((b, 1 if threads == self.threads else self.threads))
        if old is None:
            self._mean[key] = seconds
        elif seconds > 2.0 * old and key not in self._outlier:
            self._outlier.add(key)                        # one slow call: wait for a second
        else:
            self._outlier.discard(key)
            if seconds < 0.5 * old or (other is not None and seconds < other < old):
                self._mean[key] = seconds                 # good news is not noise: believe it at once
            else:
                self._mean[key] = old + self.alpha * (seconds - old)
        if threads == self.threads:
            self._best[b] = min(self._best.get(b, seconds), seconds)
