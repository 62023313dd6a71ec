"""What the dpcalib benchmarks share: the mission's numbers and a best-of-N timer."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

#: the mission: the smallest σ for (ε = 2, δ = 1e-5) over 1000 steps at q = 0.01; ε is timed at σ = 1
Q, SIGMA, STEPS, DELTA, TARGET_EPS = 0.01, 1.0, 1000, 1e-5, 2.0


def best_time(fn: Callable[[], T], repeats: int = 5, clock: Callable[[], float] = time.perf_counter) -> tuple[float, T]:
    """(best time in seconds, value) over ``repeats`` calls after one warm-up call; wall time by default, or
    ``clock=time.thread_time`` for the CPU time of this thread (less skewed when other processes share the cores)."""
    value = fn()
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        value = fn()
        best = min(best, clock() - start)
    return best, value


def single_threaded() -> None:
    """Pin numpy's and torch's thread pools to one thread: call before importing them (benchmarks compare
    single-threaded costs)."""
    import os

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
