"""How many CPU threads llama.cpp decodes with, adapted to what else the machine is running.

llama.cpp's worker threads wait for each other several times per token. On a quiet machine the
fastest choice is every core with short spin-waits; but when another program holds a core (a browser,
an editor, a second model) a thread that waits for a descheduled partner stalls every step, and on
our 2-core test machine two threads beside one busy process ran at 0.39x of their quiet speed while
one thread kept 0.96x. No fixed setting wins both, so a governor measures: it times plain decode
steps at two thread counts (all, and half) and keeps the faster, looking again at the other count
when the current one slows down and, ever more rarely, when nothing changes.

Pure bookkeeping: `LM` feeds it step times and applies the count it returns (llama.cpp's thread count
can change between decodes; results are bit-identical for any count).
"""

from __future__ import annotations

import statistics
from collections import deque


class ThreadGovernor:
    """Chooses between `high` threads and `high // 2` from the measured time of one-token decodes.

    Args:
        high: the most threads to use (the cores llama.cpp was given).
        window: steps per measurement (their median is the arm's time).
        slowdown: re-measure the other count when the current one is this much slower than its best.
        first_interval, max_interval: steps between routine re-measurements; the interval doubles
            while the choice holds (so a quiet machine pays one 8-step probe per ~1,000 steps).
    """

    def __init__(self, high: int, *, window: int = 8, slowdown: float = 1.5, first_interval: int = 64, max_interval: int = 1024) -> None:
        if high < 2:
            raise ValueError("a thread governor needs at least 2 threads to choose from")
        self.high, self.low = high, max(1, high // 2)
        self.window, self.slowdown = window, slowdown
        self.first_interval, self.max_interval = first_interval, max_interval
        self.current = self.settled = high
        self.switches = 0  # times the settled count changed (reported by `sia info`-style diagnostics and tests)
        self._times: deque[float] = deque(maxlen=window)
        self._median: dict[int, float] = {}
        self._best = float("inf")  # best median of the settled count since it was chosen
        self._skip = 1  # the first step after a change of count is not timed (threads wake up)
        self._steps = 0
        self._interval = first_interval
        self._next_probe = window  # at start: measure `high`, then `low` once, then decide

    def record(self, seconds: float) -> int:
        """One decode step at `current` threads took `seconds`; returns the thread count for the next step."""
        self._steps += 1
        if self._skip:
            self._skip -= 1
            return self.current
        self._times.append(seconds)
        if len(self._times) < self.window:
            return self.current
        median = statistics.median(self._times)
        self._median[self.current] = median
        if self.current != self.settled:  # a probe just finished: keep whichever count was faster
            self._decide()
        else:
            self._best = min(self._best, median)
            if self._steps >= self._next_probe or median > self.slowdown * self._best:
                self._switch(self.low if self.settled == self.high else self.high)
            else:
                self._times.clear()
        return self.current

    def _decide(self) -> None:
        probe, settled = self.current, self.settled
        if self._median[probe] < 0.95 * self._median.get(settled, float("inf")):
            self.settled, self.switches, self._interval = probe, self.switches + 1, self.first_interval
        else:
            self._interval = min(2 * self._interval, self.max_interval)
        self._best = self._median[self.settled]  # a fresh baseline: a longer context is slower for every count
        self._next_probe = self._steps + self._interval
        self._switch(self.settled)

    def _switch(self, threads: int) -> None:
        self.current = threads
        self._times.clear()
        self._skip = 1
