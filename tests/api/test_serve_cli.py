"""``cites-risk serve`` comes from the API layer, with the profiling layer's commands."""

from __future__ import annotations

from typer.testing import CliRunner

from cites_risk.api.cli import app


def test_the_command_serves_the_api_and_keeps_the_other_commands() -> None:
    runner = CliRunner()
    serve = runner.invoke(app, ["serve", "--help"])
    assert serve.exit_code == 0, serve.output
    assert "--port" in serve.output
    listing = runner.invoke(app, ["--help"])
    assert "serve" in listing.output and "demo" in listing.output
