"""How many scoring requests one API process computes at once.

A score is mostly Python holding the interpreter lock, around short polars queries that
use the cores. Starlette would run every request at once on its pool of 40 threads; under
overload they then only contend. ``benchmarks/bench_api.py`` at 40 requests/s offered (one
process, 2 cores, LEMIS sample) saturated at 17.5-18.7 requests/s that way, and at 19.6-20.7
with 2 scoring threads, 20.3-20.5 with 3, 20.1-22.0 with 4 and 19.0-19.5 with 6. So scoring
runs on a pool of its own, ``api_scoring_threads`` wide (default 4), and requests wait for
it in arrival order without holding a thread.

Single-declaration requests go through a :class:`Coalescer` on that pool: those that arrive
while the threads are busy are scored together in one call when a thread is free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, TypeVarTuple

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

T = TypeVar("T")
Ts = TypeVarTuple("Ts")
Item = TypeVar("Item")
Answer = TypeVar("Answer")

log = logging.getLogger(__name__)


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


@dataclass
class _Waiting(Generic[Item, Answer]):
    item: Item
    answer: concurrent.futures.Future[Answer] = field(default_factory=concurrent.futures.Future)
    queued: float = field(default_factory=time.perf_counter)


@dataclass(eq=False)
class _Lane:
    """The one drain of a coalescer: a task that asks the pool for a thread, call by call.
    Its fields are read and written under the coalescer's lock."""

    busy: bool = False  # a thread is answering a call of it
    ended: bool = False  # its task is done (finished, failed or cancelled)


