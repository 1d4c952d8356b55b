"""What ingesting a source loads into the store, and what it refuses to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.contract import OFFENCE
from cites_risk.features.reference import Reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.history_store import DeclarationHistory
from cites_risk.profiling.sources import InputError, load_mapping, load_records
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.workflows import IngestResult, ingest

ACTOR = Actor("clerk", "EU-OLAF", "admin")
MAPPING = """
name: seizures
records:
  offence:
    offence_id: id
    detected_at: date
    importer: importer
    provider_org: {constant: EU-OLAF}
    shared_with: {constant: "*", split: ";"}
"""


def test_a_source_cannot_take_over_another_providers_record(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    """A file naming its own provider for an id US-FWS holds would re-share US-FWS's record
    with everyone: the row is refused and reported, the record stays as its provider left it."""
    held = {
        "offence_id": "o1",
        "detected_at": datetime(2021, 1, 15, tzinfo=UTC),
        "importer": "Shadow Reptile Traders",
        "provider_org": "US-FWS",
        "shared_with": [],
    }
    store.offences.add(pl.DataFrame([held]).cast({"detected_at": OFFENCE.schema["detected_at"]}))
    mapping = tmp_path / "seizures.yaml"
    mapping.write_text(MAPPING)
    source = tmp_path / "seizures.csv"
    source.write_text("id,date,importer\no9,2021-02-01,ACME\no1,2021-02-02,Somebody Else\n")
    result = ingest(settings, store, reference, source, str(mapping), ACTOR)

    kept = store.offences.get("o1", "US-FWS")
    assert kept is not None
    assert (kept["importer"], kept["provider_org"], kept["shared_with"]) == (
        "Shadow Reptile Traders",
        "US-FWS",
        [],
    )
    assert store.offences.get("o1", "EU-OLAF") is None
    assert store.offences.get("o9", "KR-KCS") is not None  # the new record is loaded
    tally = result.tallies["offence"]
    assert (tally.rows_read, tally.accepted, tally.rejected_rows) == (2, 1, 1)
    assert pl.read_csv(result.rejects_files["offence"]).rows() == [
        (2, "offence_id", "o1", "id held by another provider's record")
    ]


#: Two record types from one file: each line a declaration and its inspection result.
LINES_MAPPING = """
name: lines
records:
  declaration:
    declaration_id: id
    declared_at: date
    office: office
    quantity: qty
  inspection:
    declaration_id: id
    inspected_at: checked
    outcome: outcome
    inspecting_org: {constant: US-FWS}
    selected_by: {constant: random}
