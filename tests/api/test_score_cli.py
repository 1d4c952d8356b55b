"""``cites-risk score --chunk-rows``: a file scored in chunks equals the file scored whole,
and a run cut short resumes without a duplicate or a lost row."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cites_risk.api.cli import app
from cites_risk.profiling.sources import LEMIS_SAMPLE
from tests.api.conftest import ORG, Trained, copy_home

runner = CliRunner()
ROWS = 500


@pytest.fixture()
def home(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    settings = copy_home(trained, tmp_path)
    monkeypatch.setenv("CITES_RISK_HOME", str(settings.home))
    monkeypatch.setenv("CITES_RISK_OUTPUT_DIR", str(settings.output_dir))
    monkeypatch.setenv("CITES_RISK_ORGANISATION", ORG)
    return tmp_path


def _lemis_csv(folder: Path, rows: int) -> Path:
    """Real LEMIS lines of 2021 (after the trained history), one with a bad quantity."""
    text = gzip.decompress(LEMIS_SAMPLE.read_bytes()).decode()
    frame = pl.read_csv(io.StringIO(text), infer_schema=False).tail(rows)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("lots"))
        .otherwise(pl.col("quantity"))
        .alias("quantity")
    )
    path = folder / "lines.csv"
    frame.write_csv(path)
    return path


def test_chunks_score_as_the_whole_file_and_a_cut_run_resumes(home: Path) -> None:
    source = _lemis_csv(home, ROWS)
    whole = runner.invoke(app, ["score", str(source), "--out", str(home / "whole")])
    assert whole.exit_code == 0, whole.output
    expected = pl.read_parquet(home / "whole.parquet").select("declaration_id", "score")

    out = home / "chunks"
    run = ["score", str(source), "--chunk-rows", "200", "--out", str(out)]
    first = runner.invoke(app, run)
    assert first.exit_code == 0, first.output
    n = expected.height  # the rows the mapping accepts: all but the bad one and two more
    assert n == ROWS - 3 and f"scored {n:,} declarations" in first.output
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3  # 200 + 200 + 100 source rows
    scored = pl.read_parquet(parts).select("declaration_id", "score")
    assert scored["declaration_id"].is_unique().all() and scored.height == n
    joined = expected.join(scored, on="declaration_id", suffix="_chunked")
    assert joined.height == n
    assert (joined["score"] - joined["score_chunked"]).abs().max() < 1e-9  # type: ignore[operator]
    decisions = pl.read_parquet(out / "decisions.parquet")
    assert decisions.height == n and decisions["selected"].any()
    assert set(decisions["lane"]) <= {"red", "yellow", "green"}
    rejects = pl.read_csv(out / "rejects.csv")
    assert (8, "quantity") in rejects.select("row", "field").rows()

    # A crash after the first part: the rest is scored again by a rerun, even one asked
    # for other chunks (the first run's size is kept, or rows would be skipped).
    for path in [*parts[1:], out / "decisions.parquet"]:
        path.unlink()
    again = runner.invoke(app, [*run[:3], "150", *run[4:]])
    assert again.exit_code == 0, again.output
    resumed = pl.read_parquet(sorted(out.glob("part-*.parquet"))).select("declaration_id")
    assert resumed.height == n and resumed["declaration_id"].is_unique().all()
    assert pl.read_parquet(out / "decisions.parquet").equals(decisions)


def test_a_file_with_a_header_only_scores_nothing_and_says_so(home: Path) -> None:
    source = _lemis_csv(home, 1)
    source.write_text(source.read_text().splitlines()[0] + "\n")
    result = runner.invoke(app, ["score", str(source), "--chunk-rows", "100"])
    assert result.exit_code == 0, result.output
    assert "scored 0 declarations" in result.output and "lanes: none" in result.output
