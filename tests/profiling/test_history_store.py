"""The declaration history on disk: what ingesting files gives the features to read."""

from __future__ import annotations

from pathlib import Path

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
