"""The command line, as a user runs it: help, clear errors, and the main job end to end."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

# The console script `cites-risk` (``serve`` included), as a user runs it.
from cites_risk.api.cli import app

runner = CliRunner()


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CITES_RISK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CITES_RISK_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("CITES_RISK_ORGANISATION", "US-FWS")
    return tmp_path


def test_help_explains_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "train", "score", "serve", "demo"):
        assert command in result.output
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, sub.output
        assert len(sub.output.split()) > 20


def test_missing_required_column_fails_cleanly(env: Path) -> None:
    src = env / "bad.csv"
    src.write_text("control_number,genus\n1,Rana\n")
    result = runner.invoke(app, ["ingest", str(src), "--mapping", "lemis"])
    assert result.exit_code == 2
    assert "lacks column(s)" in result.output
    assert "Traceback" not in result.output


def test_unknown_mapping_fails_cleanly(env: Path) -> None:
    result = runner.invoke(app, ["ingest", str(env / "x.csv"), "--mapping", "nope"])
    assert result.exit_code == 2 and "no mapping 'nope'" in result.output


def test_scoring_without_a_model_says_what_to_do(env: Path) -> None:
    from cites_risk.profiling.sources import LEMIS_SAMPLE

    result = runner.invoke(app, ["score", str(LEMIS_SAMPLE), "--start", "2021-06-01"])
    assert result.exit_code == 2
    assert "train one first" in result.output


def test_ingest_train_score_on_lemis(env: Path) -> None:
    """The demo's main job: real LEMIS sample, real LightGBM, real MLflow store."""
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "Inspection capacity" in result.output
    scored = pl.read_parquet(env / "out" / "scored.parquet")
    assert scored.height > 4000
    assert scored.get_column("rank").to_list() == list(range(1, scored.height + 1))
    assert scored.get_column("final_risk").is_sorted(descending=True)
    assert scored.get_column("reasons").list.len().min() >= 1
    assert set(scored.get_column("lane")) <= {"red", "yellow", "green"}
    # Batch pool at 5 %: ceil(5 % of the batch) selected by model or rule, plus the random
    # share (2 %) drawn from the rest; forced red lanes may add to it.
    selected = scored.filter("selected")
    assert set(selected.get_column("selected_by")) <= {"model", "rule", "random"}
    assert selected.filter(pl.col("selected_by") == "random").height == int(0.02 * scored.height)
    red = scored.filter(pl.col("lane") == "red").row(0, named=True)
    assert any("CITES" in r or "inspection" in r or "%" in r for r in red["reasons"])
    assert "Who finds the offences" in result.output
    assert (env / "out" / "scored.csv").exists()
    rejects = list((env / "out").glob("*.rejects.csv"))
    assert rejects and pl.read_csv(rejects[0]).columns == ["row", "field", "value", "reason"]
    assert "with model v1" in result.output
    # A second run replaces rather than duplicates what it loaded, and scores with the model
    # it trained (a challenger now), not with the champion of the first run.
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 0, again.output
    assert "model version 2" in again.output and "with model v2" in again.output
    # Seeds averaged on request (rare labels): two members, one registered model.
    bagged = runner.invoke(app, ["train", "--bag", "2"])
    assert bagged.exit_code == 0, bagged.output
    assert "2 LightGBM models (seeds averaged)" in bagged.output
    assert "member 2 of 2 (seed 1)" in bagged.output
    assert "model version 3" in bagged.output
    assert runner.invoke(app, ["train", "--bag", "0"]).exit_code != 0
    from cites_risk.profiling.config import Settings
    from cites_risk.profiling.store import Store

    store = Store(Settings().store_url)
    assert store.inspections.count() == 16_366
    store.close()


def test_every_read_on_the_command_line_is_audited(env: Path) -> None:
    """What the API audits when a key reads it, the command line audits as its operator."""
    from cites_risk.profiling.config import Settings
    from cites_risk.profiling.store import Store

    assert runner.invoke(app, ["profiles", "import"]).exit_code == 0
    added = runner.invoke(app, ["watchlist", "add", "importer", "Probe Co", "--reason", "test"])
    assert added.exit_code == 0, added.output
    reads = {
        "profile.list": ["profiles", "list"],
        "profile.get": ["profiles", "show", "listed-without-permit"],
        "profile.export": ["profiles", "export", "--out", str(env / "profiles.yaml")],
        "watchlist.list": ["watchlist", "list"],
        "watchlist.match": ["watchlist", "match", "importer", "Probe Co"],
        "key.list": ["users", "list"],
        "model.list": ["models", "list"],
    }
    for command in reads.values():
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    store = Store(Settings().store_url)
    try:
        audited = [(e["action"], e["actor"]) for e in store.audit.query()]
    finally:
        store.close()
    read = sorted(a for a in audited if a in {(r, "cli") for r in reads})
    assert read == sorted((r, "cli") for r in reads)  # each once
