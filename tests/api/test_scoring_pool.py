"""The scoring pool: at most ``total`` scores at once, the rest served in arrival order,
each wait reported; and the API scores through it. The coalescer: requests that wait for a
thread are answered together, each with its own answer."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from cites_risk.api.concurrency import Coalescer, ScoringPool, WithdrawnError
from cites_risk.profiling.roles import Role
from tests.api.conftest import Api, declaration


def _run_all(pool: ScoringPool, tasks: int, seconds: float) -> tuple[int, list[int]]:
    """Start ``tasks`` jobs in order; (most running at once, the order they started in)."""
    lock = threading.Lock()
    running, most, started = 0, 0, []

    def job(k: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            started.append(k)
        time.sleep(seconds)
        with lock:
            running -= 1
        return k

    async def main() -> None:
        async def one(k: int) -> None:
            assert await pool.run(job, k) == k

        async with anyio.create_task_group() as group:
            for k in range(tasks):
                group.start_soon(one, k)
                await anyio.sleep(0.005)  # arrivals in a known order

    anyio.run(main)
    return most, started


def test_no_more_than_total_scores_run_at_once() -> None:
    most, started = _run_all(ScoringPool(2), tasks=6, seconds=0.05)
    assert most == 2 and sorted(started) == list(range(6))


def test_waiting_requests_are_served_in_arrival_order_and_their_waits_reported() -> None:
    waits: list[float] = []
    most, started = _run_all(ScoringPool(1, on_wait=waits.append), tasks=5, seconds=0.03)
    assert most == 1 and started == list(range(5))
    assert len(waits) == 5 and waits[0] < 0.03 <= waits[-1]


def test_event_loops_sharing_a_pool_never_wait_on_each_other() -> None:
    """One app may serve from several event loops at once (test clients, embedding): a
    slot freed in one loop must not be handed to a waiter of another, which would never
    wake and would keep its slot for good."""
    pool = ScoringPool(1)
    finished: list[str] = []

    def serve(name: str, hold: float) -> None:
        async def main() -> None:
            finished.append(await pool.run(lambda: time.sleep(hold) or name))

        anyio.run(main)

    first = threading.Thread(target=serve, args=("first", 0.3), daemon=True)
    second = threading.Thread(target=serve, args=("second", 0.0), daemon=True)
    first.start()
    time.sleep(0.1)  # the second loop asks while the first holds the only thread
    second.start()
    for thread in (first, second):
        thread.join(timeout=10)
    assert not first.is_alive() and not second.is_alive(), "a loop never woke"
    assert sorted(finished) == ["first", "second"]


def test_a_pool_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        ScoringPool(0)


def test_scores_go_through_the_pool_and_show_in_the_metrics(api: Api) -> None:
    def waits() -> float:
        text = api.client.get("/metrics", headers=api.auth(Role.INSPECTOR)).text
        line = next(
            x for x in text.splitlines() if x.startswith("cites_risk_scoring_wait_seconds_count")
        )
        return float(line.split()[-1])

    before = waits()
    one = api.client.post("/v1/score", json=declaration("POOL-1"), headers=api.auth(Role.INSPECTOR))
    assert one.status_code == 200, one.text
    batch = api.client.post(
        "/v1/score/batch",
        json={"declarations": [declaration("POOL-2"), declaration("POOL-3")]},
        headers=api.auth(Role.TARGETING),
    )
    assert batch.status_code == 200, batch.text
    assert waits() == before + 2  # one per request, whatever its size


def _coalesced(
    pool: ScoringPool, items: list[int], most: int = 32, cancel: int = -1
) -> tuple[list[list[int]], dict[int, object]]:
    """(the calls made, each item's answer or error) when ``items[0]`` holds the thread
    until the other requests wait for it.

    The answer of ``i`` is ``10 * i``; an item of 3 is refused alone; the request at
    position ``cancel`` is cancelled while it waits."""
    calls: list[list[int]] = []
    release = threading.Event()

    def answer(batch: list[int]) -> list[int | Exception]:
        calls.append(list(batch))
        assert release.wait(10)
        return [ValueError("three") if i == 3 else 10 * i for i in batch]

    coalescer = Coalescer(pool, answer, most)
    got: dict[int, object] = {}

    scopes: list[anyio.CancelScope] = []

    async def one(k: int, item: int) -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            try:
                got[k] = await coalescer.submit(item)
            except ValueError as exc:
                got[k] = exc

    async def main() -> None:
        # A drain that stops early leaves requests waiting: fail, don't hang.
        with anyio.fail_after(20):
            await queue_and_release()

    async def queue_and_release() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(one, 0, items[0])
            while not calls:  # the first request has the thread
                await anyio.sleep(0.001)
            for k, item in enumerate(items[1:], start=1):
                group.start_soon(one, k, item)
                await wait_all_tasks_blocked()  # queued in this order
                if k == cancel:
                    scopes[k].cancel()
                    await wait_all_tasks_blocked()
            if cancel == 0:  # its call has begun
                scopes[0].cancel()
                await wait_all_tasks_blocked()
            release.set()

    anyio.run(main)
    return calls, got


def test_requests_waiting_for_the_thread_are_answered_in_one_call() -> None:
    calls, got = _coalesced(ScoringPool(1), [1, 2, 3, 4, 5])
    assert calls == [[1], [2, 3, 4, 5]]
    assert {k: v for k, v in got.items() if k != 2} == {0: 10, 1: 20, 3: 40, 4: 50}
    assert isinstance(got[2], ValueError)  # refused alone; the others of its call answered


def test_a_call_takes_at_most_most_and_the_queue_is_emptied() -> None:
    calls, got = _coalesced(ScoringPool(1), [1, 2, 4, 5, 6, 7], most=2)
    assert calls == [[1], [2, 4], [5, 6], [7]]
    assert got == {0: 10, 1: 20, 2: 40, 3: 50, 4: 60, 5: 70}


def test_a_request_cancelled_while_it_waits_is_not_scored() -> None:
    calls, got = _coalesced(ScoringPool(1), [1, 2, 4, 5], cancel=1)
    assert calls == [[1], [4, 5]]
    assert got == {0: 10, 2: 40, 3: 50}


def test_a_request_cancelled_while_it_is_scored_stops_nothing_else() -> None:
    calls, got = _coalesced(ScoringPool(1), [1, 2, 4, 5], cancel=0)
    assert calls == [[1], [2, 4, 5]]
    assert got == {1: 20, 2: 40, 3: 50}


def test_a_failed_call_fails_each_of_its_requests() -> None:
    coalescer: Coalescer[int, int] = Coalescer(ScoringPool(1), lambda batch: [], 4)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="0 answers for 1 requests"):
            await coalescer.submit(1)

    anyio.run(main)
    with pytest.raises(ValueError, match="at least one"):
        Coalescer(ScoringPool(1), lambda batch: batch, 0)


class _Panic(BaseException):
    """As polars' PanicException: not an Exception."""


def test_a_call_that_panics_fails_its_requests_and_the_next_is_answered() -> None:
    def answer(batch: list[int]) -> list[int]:
        if 1 in batch:
            raise _Panic("index out of bounds")
        return [10 * i for i in batch]

    coalescer: Coalescer[int, int] = Coalescer(ScoringPool(1), answer, 4)

    async def main() -> None:
        with anyio.fail_after(10):
            with pytest.raises(_Panic):
                await coalescer.submit(1)
            assert await coalescer.submit(2) == 20

    anyio.run(main)


def test_a_drain_cancelled_before_it_began_leaves_no_request_waiting() -> None:
    """An event loop that ends right after a request queued cancels the drain before its
    first step (no ``finally`` of it runs); a request from another loop is still answered."""
    coalescer: Coalescer[int, int] = Coalescer(
        ScoringPool(1), lambda batch: [10 * i for i in batch], 4
    )

    async def leave() -> None:
        # The request's first step queues it and creates its drain; the loop stops right
        # after that step, before the drain's first.
        asyncio.get_running_loop().create_task(coalescer.submit(1))

    async def later() -> int:
        async with asyncio.timeout(10):
            return await coalescer.submit(2)

    asyncio.run(leave())
    assert asyncio.run(later()) == 20


def test_a_batch_request_gets_the_thread_between_calls_of_single_requests() -> None:
    order: list[str] = []
    release = threading.Event()

    def answer(batch: list[int]) -> list[int]:
        order.append(f"call {batch}")
        assert release.wait(10)
        return batch

    pool = ScoringPool(1)
    coalescer: Coalescer[int, int] = Coalescer(pool, answer, 32)

    async def main() -> None:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as group:
                group.start_soon(coalescer.submit, 1)
                while not order:  # the first call has the only thread
                    await anyio.sleep(0.001)
                group.start_soon(pool.run, order.append, "batch")
                await wait_all_tasks_blocked()
                group.start_soon(coalescer.submit, 2)
                group.start_soon(coalescer.submit, 3)
                await wait_all_tasks_blocked()
                release.set()

    anyio.run(main)
    assert order == ["call [1]", "batch", "call [2, 3]"]


def test_a_requester_that_leaves_withdraws_a_waiting_item_but_not_one_being_answered() -> None:
    """What was stored and audited for a request is what it returns: an item whose call has
    begun is answered even if its requester has left; a waiting one is withdrawn."""
    calls: list[list[int]] = []
    started, release = threading.Event(), threading.Event()

    def answer(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        started.set()
        assert release.wait(10)
        return [10 * i for i in batch]

    coalescer = Coalescer(ScoringPool(1), answer, 32)
    got: dict[int, object] = {}

    async def main() -> None:
        gone = {k: asyncio.Event() for k in (1, 2, 3)}

        async def one(k: int) -> None:
            try:
                got[k] = await coalescer.submit(k, gone=gone[k].wait())
            except WithdrawnError as exc:
                got[k] = exc

        tasks = [asyncio.create_task(one(1))]
        assert await asyncio.to_thread(started.wait, 10)  # 1's call has begun
        tasks += [asyncio.create_task(one(k)) for k in (2, 3)]
        await asyncio.sleep(0.05)  # 2 and 3 wait for the thread
        gone[1].set()
        gone[2].set()
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert got[1] == 10 and isinstance(got[2], WithdrawnError) and got[3] == 30
    assert calls == [[1], [3]]