"""
LINES = [
    "a,2024-01-01,JFK,1,2024-01-02,clear",
    "b,2024-01-01,JFK,2,2024-01-02,hit",
    "c,2024-01-02,LAX,x,2024-01-03,clear",  # quantity is no number: the declaration is rejected
    "a,2024-01-03,JFK,9,2024-01-02,clear",  # a's id again, and its inspection again
    "b,2024-01-04,JFK,2,2024-01-09,clear",  # b again; its second check is a result of its own
    "d,2024-01-05,MIA,4,2024-01-06,bogus",  # no such outcome: the inspection is rejected
    "e,2024-01-05,MIA,5,2024-01-06,clear",
    "f,2024-01-06,MIA,x,2024-01-07,clear",  # f's first line is no declaration, so...
    "f,2024-01-06,MIA,7,2024-01-08,clear",  # ...this one is f's first, not a repeat
]


def _load_lines(
    settings: Settings,
    store: Store,
    reference: Reference,
    tmp_path: Path,
    chunk_rows: int,
    lines: list[str] = LINES,
) -> IngestResult:
    source = tmp_path / "lines.csv"
    source.write_text("id,date,office,qty,checked,outcome\n" + "\n".join(lines) + "\n")
    mapping = tmp_path / "lines.yaml"
    mapping.write_text(LINES_MAPPING)
    return ingest(
        settings, store, reference, source, str(mapping), ACTOR_FWS, chunk_rows=chunk_rows
    )


ACTOR_FWS = Actor("clerk", "US-FWS", "admin")


def _contents(settings: Settings, store: Store) -> tuple[list[tuple[object, ...]], ...]:
    declarations = (
        DeclarationHistory(settings.history_dir)
        .scan()
        .select("declaration_id", "quantity")
        .sort("declaration_id")
        .collect()
    )
    inspections = store.inspections.all().select("declaration_id", "inspected_at", "outcome")
    return declarations.rows(), inspections.sort(pl.all()).rows()


@pytest.mark.parametrize("chunk_rows", [1, 2, 3])
def test_a_source_read_in_chunks_loads_what_it_loads_whole(
    tmp_path: Path, reference: Reference, chunk_rows: int
) -> None:
    """Chunks are how a source of any size loads in bounded memory; the store, the history
    and the rejects must not depend on where the chunks are cut. A record repeated in a
    later chunk is rejected as one repeated within a chunk is."""
    outcomes = []
    for size in (chunk_rows, 1000):
        home = tmp_path / f"home-{size}"
        settings = Settings(home=home, output_dir=home / "output", organisation="US-FWS")
        store = Store(settings.store_url)
        result = _load_lines(settings, store, reference, home, size)
        rejects = {r: pl.read_csv(p).rows() for r, p in result.rejects_files.items()}
        tallies = {r: t.summary for r, t in result.tallies.items()}
        outcomes.append((_contents(settings, store), rejects, tallies))
        store.close()
    chunked, whole = outcomes
    assert chunked == whole
    (declarations, inspections), rejects, tallies = whole
    assert declarations == [("a", 1.0), ("b", 2.0), ("d", 4.0), ("e", 5.0), ("f", 7.0)]
    assert [(i, o) for i, _, o in inspections] == [
        ("a", "clear"),
        ("b", "hit"),
        ("b", "clear"),
        ("c", "clear"),
        ("e", "clear"),
        ("f", "clear"),
        ("f", "clear"),
    ]
    assert rejects["declaration"] == [
        (3, "quantity", "x", "cannot parse a number"),
        (4, "declaration_id", "a", "duplicate id in batch"),
        (5, "declaration_id", "b", "duplicate id in batch"),
        (8, "quantity", "x", "cannot parse a number"),
    ]
    assert rejects["inspection"][0][:3] == (4, "declaration_id", "a")
    assert "duplicate record in batch" in rejects["inspection"][0][3]
    assert rejects["inspection"][1][:3] == (6, "outcome", "bogus")
    assert tallies["declaration"] == "9 rows read, 5 declaration records accepted, 4 rows rejected"
    # And what reading the file whole in memory gives (``load_records``).
    whole_file = load_records(
        tmp_path / "home-1000" / "lines.csv",
        load_mapping(str(tmp_path / "home-1000" / "lines.yaml")),
        "declaration",
        reference,
    )
    assert whole_file.rejects.rows() == rejects["declaration"]
    assert sorted(whole_file.accepted.get_column("declaration_id")) == [d for d, _ in declarations]


def test_a_source_loaded_again_replaces_what_it_loaded(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    """A load cut short is run again; a corrected file is loaded again. Either way nothing
    is doubled, a declaration the file no longer holds is gone with its batch, and the
    rejects file of the first load, now fixed, is not left to mislead."""
    first = _load_lines(settings, store, reference, tmp_path, 2)
    assert set(first.rejects_files) == {"declaration", "inspection"}
    fixed = [*LINES[:2], "e,2024-01-05,MIA,6,2024-01-06,clear"]
    again = _load_lines(settings, store, reference, tmp_path, 2, fixed)
    declarations, inspections = _contents(settings, store)
    assert declarations == [("a", 1.0), ("b", 2.0), ("e", 6.0)]
    assert len(inspections) == len(set(inspections)) == 7  # c's result stays: results are kept
    assert again.rejects_files == {}
    assert not list(settings.output_dir.glob("*.rejects.csv"))
    assert not list(settings.output_dir.glob(".*.tmp"))


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(
            b"id,date,office,checked,outcome\na,2024-01-01,JFK,2024-01-02,clear\n", id="no qty"
        ),
        pytest.param(b"date,office,qty,checked,outcome\n", id="header only, no id"),
        pytest.param(
            b"id,date,office,qty,checked,outcome\n"
            + "".join(f"{c},2024-01-01,LAX,1,2024-01-02,clear\n" for c in "ghijk").encode()
            + b"l,2024-01-01,LAX,\xff,2024-01-02,clear\n",
            id="not UTF-8 late in the file",
        ),
    ],
)
def test_a_load_that_fails_leaves_the_earlier_load_in_place(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path, broken: bytes
) -> None:
    """Today's export of a path loaded yesterday is broken: the load stops with one
    sentence, and yesterday's declarations stay as they were, none of today's beside them.
    A later good load of the path is not disturbed by what the failed one began."""
    _load_lines(settings, store, reference, tmp_path, 2)
    before = _contents(settings, store)[0]
    source = tmp_path / "lines.csv"
    source.write_bytes(broken)
    with pytest.raises(InputError):
        ingest(
            settings,
            store,
            reference,
            source,
            str(tmp_path / "lines.yaml"),
            ACTOR_FWS,
            chunk_rows=2,
        )
    assert _contents(settings, store)[0] == before
    assert not list(settings.history_dir.glob("_staging/*/*"))  # nothing left to publish
    assert not list(settings.output_dir.glob(".*.tmp"))
    _load_lines(settings, store, reference, tmp_path, 2, LINES[:2])
    assert _contents(settings, store)[0] == [("a", 1.0), ("b", 2.0)]


def test_each_chunk_stored_is_audited(
    settings: Settings, store: Store, reference: Reference, tmp_path: Path
) -> None:
    """Results are stored chunk by chunk, so each chunk is audited as it is stored; the
    declarations once, when they replace the source's earlier load."""
    _load_lines(settings, store, reference, tmp_path, 4)
    events = list(reversed(store.audit.query(limit=50)))
    inspections = [e["detail"] for e in events if e["action"] == "ingest.inspection"]
    assert [(d["chunk"], d["rows"], d["accepted"]) for d in inspections] == [
        (0, [1, 4], 3),
        (1, [5, 8], 3),
        (2, [9, 9], 1),
    ]
    declarations = [e["detail"] for e in events if e["action"] == "ingest.declaration"]
    assert declarations == [{"accepted": 5, "rejected_rows": 4}]
