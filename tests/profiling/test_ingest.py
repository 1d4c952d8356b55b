"""What ingesting a source loads into the store, and what it refuses to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from cites_risk.features.contract import OFFENCE
from cites_risk.features.reference import Reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.workflows import ingest

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
    loaded = result.loaded["offence"]
    assert loaded.accepted.get_column("offence_id").to_list() == ["o9"]
    assert loaded.rejects.rows() == [
        (2, "offence_id", "o1", "id held by another provider's record")
    ]
    assert "o1,id held by another provider's record" in result.rejects_files["offence"].read_text()
