"""The ``cites-risk`` command: the profiling layer's commands, and ``serve``.

``serve`` starts the API, so it lives in the API layer: the layers below never import it,
and the other commands never load FastAPI.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cites_risk.profiling.cli.app import app


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """Run the HTTP API and the inspector page (loads the champion model and profiles)."""
    import uvicorn

    from cites_risk.api.app import create_app
    from cites_risk.profiling.config import Settings

    uvicorn.run(create_app(Settings()), host=host, port=port)


def main() -> None:
    app()
