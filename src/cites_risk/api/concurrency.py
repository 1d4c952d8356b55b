"""How many scoring requests one API process computes at once.

A score is mostly Python holding the interpreter lock, around short polars queries that
use the cores. Starlette would run every request at once on its pool of 40 threads; under
overload they then only contend. ``benchmarks/bench_api.py`` at 40 requests/s offered (one
process, 2 cores, LEMIS sample) saturated at 17.5-18.7 requests/s that way, and at 19.6-20.7
with 2 scoring threads, 20.3-20.5 with 3, 20.1-22.0 with 4 and 19.0-19.5 with 6. So scoring
runs on a pool of its own, ``api_scoring_threads`` wide (default 4), and requests wait for
it in arrival order without holding a thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class ScoringPool:
    def __init__(self, total: int, on_wait: Callable[[float], object] | None = None) -> None:
        """``on_wait``: told how many seconds each request waited for a thread."""
        if total < 1:
            raise ValueError("a scoring pool needs at least one thread")
        self.total = total
        self.on_wait = on_wait
        # One limiter per event loop, as anyio keeps its default one: a limiter's waiters
        # are woken by the loop that frees a slot, and a waiter of another loop would never
        # wake. uvicorn runs one loop per process; tests may run several at once.
        self._limiters: RunVar[anyio.CapacityLimiter] = RunVar(f"scoring_pool_{id(self)}")

    def _limiter(self) -> anyio.CapacityLimiter:
        try:
            return self._limiters.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(self.total)  # serves waiters in arrival order
            self._limiters.set(limiter)
            return limiter

    async def run(self, func: Callable[[*Ts], T], *args: *Ts) -> T:
        """``func(*args)`` on a scoring thread, once one is free."""
        queued = time.perf_counter()

        def timed() -> T:
            if self.on_wait is not None:
                self.on_wait(time.perf_counter() - queued)
            return func(*args)

        return await anyio.to_thread.run_sync(timed, limiter=self._limiter())
