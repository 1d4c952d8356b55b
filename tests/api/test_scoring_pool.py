"""The scoring pool: at most ``total`` scores at once, the rest served in arrival order,
each wait reported; and the API scores through it."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from cites_risk.api.concurrency import ScoringPool
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
