"""The ``cites-risk`` command: the profiling layer's commands, and ``serve``.

``serve`` starts the API, so it lives in the API layer: the layers below never import it,
and the other commands never load FastAPI.
"""

from __future__ import annotations

import os
import shutil
from typing import Annotated

import typer

from cites_risk.profiling.cli.app import app


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes. Each loads the champion and scores on its own core; "
            "they share the store, which tells each of them about consent changes, "
            "promotions and batch jobs.",
        ),
    ] = 1,
) -> None:
    """Run the HTTP API and the inspector page (loads the champion model and profiles)."""
    import uvicorn

    from cites_risk.api.metrics import METRICS_DIR_ENV
    from cites_risk.profiling.config import Settings
    from cites_risk.profiling.store import Store

    if workers > 1:
        # Upgrade the store once, here: workers starting together would race on its tables.
        Store(Settings().store_url).close()
        # Each worker counts into files here and /metrics adds them up. The workers are new
        # processes: the environment is how the folder reaches their settings and
        # prometheus_client, which reads its switch when it is imported.
        folder = (Settings().home / "metrics").resolve()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ[METRICS_DIR_ENV] = os.environ["CITES_RISK_METRICS_DIR"] = str(folder)  # noqa: TID251
    uvicorn.run(
        "cites_risk.api.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # A worker answers the supervisor's pings only once its process has imported the
        # application (polars, LightGBM, MLflow): on 2 busy cores that took more than the
        # default 5 s, and the supervisor killed and replaced healthy workers.
        timeout_worker_healthcheck=60,
    )


def main() -> None:
    app()
