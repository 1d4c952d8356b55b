"""Streaming batch scoring: chunking changes nothing, a crash resumes without duplicates."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.carry import carry
from cites_risk.features.contract import OFFENCE
from cites_risk.features.history import History
from cites_risk.features.reference import Reference
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.batch import read_parts, score_stream
from cites_risk.profiling.config import Settings
from cites_risk.profiling.engine import Engine
from cites_risk.profiling.fast_score import FastEngine
from cites_risk.profiling.history_store import DeclarationHistory, history_for
from cites_risk.profiling.sources import load_mapping
from cites_risk.profiling.store import Actor, Store
from tests.conftest import LemisData

ACTOR = Actor("batch-test", "US-FWS", "targeting")


@pytest.fixture()
def source(tmp_path: Path, lemis: LemisData) -> Path:
    """A plain CSV of 2021 LEMIS lines with two broken rows, as a national system exports."""
    from cites_risk.profiling.sources import LEMIS_SAMPLE

    raw = pl.read_csv(LEMIS_SAMPLE, infer_schema=False)
    part = raw.filter(pl.col("shipment_date").str.starts_with("2021")).head(1200)
    part = part.with_columns(
        pl.when(pl.int_range(pl.len()) == 7)
        .then(pl.lit("not-a-date"))
        .otherwise(pl.col("shipment_date"))
        .alias("shipment_date"),
        pl.when(pl.int_range(pl.len()) == 500)
        .then(pl.lit("-4"))
        .otherwise(pl.col("quantity"))
        .alias("quantity"),
    )
    path = tmp_path / "lemis_2021.csv"
    part.write_csv(path)
    return path


def _run(
    settings: Settings,
    store: Store,
    reference: Reference,
    model: RiskModel,
    source: Path,
    out: Path,
    chunk_rows: int,
    mapping: str | Path = "lemis",
    **kw: object,
):  # type: ignore[no-untyped-def]
    return score_stream(
        settings,
        store,
        reference,
        Engine(model, "test", reference),
        source,
        load_mapping(mapping),
        ACTOR,
        out,
        chunk_rows=chunk_rows,
        **kw,  # type: ignore[arg-type]
    )


def test_chunks_give_the_scores_of_one_batch(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    result = _run(settings, store, reference, lemis_model, source, tmp_path / "a", 250)
    assert len(result.parts) == 5  # 1200 rows in chunks of 250
    assert result.rows_read == 1200
    rejects = pl.read_csv(result.rejects_path, infer_schema=False)  # type: ignore[arg-type]
    planted = rejects.filter(pl.col("row").is_in(["8", "501"])).select("row", "field").rows()
    assert planted == [("8", "declared_at"), ("501", "quantity")]
    # The source also has real rejects (export country codes that are not countries).
    assert result.rows_rejected == rejects.get_column("row").n_unique() > 2
    assert result.rows_scored == 1200 - result.rows_rejected
    streamed = read_parts(result.out_dir).collect()
    assert streamed.get_column("declaration_id").is_unique().all()
    # The same declarations scored in one in-memory batch against the same history.
    history = history_for(store, DeclarationHistory(settings.history_dir), ACTOR.organisation)
    declarations = history.declarations.filter(
        pl.col("declaration_id").is_in(streamed.get_column("declaration_id").to_list())
    ).collect()
    whole = Engine(lemis_model, "test", reference).score(declarations, history)
    joined = streamed.join(
        whole.select("declaration_id", pl.col("score").alias("whole")), on="declaration_id"
    )
    assert joined.height == result.rows_scored
    assert (joined.get_column("score") - joined.get_column("whole")).abs().max() == 0.0


def test_crash_resumes_without_duplicates(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "job"

    def crash_after_two(done: int, total: int | None) -> None:
        if done >= 500:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        _run(settings, store, reference, lemis_model, source, out, 250, progress=crash_after_two)
    finished = sorted(p.name for p in out.glob("part-*.parquet"))
    assert finished == ["part-00000.parquet", "part-00001.parquet"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    result = _run(settings, store, reference, lemis_model, source, out, 250)
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert len(after) == 5
    assert all(after[name] == mtime for name, mtime in before.items())  # not redone
    ids = read_parts(result.out_dir).collect().get_column("declaration_id")
    assert ids.len() == result.rows_scored and ids.is_unique().all()
    assert not list(out.glob(".*.tmp"))


def test_a_lodging_cut_short_and_rerun_in_other_chunks_leaves_nothing_of_itself(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    clean = _run(settings, store, reference, lemis_model, source, tmp_path / "clean", 500)
    assert clean.rejects_path is not None
    lodged = len(list(settings.history_dir.glob("*.parquet")))

    def crash_at_chunk_four(done: int, total: int | None) -> None:
        if done >= 1000:
            raise RuntimeError("power cut")

    out = tmp_path / "job"
    with pytest.raises(RuntimeError, match="power cut"):
        _run(settings, store, reference, lemis_model, source, out, 250, lodging=crash_at_chunk_four)
    assert len(list(settings.history_dir.glob("*.parquet"))) == lodged + 4
    result = _run(settings, store, reference, lemis_model, source, out, 500)
    assert result.rejects_path is not None
    # Each bad line once, as in a run never cut short, and the four chunks of 250 gone.
    assert result.rejects_path.read_text() == clean.rejects_path.read_text()
    assert len(list(settings.history_dir.glob("*.parquet"))) == lodged + 3


def test_batch_decisions_span_chunks(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    from cites_risk.profiling.batch import Deciding
    from cites_risk.profiling.profiles.model import starter_profiles
    from cites_risk.profiling.selection import SelectionConfig

    config = SelectionConfig(capacity_share=0.05, pool="batch", random_share=0.0)
    deciding = Deciding(starter_profiles(), config)
    result = _run(
        settings, store, reference, lemis_model, source, tmp_path / "d", 250, deciding=deciding
    )
    assert result.decisions_path is not None
    decisions = pl.read_parquet(result.decisions_path)
    assert decisions.height == result.rows_scored
    assert set(decisions.get_column("lane")) <= {"red", "yellow", "green"}
    # One quota over the whole batch, not one per chunk; forced red lanes may add to it.
    forced = decisions.filter(
        pl.col("selected")
        & pl.col("profile_hits").list.len().gt(0)
        & (pl.col("selected_by") == "rule")
    ).height
    assert decisions.get_column("selected").sum() <= -(-result.rows_scored * 5 // 100) + forced
    top = decisions.sort("final_risk", descending=True).row(0, named=True)
    assert top["selected"] and top["reasons"]


def test_a_declaration_before_the_carried_history_is_refused(
    reference: Reference, lemis_model: RiskModel, lemis: LemisData
) -> None:
    """Carried totals hold events an earlier declaration must not see: refuse, loudly."""
    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    times = lemis.declarations.get_column("declared_at").sort()
    carried = carry(history, times[times.len() // 2], lemis_model.extras)
    early = lemis.declarations.filter(pl.col("declared_at") == times[0])
    engine = Engine(lemis_model, "test", reference)
    with pytest.raises(ValueError, match="cannot be scored against a history carried"):
        engine.features(early, carried)
    late = lemis.declarations.filter(pl.col("declared_at") == times[-1])
    assert engine.features(late, carried).height == late.height


def test_a_repeated_id_in_a_batch_keeps_one_row_per_declaration(
    reference: Reference, lemis_model: RiskModel, lemis: LemisData
) -> None:
    """Ids should be unique, but a file may repeat one: each declaration keeps its own row,
    its own declared fields and its own score (a join on the id multiplied the rows)."""
    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    batch = lemis.declarations.head(6)
    twice = pl.concat([batch, batch.head(2).with_columns(pl.col("quantity") * 10)])
    engine = Engine(lemis_model, "test", reference)
    for scorer in (engine, FastEngine(engine, explain_share=1.0)):
        scored = scorer.score(twice, history)
        assert scored.height == twice.height
        assert (
            scored.get_column("declaration_id").to_list()
            == twice.get_column("declaration_id").to_list()
        )
        assert scored.get_column("quantity").to_list() == twice.get_column("quantity").to_list()


def test_a_consent_withdrawn_mid_job_reaches_the_chunks_still_to_come(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    """MoU clause 10 during a long job: once the provider withdraws a record, no chunk
    scored afterwards uses it; the chunk scored before keeps what it was allowed to see."""
    from cites_risk.profiling.batch import Deciding
    from cites_risk.profiling.profiles.model import parse_profile
    from cites_risk.profiling.selection import SelectionConfig

    # LEMIS withholds company names; the record names the country most lines come from.
    raw = pl.read_csv(source, infer_schema=False)
    country = raw.get_column("country_imp_exp").mode().sort()[0]
    store.offences.add(
        pl.DataFrame(
            [
                {
                    "offence_id": "CA-1",
                    "detected_at": datetime(2019, 6, 1, tzinfo=UTC),
                    "country_export": country,
                    "taxon": "Ambystoma mexicanum",
                    "provider_org": "CA-ECCC",
                    "shared_with": [ACTOR.organisation],
                }
            ],
            schema=OFFENCE.schema,
            strict=False,
        )
    )
    profile = parse_profile(
        {
            "id": "export-country-with-offence",
            "title": "Exported from a country with a recorded offence",
            "owner": "test",
            "rationale": "A CITES offence was recorded on goods from the exporting country.",
            "source": "test",
            "criteria": {"all": [{"field": "export_offences", "range": {"min": 1}}]},
            "weight": 0.5,
            "lane": "red",
        }
    )
    deciding = Deciding([profile], SelectionConfig(capacity_share=0.05, random_share=0.0))

    def offences_by_chunk(out: Path, withdraw: bool) -> list[set[int]]:
        def after_a_chunk(done: int, total: int | None) -> None:
            if withdraw and done == 250:
                assert store.offences.set_consent("CA-1", "CA-ECCC", [])

        _run(
            settings, store, reference, lemis_model, source, out, 250,
            progress=after_a_chunk, deciding=deciding,
        )  # fmt: skip
        return [
            set(pl.read_parquet(part).get_column("export_offences"))
            for part in sorted(out.glob("part-*.parquet"))
        ]

    kept = offences_by_chunk(tmp_path / "kept", withdraw=False)
    assert len(kept) == 5 and all(seen == {0, 1} for seen in kept), kept
    withdrawn = offences_by_chunk(tmp_path / "withdrawn", withdraw=True)
    assert withdrawn[0] == {0, 1}  # scored while the record was shared
    assert all(seen == {0} for seen in withdrawn[1:]), withdrawn


def test_a_misread_line_and_an_id_repeated_chunks_later_are_rejected_and_the_rest_scored(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
) -> None:
    """A streamed file goes on past a line with a stray separator, and an id accepted in one
    chunk is a duplicate in any later one: one row scored and lodged per id, as in one batch."""
    from cites_risk.profiling.sources import MAPPINGS_DIR

    mapping_file = tmp_path / "lines.yaml"
    mapping_file.write_text(
        (MAPPINGS_DIR / "lemis.yaml")
        .read_text()
        .replace("name: lemis", "name: lines", 1)
        .replace(
            'declaration_id: {concat: [control_number, $row], sep: "-"}',
            "declaration_id: line_id",
            1,
        )
    )
    raw = pl.read_csv(source, infer_schema=False)
    ids = [f"L{i}" for i in range(1, raw.height + 1)]
    # Rows 900 and 950, in the fourth chunk of 250, repeat row 10's id.
    ids[899] = ids[949] = ids[9]
    lines = raw.with_columns(pl.Series("line_id", ids)).write_csv().splitlines()
    lines[3] += ",dried, salted"  # row 3: one field too many
    path = tmp_path / "lines.csv"
    path.write_text("\n".join(lines) + "\n")

    def run(out: Path):  # type: ignore[no-untyped-def]
        return _run(settings, store, reference, lemis_model, path, out, 250, mapping_file)

    result = run(tmp_path / "job")
    assert result.rejects_path is not None
    rejects = pl.read_csv(result.rejects_path)
    assert rejects.filter(pl.col("row").is_in([3, 900, 950])).select(
        "row", "field", "reason"
    ).rows() == [
        (3, "(line)", rejects.filter(pl.col("row") == 3).get_column("reason")[0]),
        (900, "declaration_id", "duplicate id in batch"),
        (950, "declaration_id", "duplicate id in batch"),
    ]
    scored = read_parts(result.out_dir).collect()
    assert scored.get_column("declaration_id").is_unique().all()
    assert "L3" not in scored.get_column("declaration_id")
    # The first line keeps the id, in the scores and in the history later scores read.
    first = raw.row(9, named=True)
    assert scored.filter(pl.col("declaration_id") == "L10").get_column("office").to_list() == [
        first["port"]
    ]
    lodged = DeclarationHistory(settings.history_dir).scan().collect()
    assert lodged.filter(pl.col("declaration_id") == "L10").height == 1
    assert lodged.filter(pl.col("declaration_id") == "L10").get_column("quantity").to_list() == [
        float(first["quantity"])
    ]
    assert result.rows_read == raw.height
    assert result.rows_scored + result.rows_rejected == raw.height

    # Resumed after the first pass, the repeat is still left out.
    for part in (tmp_path / "job").glob("part-0000[3-4].parquet"):
        part.unlink()
    again = run(tmp_path / "job")
    assert read_parts(again.out_dir).collect().equals(scored)


#: A red-lane profile on 4 % of the source's lines (under the runaway guard's 5 %), more than
#: an office-day's capacity in a dozen office-days.
RED_ON_TOGO = {
    "id": "origin-tg",
    "title": "Origin Togo",
    "owner": "batch-test",
    "rationale": "Every line from Togo is inspected this quarter.",
    "source": "test",
    "criteria": {"all": [{"field": "country_origin", "equals": "TG"}]},
    "lane": "red",
}


@pytest.mark.parametrize("profiles", [[], [RED_ON_TOGO]], ids=["no-profiles", "red-profile"])
def test_every_row_ranked_into_a_lane_carries_model_reasons(
    settings: Settings,
    store: Store,
    reference: Reference,
    lemis_model: RiskModel,
    source: Path,
    tmp_path: Path,
    profiles: list[dict[str, object]],
) -> None:
    """Lanes are decided over the whole batch once its chunks are scored, and each chunk
    explains a share of its rows only: the rows the model's risk ranks into a lane (at
    least one per office and day) must be among them, wherever their pool's rows fall,
    and however many rows a red-lane profile sends to the red lane ahead of them."""
    from cites_risk.profiling.batch import BatchResult, Deciding
    from cites_risk.profiling.engine import REASONS
    from cites_risk.profiling.profiles.model import parse_profile
    from cites_risk.profiling.selection import SelectionConfig

    fast = FastEngine(Engine(lemis_model, "test", reference), explain_share=0.01)
    out = tmp_path / "lanes"

    def crash_after_two(done: int, total: int | None) -> None:
        if done >= 500:
            raise RuntimeError("power cut")

    def run(**progress: object) -> BatchResult:
        deciding = Deciding(
            [parse_profile(p) for p in profiles], SelectionConfig(capacity_share=0.05)
        )
        return score_stream(
            settings,
            store,
            reference,
            fast,
            source,
            load_mapping("lemis"),
            ACTOR,
            out,
            chunk_rows=250,
            deciding=deciding,
            **progress,  # type: ignore[arg-type]
        )

    # Cut short after two chunks and resumed: the chunks scored before still count.
    with pytest.raises(RuntimeError, match="power cut"):
        run(progress=crash_after_two)
    result = run()
    assert result.decisions_path is not None
    scored = read_parts(out).select(
        "declaration_id",
        "office",
        pl.col("declared_at").dt.date().alias("day"),
        pl.col(REASONS).alias("model"),
    )
    decided = pl.read_parquet(result.decisions_path).join(scored.collect(), on="declaration_id")
    if profiles:
        pools = decided.group_by("office", "day").agg(
            pl.len().alias("n"), (pl.col("selected_by") == "rule").sum().alias("forced")
        )
        over = pools.filter(pl.col("forced") > (pl.col("n") * 0.05).ceil())
        assert over.height >= 5, "the profile must send more than capacity to red somewhere"
    # Every row in a lane but the random draw and the profile's own is there by its model
    # risk; the profile's rows carry its reasons instead.
    ranked = decided.filter(
        (pl.col("lane") != "green")
        & (pl.col("selected_by") != "random")
        & (pl.col("profile_hits").list.len() == 0)
    )
    assert ranked.height > 0.05 * result.rows_scored  # far more than the share explained
    unexplained = ranked.filter(pl.col("model").list.len() == 0)
    assert unexplained.height == 0, unexplained.head(3)
    explained = decided.filter(pl.col("model").list.len() > 0).height
    assert explained < 0.6 * result.rows_scored  # not every row, which would be the slow path