class Coalescer(Generic[Item, Answer]):
    """Requests of one item each, answered together while a call is being scored.

    Scoring one declaration costs ~60-110 ms, and most of it is fixed per call (a feature
    plan of ~400 nodes, selection, storing): 16 declarations together cost ~1.15x one. One
    by one, a process saturated near 21 requests/s. Here a request queues its item and
    waits for its answer. One drain at a time answers what is queued, at most ``most``
    items per call of ``answer``; it asks the pool for a thread for each call, so batch
    requests waiting for the pool get their turn between its calls, and it ends when the
    queue is empty. Items that arrive during a call wait for the next one instead of
    competing for the interpreter in a thread of their own: two drains at once saturated
    lower (69 against 74 requests/s achieved at 200 offered, ``benchmarks/bench_api.py``)
    with longer waits at 50 (p50 384 against 286 ms). An idle process answers a lone
    request at once: nothing waits for company.

    ``answer`` returns, per item in order, its answer or the exception for its request
    alone (a bad declaration fails its own request, not the others). A request cancelled
    or withdrawn (its client left: ``gone``) while queued is not scored. No request waits
    forever: if the drain stops before the queue is empty (cancelled at shutdown), the
    requests left fail.
    """

    def __init__(
        self,
        pool: ScoringPool,
        answer: Callable[[list[Item]], Sequence[Answer | BaseException]],
        most: int,
        on_batch: Callable[[int], object] | None = None,
        on_wait: Callable[[float], object] | None = None,
    ) -> None:
        """``on_batch``: told how many items each call answered; ``on_wait``: how many
        seconds each item waited, from its request to the start of its call."""
        if most < 1:
            raise ValueError("a coalescer takes at least one item per call")
        self.pool = pool
        self.answer = answer
        self.most = most
        self.on_batch = on_batch
        self.on_wait = on_wait
        # Items cross from the event loop to the pool's threads: a lock, not loop state.
        self._queue: deque[_Waiting[Item, Answer]] = deque()
        self._lock = threading.Lock()
        self._lane: _Lane | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item, gone: Awaitable[object] | None = None) -> Answer:
        """The answer for ``item``, computed alone or with others queued beside it.

        ``gone``: completes when the requester has left (``api/disconnect.py``). If it
        does while the item still waits, the item is withdrawn unanswered and
        :class:`WithdrawnError` raised; an item whose call has begun is answered anyway,
        so what was stored and audited for it is what its request returns.
        """
        waiting: _Waiting[Item, Answer] = _Waiting(item)
        with self._lock:
            self._queue.append(waiting)
            lane = None if self._lane is not None else _Lane()
            if lane is not None:
                self._lane = lane
        if lane is not None:
            task = asyncio.get_running_loop().create_task(self._drain(lane))
            self._tasks.add(task)  # the loop keeps only a weak reference
            # A callback, not a ``finally``: it runs even for a task cancelled before its
            # first step.
            task.add_done_callback(lambda done: self._drain_ended(lane, done))
        answer = asyncio.wrap_future(waiting.answer)
        try:
            if gone is not None and await _left_first(answer, gone) and self._withdraw(waiting):
                raise WithdrawnError
            return await answer
        except BaseException:
            # Cancelled while queued: nobody waits for the answer, so nobody scores it.
            with self._lock, contextlib.suppress(ValueError):
                self._queue.remove(waiting)
            answer.cancel()
            raise

    def _withdraw(self, waiting: _Waiting[Item, Answer]) -> bool:
        """Take ``waiting`` out of the queue; False once a call has taken it."""
        with self._lock:
            try:
                self._queue.remove(waiting)
            except ValueError:
                return False
        waiting.answer.cancel()
        return True

    async def _drain(self, lane: _Lane) -> None:
        while await self.pool.run(self._call, lane):
            pass

    def _call(self, lane: _Lane) -> bool:
        """Answer one call's worth of the queue; False once the lane is over."""
        with self._lock:
            # Given up before this thread started (an ended lane that is not busy is dropped
            # by ``_drain_ended`` under this lock).
            if self._lane is not lane:
                return False
            taken = [self._queue.popleft() for _ in range(min(self.most, len(self._queue)))]
            lane.busy = True
        left: list[_Waiting[Item, Answer]] = []
        try:
            # A request cancelled meanwhile is not scored; a running one can no longer be.
            batch = [w for w in taken if w.answer.set_running_or_notify_cancel()]
            if batch:
                self._answer(batch)
        finally:
            with self._lock:
                lane.busy = False
                more = bool(self._queue) and not lane.ended
                if not more and self._lane is lane:
                    # Under the lock: the next item queued starts a drain of its own.
                    self._lane = None
                    if lane.ended:  # its task is gone: nobody would take what is left
                        left = list(self._queue)
                        self._queue.clear()
            _fail(left)
        return more

    def _drain_ended(self, lane: _Lane, task: asyncio.Task[None]) -> None:
        """The lane's task is done (finished, failed, or cancelled at shutdown): if it still
        holds the queue and no thread is answering a call of it, fail what is left."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a scoring drain failed", exc_info=task.exception())
        left: list[_Waiting[Item, Answer]] = []
        with self._lock:
            lane.ended = True
            # A busy thread does this itself when its call ends.
            if not lane.busy and self._lane is lane:
                self._lane = None
                left = list(self._queue)
                self._queue.clear()
        _fail(left)

    def _answer(self, batch: list[_Waiting[Item, Answer]]) -> None:
        began = time.perf_counter()
        try:
            if self.on_wait is not None:
                for w in batch:
                    self.on_wait(began - w.queued)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            answers = list(self.answer([w.item for w in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} requests")
        # Every request of the call learns why. BaseException too: a polars panic is one,
        # and must fail these requests, not stop the drain.
        except BaseException as exc:
            for w in batch:
                w.answer.set_exception(exc)
            return
        for w, answer in zip(batch, answers, strict=True):
            if isinstance(answer, BaseException):
                w.answer.set_exception(answer)
            else:
                w.answer.set_result(answer)


class WithdrawnError(Exception):
    """The requester left while its item still waited: the item was not answered."""


async def _left_first(answer: asyncio.Future[Any], gone: Awaitable[object]) -> bool:
    """Whether ``gone`` completed before ``answer``; False if ``gone`` failed instead."""
    watch = asyncio.ensure_future(gone)
    try:
        await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    return not answer.done() and not watch.cancelled() and watch.exception() is None


def _fail(left: list[_Waiting[Any, Any]]) -> None:
    """Requests a stopped drain leaves: they fail rather than wait forever."""
    for w in left:
        if w.answer.set_running_or_notify_cancel():
            w.answer.set_exception(RuntimeError("scoring stopped before this request's turn"))
