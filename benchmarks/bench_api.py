"""API latency: one declaration scored over loopback at a fixed request rate.

Builds a trained home (LEMIS sample, real LightGBM, starter profiles), starts
``cites-risk serve`` on 127.0.0.1 in a child process, and sends requests on a fixed schedule
(open loop: a slow answer does not delay the next request, so queueing shows in the
latency). Each rate sends a bounded number of requests and stops by itself. Latency is
measured from the scheduled send time. The baseline in the same run is ``/health`` at the
same rate: what the framework and the loopback cost with no scoring. The declaration is
dated after the history (the online case) and, with ``--when both``, also inside it. With
``--workers 1 2`` the same load runs against one server process and then two
(``serve --workers``), so their ratio comes from one run.

    .venv/bin/python -m benchmarks.bench_api [--rates 50 200] [--seconds 10] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from cites_risk.api.schemas import EXAMPLE_DECLARATION
from cites_risk.features.reference import load_reference
from cites_risk.models.training import Split
from cites_risk.profiling import workflows
from cites_risk.profiling.auth import KeyRepository
from cites_risk.profiling.config import Settings
from cites_risk.profiling.roles import Role
from cites_risk.profiling.sources import LEMIS_SAMPLE
from cites_risk.profiling.store import Actor, Store

ORG = "US-FWS"
SETUP = Actor("bench", ORG, Role.ADMIN.value)


def trained_home(home: Path) -> str:
    """Ingest, install profiles, train; returns an inspector key for the load client."""
    settings = Settings(home=home, output_dir=home / "output", organisation=ORG)
    store = Store(settings.store_url)
    reference = load_reference()
    workflows.ingest(settings, store, reference, LEMIS_SAMPLE, "lemis", SETUP)
    workflows.install_starter_profiles(store, SETUP)
    split = Split(datetime(2019, 7, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
    workflows.train(settings, store, reference, split, SETUP, mapping_name="lemis", n_boot=0)
    token = KeyRepository(store).issue("load-client", ORG, Role.INSPECTOR, SETUP).token
    store.close()
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become ready")


#: When the scored declaration was lodged: after the history (today's traffic, the online
#: case: the service scores it against its carried snapshot) or inside it (the example's own
#: date in 2021, which needs the whole history).
WHEN = {"after": "2022-01-10T10:00:00Z", "inside": str(EXAMPLE_DECLARATION["declared_at"])}


def run_rate(
    base: str,
    path: str,
    token: str,
    rate: float,
    seconds: float,
    body: bool,
    declared_at: str = WHEN["after"],
) -> dict[str, float]:
    """Open-loop load: request i is due at i / rate; latency counts from that instant."""
    n = int(rate * seconds)
    headers = {"Authorization": f"Bearer {token}"}
    latencies = np.full(n, np.nan)
    errors = 0
    # The clients first: each builds a TLS context (~20 ms), and built after the schedule
    # started they made the first requests of every run late (p99 ~0.2-0.6 s from that).
    local = [httpx.Client(base_url=base, timeout=10) for _ in range(32)]
    start = time.perf_counter() + 0.2

    def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        client = local[i % len(local)]
        payload = (
            {
                **EXAMPLE_DECLARATION,
                "declaration_id": f"B-{rate:g}-{i}",
                "declared_at": declared_at,
            }
            if body
            else None
        )
        try:
            r = (
                client.post(path, json=payload, headers=headers)
                if body
                else client.get(path, headers=headers)
            )
            ok = r.status_code == 200
        except httpx.HTTPError:  # a timeout under overload is a failed request, not a crash
            ok = False
        if not ok:
            errors += 1
        latencies[i] = (time.perf_counter() - due) * 1000

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - start
    for c in local:
        c.close()
    ok = latencies[~np.isnan(latencies)]  # failed requests count with their wait
    return {
        "requests": float(n),
        "achieved_rps": n / elapsed,
        "p50_ms": float(np.percentile(ok, 50)),
        "p95_ms": float(np.percentile(ok, 95)),
        "p99_ms": float(np.percentile(ok, 99)),
        "errors": float(errors),
    }


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of the server and its worker processes, added up."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    total = 0.0
    for proc in [pid, *map(int, children)]:
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[50.0, 200.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--when", choices=[*WHEN, "both"], default="both")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    args = parser.parse_args()
    print(f"$ {sys.executable} -m benchmarks.bench_api " + " ".join(sys.argv[1:]))
    print(f"machine: nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        t0 = time.perf_counter()
        token = trained_home(home)
        print(f"trained home ready in {time.perf_counter() - t0:.0f} s")
        for workers in args.workers:
            serve_and_load(home, Path(tmp), token, workers, args)


def serve_and_load(
    home: Path, tmp: Path, token: str, workers: int, args: argparse.Namespace
) -> None:
    """Start ``cites-risk serve --workers N``, run every rate against it, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "CITES_RISK_HOME": str(home),
        "CITES_RISK_ORGANISATION": ORG,
        "CITES_RISK_OUTPUT_DIR": str(tmp / "output"),
    }
    command = [str(Path(sys.executable).with_name("cites-risk")), "serve", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base)
        for _ in range(workers):  # warm-up of every worker, not reported
            run_rate(base, "/v1/score", token, 20, 2, body=True)
        print(f"\n{workers} worker process(es)")
        print(
            f"{'route':12s} {'lodged':>7s} {'rate':>6s} {'sent':>6s} {'achieved':>9s} "
            f"{'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>7s}"
        )
        whens = list(WHEN) if args.when == "both" else [args.when]
        runs = [("/health", False, "-")] + [("/v1/score", True, w) for w in whens]
        for rate in args.rates:
            for path, body, when in runs:
                m = run_rate(base, path, token, rate, args.seconds, body, WHEN.get(when, ""))
                print(
                    f"{path:12s} {when:>7s} {rate:6.0f} {m['requests']:6.0f} "
                    f"{m['achieved_rps']:9.1f} "
                    f"{m['p50_ms']:8.1f} {m['p95_ms']:8.1f} {m['p99_ms']:8.1f} "
                    f"{m['errors']:7.0f}"
                )
        print(f"server peak RSS {peak_rss_mib(server.pid):.0f} MiB (all its processes)")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
