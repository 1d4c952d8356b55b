"""Bad rows are reported (row, field, reason) and never stop or shrink the rest of a batch."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.adapters import SourceMapping
from cites_risk.features.reference import Reference
from cites_risk.profiling.sources import InputError, load_mapping, load_records

HEADER = "id,date,office,qty,origin,hs\n"
GOOD = [
    "a1,2024-01-02,JFK,10,NG,010690",
    "a2,2024-01-03T10:00:00Z,JFK,2.5,CN,0508",
    "a3,2024-01-04,LAX,0,VN,",
]
MAPPING = """
name: test
records:
  declaration:
    declaration_id: id
    declared_at: date
    office: office
    quantity: qty
    country_origin: origin
    hs_code: hs
"""


def _mapping(tmp_path: Path, encoding: str | None = None) -> SourceMapping:
    """The test mapping, reading sources in ``encoding`` if given."""
    path = tmp_path / f"mapping-{encoding}.yaml"
    path.write_text(MAPPING + (f"read:\n  encoding: {encoding}\n" if encoding else ""))
    return load_mapping(path)


def _load(tmp_path: Path, reference: Reference, rows: list[str], header: str = HEADER):  # type: ignore[no-untyped-def]
    src = tmp_path / "decl.csv"
    src.write_text(header + "\n".join(rows) + "\n")
    return load_records(src, _mapping(tmp_path), "declaration", reference)


@pytest.mark.parametrize(
    ("bad_row", "field", "reason"),
    [
        ("b1,2024-13-45,JFK,1,NG,0106", "declared_at", "cannot parse a date/time"),
        ("b1,yesterday,JFK,1,NG,0106", "declared_at", "cannot parse a date/time"),
        ("b1,2024-01-05,JFK,-3,NG,0106", "quantity", "must not be negative"),
        ("b1,2024-01-05,JFK,1,QQ,0106", "country_origin", "unknown country code"),
        ("b1,2024-01-05,JFK,lots,NG,0106", "quantity", "cannot parse a number"),
        ("b1,2024-01-05,JFK,inf,NG,0106", "quantity", "not a finite number"),
        ("b1,2024-01-05,JFK,NaN,NG,0106", "quantity", "not a finite number"),
        ("b1,2024-01-05,,1,NG,0106", "office", "required value is missing"),
        ("b1,2024-01-05,JFK,1,NG,01-06x", "hs_code", "not an HS code (2 to 10 digits)"),
    ],
)
def test_bad_row_is_reported_and_valid_rows_survive(
    tmp_path: Path, reference: Reference, bad_row: str, field: str, reason: str
) -> None:
    rows = [*GOOD[:2], bad_row, GOOD[2]]
    loaded = _load(tmp_path, reference, rows)
    assert loaded.accepted.get_column("declaration_id").to_list() == ["a1", "a2", "a3"]
    assert loaded.rejects.rows(named=True) == [
        {
            "row": 3,
            "field": field,
            "value": bad_row.split(",")[
                {"declared_at": 1, "quantity": 3, "country_origin": 4, "office": 2, "hs_code": 5}[
                    field
                ]
            ]
            or None,
            "reason": reason,
        }
    ]
    assert loaded.rows_read == 4


def test_all_problems_of_a_row_are_reported(tmp_path: Path, reference: Reference) -> None:
    loaded = _load(tmp_path, reference, [*GOOD, "b1,never,JFK,-1,QQ,0106"])
    assert loaded.accepted.height == 3
    assert sorted(loaded.rejects.get_column("field").to_list()) == [
        "country_origin",
        "declared_at",
        "quantity",
    ]


def test_duplicate_ids_keep_the_first(tmp_path: Path, reference: Reference) -> None:
    loaded = _load(tmp_path, reference, [*GOOD, "a1,2024-02-01,JFK,1,NG,0106"])
    assert loaded.accepted.height == 3
    assert loaded.rejects.select("row", "reason").rows() == [(4, "duplicate id in batch")]


def test_missing_required_column_is_one_clear_error(tmp_path: Path, reference: Reference) -> None:
    with pytest.raises(InputError, match="lacks column\\(s\\): office"):
        _load(tmp_path, reference, ["a1,2024-01-02,10,NG,010690"], header="id,date,qty,origin,hs\n")


def test_unreadable_file_is_one_clear_error(tmp_path: Path, reference: Reference) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_records(tmp_path / "absent.csv", _mapping(tmp_path), "declaration", reference)


def test_unknown_mapping_names_the_choices() -> None:
    with pytest.raises(InputError, match="lemis"):
        load_mapping("no-such-mapping")


def test_bad_mapping_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nrecords:\n  declaration:\n    declaration_id: id\n    colour: c\n")
    with pytest.raises(InputError, match="no field 'colour'"):
        load_mapping(bad)


def test_accepted_rows_have_contract_dtypes(tmp_path: Path, reference: Reference) -> None:
    loaded = _load(tmp_path, reference, GOOD)
    schema = loaded.accepted.schema
    assert schema["declared_at"] == pl.Datetime("us", "UTC")
    assert schema["quantity"] == pl.Float64
    assert loaded.accepted.get_column("hs_code").to_list() == ["010690", "0508", None]


def test_a_stray_byte_in_a_lossy_source_costs_one_field_not_the_batch(
    tmp_path: Path, reference: Reference
) -> None:
    src = tmp_path / "decl.csv"
    rows = [*GOOD[:2], "b\xff1,2024-01-05,JFK,1,NG,0106", GOOD[2]]
    src.write_bytes((HEADER + "\n".join(rows) + "\n").encode("latin-1"))
    with pytest.raises(InputError, match="cannot read"):
        load_records(src, _mapping(tmp_path), "declaration", reference)
    loaded = load_records(src, _mapping(tmp_path, "utf8-lossy"), "declaration", reference)
    ids = loaded.accepted.get_column("declaration_id").to_list()
    assert ids == ["a1", "a2", "b\ufffd1", "a3"] and loaded.rejects.is_empty()


@pytest.mark.parametrize("zone", ["UTC", "Asia/Seoul", None])
def test_a_parquet_source_with_typed_times_is_read_as_its_instants(
    tmp_path: Path, reference: Reference, zone: str | None
) -> None:
    src = tmp_path / "decl.parquet"
    when = pl.Series("date", ["2024-01-02T10:00:00", "2024-01-03T23:30:00.5"]).str.to_datetime()
    pl.DataFrame(
        {"id": ["p1", "p2"], "office": ["JFK", "JFK"], "qty": [1.0, 2.0], "origin": ["NG", "CN"]}
    ).with_columns(
        when.dt.replace_time_zone(zone) if zone else when, pl.lit("0106").alias("hs")
    ).write_parquet(src)
    loaded = load_records(src, _mapping(tmp_path), "declaration", reference)
    assert loaded.rejects.is_empty(), loaded.rejects
    expected = when.dt.replace_time_zone(zone or "UTC").dt.convert_time_zone("UTC")
    assert loaded.accepted.get_column("declared_at").to_list() == expected.to_list()


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_line_with_more_fields_than_the_header_is_rejected_alone(
    tmp_path: Path, reference: Reference, suffix: str
) -> None:
    """An unquoted comma in a value shifts every field after it: the line is reported once,
    by row, and the lines around it are read as they are."""
    import gzip

    ragged, short = "b1,2024-01-05,JFK,1,NG,0106,dried, salted", "c1,2024-01-06,JFK,1,NG"
    # An empty field reads as an absent one: the junk after it must still be seen.
    after_empty, trailing = "b2,2024-01-05,JFK,1,NG,0106,,junk", "d1,2024-01-07,JFK,1,NG,0106,"
    rows = [GOOD[0], ragged, *GOOD[1:], short, after_empty, trailing]
    text = (HEADER + "\n".join(rows) + "\n").encode()
    src = tmp_path / f"decl{suffix}"
    src.write_bytes(gzip.compress(text) if suffix.endswith(".gz") else text)
    loaded = load_records(src, _mapping(tmp_path), "declaration", reference)
    # A trailing separator alone shifts nothing: that line is read.
    assert loaded.accepted.get_column("declaration_id").to_list() == ["a1", "a2", "a3", "c1", "d1"]
    # A short line keeps what it has: the missing hs code is an absent optional value.
    assert loaded.accepted.get_column("hs_code").to_list()[3] is None
    assert loaded.rejects.select("row", "field", "value").rows() == [
        (2, "(line)", "dried"),
        (6, "(line)", "junk"),
    ]
    assert "more fields than the header" in loaded.rejects.get_column("reason")[0]
    assert loaded.rows_read == 7


def test_a_misread_line_does_not_displace_the_declaration_whose_id_it_shows(
    tmp_path: Path, reference: Reference
) -> None:
    rows = ["a1,2024-01-05,JFK,1,NG,0106,surplus", *GOOD]
    loaded = _load(tmp_path, reference, rows)
    assert loaded.accepted.get_column("declaration_id").to_list() == ["a1", "a2", "a3"]
    assert loaded.rejects.select("row", "field").rows() == [(1, "(line)")]


def test_a_source_in_another_encoding_reports_its_ragged_lines_too(
    tmp_path: Path, reference: Reference
) -> None:
    src = tmp_path / "decl.csv"
    rows = [*GOOD[:2], "b1,2024-01-05,Müller,1,NG,0106,x", GOOD[2]]
    src.write_bytes((HEADER + "\n".join(rows) + "\n").encode("latin-1"))
    loaded = load_records(src, _mapping(tmp_path, "latin-1"), "declaration", reference)
    assert loaded.accepted.get_column("declaration_id").to_list() == ["a1", "a2", "a3"]
    assert loaded.rejects.select("row", "field", "value").rows() == [(3, "(line)", "x")]


def test_a_declaration_inspected_again_is_no_duplicate_but_the_same_result_twice_is(
    tmp_path: Path, reference: Reference
) -> None:
    """An inspection result is one declaration's result at one time (and organisation)."""
    mapping = tmp_path / "results.yaml"
    mapping.write_text(
        "name: results\nrecords:\n  inspection:\n    declaration_id: id\n"
        "    inspected_at: at\n    outcome: outcome\n    selected_by: {constant: rule}\n"
        "    inspecting_org: {constant: US-FWS}\n"
    )
    src = tmp_path / "results.csv"
    lines = [
        "d1,2024-01-04,clear",  # a documentary check
        "d1,2024-01-14,hit",  # the physical one, ten days later
        "d2,2024-01-04,hit",
        "d1,2024-01-14T00:00:00Z,hit",  # the physical one's result again, written otherwise
    ]
    src.write_text("id,at,outcome\n" + "\n".join(lines) + "\n")
    loaded = load_records(src, load_mapping(mapping), "inspection", reference)
    assert loaded.accepted.select("declaration_id", "outcome").rows() == [
        ("d1", "clear"),
        ("d1", "hit"),
        ("d2", "hit"),
    ]
    assert loaded.rejects.select("row", "field", "reason").rows() == [
        (
            4,
            "declaration_id",
            "duplicate record in batch (same declaration_id, inspecting_org and inspected_at)",
        )
    ]
