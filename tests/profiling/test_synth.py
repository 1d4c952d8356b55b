"""The scenario generator: contract conformance, determinism, grounding and planted truth."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import typer
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from cites_risk.features.contract import DECLARATION, INSPECTION, OFFENCE, D, I, O
from cites_risk.features.reference import Reference, load_reference
from cites_risk.profiling.cli.synth_cmd import synth
from cites_risk.profiling.synth import (
    BLOCK_ROWS,
    PATTERNS,
    SPLIT_VALUE_THRESHOLD,
    TRUTH_SCHEMA,
    PatternRates,
    Scenario,
    SynthChunk,
    SynthConfig,
    generate,
    write_scenario,
)

N = 150_000  # enough consignments for every pattern to show up dozens of times


@dataclass(frozen=True)
class Frames:
    declarations: pl.DataFrame
    inspections: pl.DataFrame
    truth: pl.DataFrame
    offences: pl.DataFrame


def _collect(chunks: list[SynthChunk]) -> Frames:
    return Frames(
        pl.concat([c.declarations for c in chunks]),
        pl.concat([c.inspections for c in chunks]),
        pl.concat([c.truth for c in chunks]),
        pl.concat([c.offences for c in chunks]).sort(O.DETECTED_AT, O.ID),
    )


def _run(ref: Reference, n: int, seed: int, chunk_rows: int = 1_000_000) -> Frames:
    return _collect(list(generate(n, seed=seed, reference=ref, chunk_rows=chunk_rows)))


def _assert_same(a: Frames, b: Frames) -> None:
    for name in ("declarations", "inspections", "truth", "offences"):
        assert_frame_equal(getattr(a, name), getattr(b, name))


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


@pytest.fixture(scope="module")
def chunks(ref: Reference) -> list[SynthChunk]:
    return list(generate(N, seed=7, reference=ref, chunk_rows=60_000))


@pytest.fixture(scope="module")
def frames(chunks: list[SynthChunk]) -> Frames:
    return _collect(chunks)


@pytest.fixture(scope="module")
def labelled(frames: Frames) -> pl.DataFrame:
    """Declarations with their ground truth (the two are row-aligned)."""
    assert frames.truth["declaration_id"].equals(frames.declarations[D.ID])
    return frames.declarations.hstack(frames.truth.drop("declaration_id"))


def test_every_chunk_conforms_to_the_contract(chunks: list[SynthChunk]) -> None:
    assert [c.declarations.height for c in chunks] == [60_000, 60_000, 30_000]
    for chunk in chunks:
        assert chunk.declarations.schema == DECLARATION.schema
        assert chunk.inspections.schema == INSPECTION.schema
        assert chunk.offences.schema == OFFENCE.schema
        assert chunk.truth.schema == TRUTH_SCHEMA
        for frame, record in (
            (chunk.declarations, DECLARATION),
            (chunk.inspections, INSPECTION),
            (chunk.offences, OFFENCE),
        ):
            assert frame.select(pl.col(record.required).null_count()).sum_horizontal().item() == 0


def test_keys_are_unique_and_values_non_negative(frames: Frames) -> None:
    d = frames.declarations
    assert d[D.ID].n_unique() == d.height
    assert frames.inspections[I.DECLARATION].n_unique() == frames.inspections.height
    assert frames.offences[O.ID].n_unique() == frames.offences.height
    assert d.select((pl.col(D.QUANTITY, D.MASS, D.VALUE) >= 0).all()).row(0) == (True,) * 3
    assert d[D.DECLARED_AT].is_sorted()  # the stream is chronological


def test_same_seed_same_data_different_seed_different(ref: Reference) -> None:
    a, b, c = _run(ref, 5_000, 1), _run(ref, 5_000, 1), _run(ref, 5_000, 2)
    _assert_same(a, b)
    assert not a.declarations.equals(c.declarations)
    assert not a.offences.equals(c.offences)


def test_chunk_size_does_not_change_the_data(ref: Reference) -> None:
    n = BLOCK_ROWS + 4_321  # crosses an internal block boundary
    _assert_same(_run(ref, n, 3, chunk_rows=n), _run(ref, n, 3, chunk_rows=9_999))


def test_countries_are_valid_reference_codes(ref: Reference, frames: Frames) -> None:
    valid = ref.country_codes()
    for frame, cols in (
        (frames.declarations, (D.ORIGIN, D.EXPORT, D.DESTINATION, D.TRANSIT)),
        (frames.offences, (O.ORIGIN, O.EXPORT, O.DESTINATION, O.TRANSIT)),
    ):
        for col in cols:
            values = frame[col].explode() if frame[col].dtype == pl.List else frame[col]
            assert set(values.drop_nulls().unique().to_list()) <= valid, col


def test_codes_are_real(ref: Reference, frames: Frames) -> None:
    hs = set(ref.hs_codes.filter(pl.col("level") == 6)["hscode"].to_list())
    assert set(frames.declarations[D.HS].unique().to_list()) <= hs
    assert set(frames.offences[O.HS].unique().to_list()) <= hs
    d = frames.declarations
    assert set(d[D.PURPOSE].drop_nulls().to_list()) <= ref.codes("purpose")
    assert set(d[D.SOURCE].drop_nulls().to_list()) <= ref.codes("source")
    assert set(d[D.UNIT].unique().to_list()) == {"NO", "KG"}
    species = set(ref.species["full_name"].to_list())
    assert set(frames.offences[O.TAXON].to_list()) <= species


def test_prevalence_and_every_pattern_near_its_rate(labelled: pl.DataFrame) -> None:
    prevalence = labelled["is_trafficking"].mean()
    assert isinstance(prevalence, float)
    assert 0.005 <= prevalence <= 0.01
    assert (labelled["pattern"].is_null() == ~labelled["is_trafficking"]).all()
    consignments = labelled[D.CONSIGNMENT].n_unique()
    planted = (
        labelled.filter("is_trafficking")
        .group_by("pattern")
        .agg(pl.col(D.CONSIGNMENT).n_unique().alias("n"))
    )
    counts = dict(planted.iter_rows())
    for name, rate in PatternRates().as_dict().items():
        expected = rate * consignments
        assert 0.5 * expected <= counts.get(name, 0) <= 1.6 * expected, (name, counts.get(name))
    assert set(counts) == set(PATTERNS)


def test_repeat_offenders_have_earlier_offences(frames: Frames, labelled: pl.DataFrame) -> None:
    repeat = labelled.filter(pl.col("pattern") == "repeat_offender")
    assert repeat.height > 0
    offences = frames.offences.select(O.IMPORTER, O.EXPORTER, O.DETECTED_AT)
    by_importer = repeat.join(offences, left_on=D.IMPORTER, right_on=O.IMPORTER, how="left")
    by_exporter = repeat.join(offences, left_on=D.EXPORTER, right_on=O.EXPORTER, how="left")
    explained = (
        pl.concat(
            [
                by_importer.select(D.ID, D.DECLARED_AT, O.DETECTED_AT),
                by_exporter.select(D.ID, D.DECLARED_AT, O.DETECTED_AT),
            ]
        )
        .filter(pl.col(O.DETECTED_AT) < pl.col(D.DECLARED_AT))
        .select(D.ID)
        .unique()
    )
    assert explained.height == repeat.height


def test_partners_of_offenders_traded_with_an_offender(
    frames: Frames, labelled: pl.DataFrame
) -> None:
    partners = labelled.filter(pl.col("pattern") == "partner_of_offender")[D.EXPORTER].unique()
    offenders = set(frames.offences[O.IMPORTER].drop_nulls().to_list())
    legit = labelled.filter(~pl.col("is_trafficking"))
    trading = legit.filter(pl.col(D.EXPORTER).is_in(partners.implode()))
    # Most such suppliers are seen trading with the offender in ordinary declarations.
    linked = trading.filter(pl.col(D.IMPORTER).is_in(list(offenders)))[D.EXPORTER].n_unique()
    assert linked >= 0.5 * partners.len()


def test_newcomers_have_no_earlier_declarations(labelled: pl.DataFrame) -> None:
    new = labelled.filter(pl.col("pattern") == "newcomer")
    assert new[D.IMPORTER].str.starts_with("IMP-N").all()
    first_seen = labelled.group_by(D.IMPORTER).agg(pl.col(D.DECLARED_AT).min().alias("first"))
    joined = new.join(first_seen, on=D.IMPORTER)
    assert (joined["first"] == joined[D.DECLARED_AT]).all()


def test_planted_lines_carry_their_signal(ref: Reference, labelled: pl.DataFrame) -> None:
    split = labelled.filter(pl.col("pattern") == "split_consignment")
    assert (split[D.VALUE] < SPLIT_VALUE_THRESHOLD).all()
    many_lines = (split.group_by(D.CONSIGNMENT).len()["len"] >= 8).sum()
    assert many_lines > 0.8 * split[D.CONSIGNMENT].n_unique()  # a few are cut at block edges
    hubs = labelled.filter(pl.col("pattern") == "transit_hub")
    assert (hubs[D.TRANSIT].list.len() >= 1).all()
    cover = labelled.filter(pl.col("pattern") == "cover_commodity")
    cover_prefixes = ref.cites_hs.filter("cover")["hs_prefix"].to_list()
    assert cover[D.HS].str.slice(0, 4).is_in(cover_prefixes).all()
    assert cover[D.TAXON].is_null().all()
    ranges = ref.species.select(
        pl.col("full_name").alias(D.TAXON), pl.col("range_iso2").alias("range")
    ).unique(D.TAXON)
    outside = labelled.filter(pl.col("pattern") == "origin_outside_range").join(ranges, on=D.TAXON)
    assert outside.height > 0
    assert not outside.select(pl.col("range").list.contains(pl.col(D.ORIGIN)).any()).item()
    cites_names = set(ref.species.filter(pl.col("appendix").is_not_null())["full_name"].to_list())
    mis = labelled.filter(pl.col("pattern") == "misdeclared_species")[D.TAXON]
    assert not set(mis.drop_nulls().to_list()) & cites_names


def test_undervalued_lines_are_cheap_for_their_heading(labelled: pl.DataFrame) -> None:
    uv = labelled.with_columns(
        (pl.col(D.VALUE) / pl.col(D.MASS)).log().alias("luv"), pl.col(D.HS).str.slice(0, 4)
    ).filter(pl.col(D.CURRENCY) == "USD")
    typical = uv.filter(~pl.col("is_trafficking")).group_by(D.HS).agg(pl.col("luv").median())
    under = uv.filter(pl.col("pattern") == "undervaluation").join(typical, on=D.HS, suffix="_t")
    gap = (under["luv"] - under["luv_t"]).median()
    assert isinstance(gap, float)
    assert gap < -1.0


def test_inspections_are_a_realistic_selection(frames: Frames, labelled: pl.DataFrame) -> None:
    insp = frames.inspections.join(
        labelled.select(D.ID, D.DECLARED_AT, "is_trafficking"),
        left_on=I.DECLARATION,
        right_on=D.ID,
    )
    share = insp.height / labelled.height
    assert 0.03 <= share <= 0.05
    by = dict(insp[I.SELECTED_BY].value_counts().iter_rows())
    assert set(by) == {"random", "rule", "model", "manual"}
    assert 0.15 <= by["random"] / insp.height <= 0.5
    hits = insp.filter(pl.col(I.OUTCOME) == "hit")
    assert hits["is_trafficking"].all() and hits.height > 0
    assert (insp[I.INSPECTED_AT] >= insp[D.DECLARED_AT]).all()
    # Every hit is recorded as a seizure by the inspecting organisation.
    seizures = frames.offences.filter(
        pl.col(O.PROVIDER) == "KR-KCS", pl.col(O.ID).str.contains("-S")
    )
    assert seizures.height == hits.height


def test_offence_history_is_shared_and_dated(frames: Frames) -> None:
    off = frames.offences
    providers = set(off[O.PROVIDER].unique().to_list())
    assert {"KR-KCS", "US-FWS", "NL-CUSTOMS", "WCO-CEN"} <= providers
    shared = off[O.SHARED_WITH]
    assert shared.list.contains("*").any()
    provider_only = off.filter(
        (pl.col(O.SHARED_WITH).list.len() == 1)
        & (pl.col(O.SHARED_WITH).list.first() == pl.col(O.PROVIDER))
    )
    assert provider_only.height > 0
    start = pl.datetime(2024, 1, 1, time_zone="UTC")
    assert off.select((pl.col(O.DETECTED_AT) < start).any()).item()
    assert off.select((pl.col(O.DETECTED_AT) >= start).any()).item()
    assert off[O.CONCEALMENT].null_count() == 0


def test_write_scenario_is_byte_identical(ref: Reference, tmp_path: Path) -> None:
    a = write_scenario(tmp_path / "a", 3_000, seed=4, reference=ref, chunk_rows=1_000)
    b = write_scenario(tmp_path / "b", 3_000, seed=4, reference=ref, chunk_rows=1_000)
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len(files) == 3 * 3 + 1
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_cli_writes_partitions_and_manifest(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth)

    @app.command()
    def noop() -> None:  # a second command keeps "synth" a named sub-command
        """Nothing."""

    out = tmp_path / "scenario"
    result = CliRunner().invoke(
        app,
        ["synth", "--out", str(out), "--rows", "2500", "--seed", "9", "--chunk-rows", "1000",
         "--start", "2023-06-01", "--days", "30", "--offences", "12"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for part in ("declarations", "inspections", "truth"):
        assert sorted(p.name for p in (out / part).iterdir()) == [
            "part-00000.parquet",
            "part-00001.parquet",
            "part-00002.parquet",
        ]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 9
    assert manifest["sizes"]["declarations"] == 2500
    assert manifest["sizes"]["offence_history"] == 12
    assert set(manifest["patterns"]) == set(PATTERNS)
    decl = pl.read_parquet(out / "declarations")
    assert decl.height == 2500 and decl.schema == DECLARATION.schema
    assert (decl[D.DECLARED_AT].dt.date() >= date(2023, 6, 1)).all()
    assert pl.read_parquet(out / "offences.parquet").schema == OFFENCE.schema


def test_cli_rejects_a_bad_start_date(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth)
    result = CliRunner().invoke(app, ["--out", str(tmp_path), "--start", "01/02/2024"])
    assert result.exit_code != 0


def test_zero_rows_still_yields_history(ref: Reference) -> None:
    chunks = list(generate(0, seed=0, reference=ref, n_offences=10))
    assert len(chunks) == 1
    assert chunks[0].declarations.height == 0
    assert chunks[0].offences.height == 10


def test_threads_do_not_change_the_data(ref: Reference) -> None:
    config = SynthConfig(n_declarations=BLOCK_ROWS + 10, seed=11)
    serial = _collect(list(Scenario(config, ref, workers=1).chunks(50_000)))
    threaded = _collect(list(Scenario(config, ref, workers=3).chunks(50_000)))
    _assert_same(serial, threaded)
