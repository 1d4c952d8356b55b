"""Prometheus metrics: requests by route template and status, latency, the wait for a
scoring thread, readiness.

Each app has its own registry (several apps in one process, as in tests, never collide).
Labels are route *templates* (``/v1/offences/{offence_id}``), never ids: the metrics hold
no record identifiers, so they reveal nothing consent protects. Under ``serve --workers N``
each worker counts into files in one folder and ``/metrics`` adds them up, whichever worker
answers.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: prometheus_client's switch to counting across processes (read when it is imported).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self, shared_dir: Path | None = None) -> None:
        #: Where every worker of the server counts (``Settings.metrics_dir``), if several.
        self.shared_dir = shared_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cites_risk_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cites_risk_request_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.scoring_wait = Histogram(
            "cites_risk_scoring_wait_seconds",
            "Time a scoring call (a batch request, or a call of single declarations scored "
            "together) waited for a free scoring thread (api_scoring_threads)",
            registry=self.registry,
        )
        self.scoring_queue = Histogram(
            "cites_risk_scoring_queue_seconds",
            "Time a single-declaration request waited for the call that scores it",
            registry=self.registry,
        )
        self.scoring_batch = Histogram(
            "cites_risk_scoring_batch_declarations",
            "Single-declaration requests scored together in one call (api_coalesce_max)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.ready = Gauge(
            "cites_risk_ready",
            "1 when a model and profiles are loaded (in every worker: the lowest of them)",
            registry=self.registry,
            multiprocess_mode="livemin",
        )

    def render(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=str(self.shared_dir))  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class RequestMetrics:
    """Counts and times every HTTP request by route template and status (ASGI middleware).

    Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``, which runs each request in a
    task group with a memory stream of its own: a cost on the event loop, which a saturated
    process shares with its scoring threads."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app starts an answer

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            app = scope["app"]
            route, method = _template(app, scope["path"]), scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
            # Each worker states its own readiness with every answer it gives.
            self.metrics.ready.set(1 if app.state.service.ready else 0)


def _template(app: Any, path: str) -> str:
    """The documented path template ``path`` matches in ``app``, or ``other``."""
    templates: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "templates", None)
    if templates is None:
        # Built from the OpenAPI paths once: the public contract, whatever the router does.
        templates = [(compile_path(p)[0], p) for p in app.openapi()["paths"]]
        app.state.templates = templates
    return next((t for regex, t in templates if regex.match(path)), "other")
