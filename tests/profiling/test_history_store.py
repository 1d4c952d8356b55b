"""The declaration history on disk: what ingesting files gives the features to read."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.reference import Reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.history_store import DeclarationHistory
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.workflows import ingest

ACTOR = Actor("clerk", "US-FWS", "analyst")
MAPPING = """
name: export
records:
  declaration:
    declaration_id: id
    declared_at: date
    office: office
    quantity: qty
"""


def _ingest(settings: Settings, store: Store, reference: Reference, path: Path, rows: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("id,date,office,qty\n" + rows)
    mapping = path.parent.parent / "export.yaml"
    mapping.write_text(MAPPING)
    ingest(settings, store, reference, path, str(mapping), ACTOR)


def _lodged(settings: Settings) -> dict[str, float]:
    frame = DeclarationHistory(settings.history_dir).scan().collect()
    return dict(frame.select("declaration_id", "quantity").iter_rows())


def test_each_days_export_of_one_name_is_kept(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    """A national system exports export.csv every day: day 2 must add to day 1, not replace it."""
    day1 = "a,2024-01-01,JFK,1\nbad1,2024-01-01,JFK,-1\n"
    _ingest(settings, store, reference, tmp_path / "day1" / "export.csv", day1)
    day2 = "b,2024-01-02,JFK,2\nbad2,2024-01-02,JFK,-2\n"
    _ingest(settings, store, reference, tmp_path / "day2" / "export.csv", day2)
    assert _lodged(settings) == {"a": 1.0, "b": 2.0}
    # And each day's rejects are kept for its clerk to fix.
    rejected = sorted(settings.output_dir.glob("*.rejects.csv"))
    assert [f.read_text().count("must not be negative") for f in rejected] == [1, 1]
    # The same file lodged again replaces its own batch: nothing doubles.
    _ingest(settings, store, reference, tmp_path / "day2" / "export.csv", "b,2024-01-02,JFK,5\n")
    assert _lodged(settings) == {"a": 1.0, "b": 5.0}
    assert len(list(settings.history_dir.glob("*.parquet"))) == 2


def test_a_correction_lodged_later_wins_whatever_its_file_is_called(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    _ingest(settings, store, reference, tmp_path / "in" / "b.csv", "x,2024-01-01,JFK,1\n")
    _ingest(settings, store, reference, tmp_path / "in" / "a.csv", "x,2024-01-01,JFK,7\n")
    assert _lodged(settings) == {"x": 7.0}


def _frame(*ids: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "declaration_id": list(ids),
            "declared_at": [datetime(2024, 1, 1, tzinfo=UTC)] * len(ids),
            "office": ["JFK"] * len(ids),
        }
    )


def _ids(history: DeclarationHistory) -> list[str]:
    return sorted(history.scan().collect().get_column("declaration_id"))


def test_of_two_loads_of_a_source_the_later_publish_is_the_whole_result(tmp_path: Path) -> None:
    """A retried job and the first attempt, or a score of the file during its ingest: each
    load stages its own chunks, and publishing one never takes in or deletes the other's."""
    history = DeclarationHistory(tmp_path / "history")
    history.append(_frame("old"), "src")  # the source as an earlier version lodged it, whole
    first, second = history.loading("src"), history.loading("src")
    first.stage(_frame("a", "b"), 0)
    first.stage(_frame("c"), 1)
    second.stage(_frame("x"), 0)
    second.publish()
    assert _ids(history) == ["x"]
    first.publish()
    assert _ids(history) == ["a", "b", "c"]
    assert not list((tmp_path / "history" / "_staging").glob("*/*"))


def test_a_load_abandoned_leaves_the_source_as_it_was(tmp_path: Path) -> None:
    history = DeclarationHistory(tmp_path / "history")
    history.append(_frame("old"), "src")
    with pytest.raises(RuntimeError), history.loading("src") as loading:
        loading.stage(_frame("a"), 0)
        raise RuntimeError("the source broke at its second chunk")
    assert _ids(history) == ["old"]
    assert not list((tmp_path / "history" / "_staging").glob("*/*"))


def test_chunk_100000_and_on_are_published(tmp_path: Path) -> None:
    """Part names grow a sixth digit there; they are still the source's chunks."""
    history = DeclarationHistory(tmp_path / "history")
    with history.loading("src") as loading:
        loading.stage(_frame("a"), 99_999)
        loading.stage(_frame("b"), 100_000)
        loading.publish()
    assert _ids(history) == ["a", "b"]
    with history.loading("src") as loading:
        loading.stage(_frame("c"), 0)
        loading.publish()
    assert _ids(history) == ["c"]


def test_a_load_counts_as_lodged_when_it_is_published(tmp_path: Path) -> None:
    """Another batch lodged while a long load runs holds the same id: the load, published
    after it, is the later word."""
    history = DeclarationHistory(tmp_path / "history")
    loading = history.loading("long-load")
    loading.stage(_frame("x").with_columns(pl.lit("LOAD").alias("office")), 0)
    history.append(_frame("x").with_columns(pl.lit("MEANWHILE").alias("office")), "other")
    loading.publish()
    assert history.scan().collect().get_column("office").to_list() == ["LOAD"]
