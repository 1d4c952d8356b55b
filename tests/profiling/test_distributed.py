"""Dask scoring equals local scoring, resumes without rework; Dask training gives a model."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features
from cites_risk.features.reference import Reference
from cites_risk.models.compiled import CompiledPredictor, cache_dir_for
from cites_risk.models.risk_model import RiskModel, TrainingData, fit_risk_model
from cites_risk.models.training import LABEL, WEIGHT, label_frame
from cites_risk.profiling.batch import OUTPUT_COLUMNS
from cites_risk.profiling.distributed import (
    HistoryFiles,
    ScoreJob,
    TrainJob,
    dask_client,
    partitions,
    score_dask,
    train_dask,
)
from cites_risk.profiling.engine import REASONS, SCORE, TOP_FEATURES, Engine
from cites_risk.profiling.fast_score import FastEngine
from cites_risk.profiling.synth import write_scenario

pytest.importorskip("distributed")
ROWS = 24_000


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, reference: Reference) -> Path:
    folder = tmp_path_factory.mktemp("scenario")
    write_scenario(folder, ROWS, seed=3, reference=reference, chunk_rows=8_000, n_offences=400)
    return folder


@pytest.fixture(scope="module")
def model_folder(
    scenario: Path, tmp_path_factory: pytest.TempPathFactory, reference: Reference
) -> Path:
    """A real 20-tree model trained on the first two thirds of the scenario."""
    history = HistoryFiles.of_scenario(scenario).history()
    features = build_features(history.declarations, history, reference).collect()
    labelled = label_frame(features, history.inspections.collect())
    cut = int(labelled.height * 0.7)

    def data(frame: pl.DataFrame) -> TrainingData:
        return TrainingData(frame, frame[LABEL].to_numpy(), frame[WEIGHT].to_numpy())

    model = fit_risk_model(
        data(labelled.head(cut)),
        data(labelled.slice(cut)),
        num_boost_round=20,
        early_stopping=0,
        params={"min_data_in_leaf": 5, "min_data_per_group": 5},
    )
    return model.save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with dask_client(None, n_workers=2, processes=False) as c:
        yield c


def _local(scenario: Path, model: RiskModel, reference: Reference) -> pl.DataFrame:
    """The whole scenario scored in one go by the engine, in the batch output columns."""
    files = HistoryFiles.of_scenario(scenario)
    history = files.history()
    scored = Engine(model, "v", reference).score(history.declarations.collect(), history)
    return scored.select(c for c in OUTPUT_COLUMNS if c in scored.columns)


def test_dask_scoring_equals_local_scoring_and_resumes(
    tmp_path: Path, scenario: Path, model_folder: Path, reference: Reference, client: object
) -> None:
    files = HistoryFiles.of_scenario(scenario)
    parts = partitions(files.declarations, rows_per_partition=5_000)
    assert len(parts) == 6  # 3 files of 8,000 rows, each cut into 5,000 + 3,000
    job = ScoreJob(model_folder, files, tmp_path / "out", model_version="v", fast=False)
    result = score_dask(client, parts, job)  # type: ignore[arg-type]
    assert result.rows_scored == ROWS and result.parts_skipped == 0
    got = pl.read_parquet(result.parts)
    expected = _local(scenario, RiskModel.load(model_folder), reference)
    assert_frame_equal(got, expected)

    # A crash lost two parts: the rerun writes only those, and the output is the same.
    stamps = {p: p.stat().st_mtime_ns for p in result.parts}
    for p in result.parts[1:3]:
        p.unlink()
    again = score_dask(client, parts, job)  # type: ignore[arg-type]
    assert again.parts_skipped == 4 and again.rows_scored == ROWS
    assert [p for p in result.parts if p.stat().st_mtime_ns != stamps[p]] == result.parts[1:3]
    assert_frame_equal(pl.read_parquet(again.parts), expected)


def test_workers_read_a_history_rewritten_in_place_again(
    tmp_path: Path, scenario: Path, model_folder: Path, client: object
) -> None:
    """A rerun after a consent withdrawal writes the job's history files again, in place:
    workers that kept the first run's history must not score with its offence records."""
    full = HistoryFiles.of_scenario(scenario).history()
    withdrawn = History(full.declarations, full.offences.head(0), full.inspections)
    first_file = HistoryFiles.of_scenario(scenario).declarations[:1]
    parts = partitions(first_file, rows_per_partition=8_000)

    def scored(history: History, folder: Path, out: str) -> pl.DataFrame:
        files = HistoryFiles.write(history, folder)
        job = ScoreJob(model_folder, files, tmp_path / out, model_version="v", fast=False)
        return pl.read_parquet(score_dask(client, parts, job).parts)  # type: ignore[arg-type]

    shared = scored(full, tmp_path / "_history", "first")
    again = scored(withdrawn, tmp_path / "_history", "again")
    expected = scored(withdrawn, tmp_path / "elsewhere", "expected")
    assert not shared.equals(expected)  # the records do move scores
    assert_frame_equal(again, expected)


def test_fast_path_scores_equal_and_explains_the_top(
    tmp_path: Path, scenario: Path, model_folder: Path, reference: Reference, client: object
) -> None:
    files = HistoryFiles.of_scenario(scenario)
    job = ScoreJob(model_folder, files, tmp_path / "fast", model_version="v", explain_share=0.1)
    result = score_dask(client, partitions(files.declarations), job)  # type: ignore[arg-type]
    got = pl.read_parquet(result.parts)
    expected = _local(scenario, RiskModel.load(model_folder), reference)
    assert got.columns == expected.columns
    np.testing.assert_allclose(got[SCORE].to_numpy(), expected[SCORE].to_numpy(), atol=1e-12)
    assert_frame_equal(
        got.drop(SCORE, REASONS, TOP_FEATURES), expected.drop(SCORE, REASONS, TOP_FEATURES)
    )
    explained = got[REASONS].list.len() > 0
    # Every part explains at least its top 10 %, exactly as the engine does.
    assert explained.sum() >= 0.1 * ROWS
    assert_frame_equal(
        got.filter(explained).select(REASONS, TOP_FEATURES),
        expected.filter(explained).select(REASONS, TOP_FEATURES),
    )
    # In every part, each row in its top 10 % has exactly the engine's reasons.
    offset = 0
    for part in result.parts:
        frame = pl.read_parquet(part)
        mine = expected.slice(offset, frame.height)
        offset += frame.height
        k = int(np.ceil(0.1 * frame.height))
        threshold = frame[SCORE].sort(descending=True)[k - 1]
        top = pl.Series(frame[SCORE] >= threshold)
        assert top.sum() >= k
        assert_frame_equal(frame.filter(top).select(REASONS), mine.filter(top).select(REASONS))


def test_fast_engine_with_full_share_is_the_engine(
    scenario: Path, model_folder: Path, reference: Reference
) -> None:
    model = RiskModel.load(model_folder)
    history = HistoryFiles.of_scenario(scenario).history()
    declarations = history.declarations.collect().head(3_000)
    engine = Engine(model, "v", reference)
    predictor = CompiledPredictor.for_model(model, cache_dir_for(model_folder))
    fast = FastEngine(engine, predictor, explain_share=1.0).score(declarations, history)
    slow = engine.score(declarations, history)
    np.testing.assert_allclose(fast[SCORE].to_numpy(), slow[SCORE].to_numpy(), atol=1e-12)
    assert_frame_equal(fast.drop(SCORE), slow.drop(SCORE))
    none = FastEngine(engine, predictor, explain_share=0.0).score(declarations, history)
    assert none[REASONS].list.len().max() == 0


def test_dask_training_gives_a_working_model(
    tmp_path: Path, scenario: Path, reference: Reference, client: object
) -> None:
    files = HistoryFiles.of_scenario(scenario)
    parts = partitions(files.declarations)
    last = files.history().declarations.select(pl.col("declared_at").max()).collect().item()
    first = files.history().declarations.select(pl.col("declared_at").min()).collect().item()
    valid_from = first + (last - first) * 0.7
    job = TrainJob(files, tmp_path / "work", valid_from.astimezone(UTC))
    model = train_dask(
        client,  # type: ignore[arg-type]
        parts,
        job,
        num_boost_round=30,
        params={"min_data_in_leaf": 5, "min_data_per_group": 5},
    )
    assert model.booster.num_trees() == 30
    folder = model.save(tmp_path / "dask-model")
    loaded = RiskModel.load(folder)  # column order and feature set check out
    history = files.history()
    declarations = history.declarations.collect()
    features = build_features(declarations.lazy(), history, reference).collect()
    labelled = label_frame(features, history.inspections.collect()).filter(
        pl.col("declared_at") >= valid_from
    )
    proba = loaded.predict_proba(labelled)
    assert ((proba >= 0) & (proba <= 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(labelled[LABEL].to_numpy(), proba) > 0.7
    assert isinstance(job.valid_from, datetime)


def test_cli_scores_on_a_local_cluster_and_resumes(
    tmp_path: Path, scenario: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    from cites_risk.profiling.cli.scale_cmd import score_dask_cmd, train_dask_cmd

    monkeypatch.setenv("CITES_RISK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CITES_RISK_OUTPUT_DIR", str(tmp_path / "output"))
    app = typer.Typer()
    app.command("score-dask")(score_dask_cmd)
    app.command("train-dask")(train_dask_cmd)
    runner = CliRunner()
    out = tmp_path / "scored"
    args = ["score-dask", str(scenario), "--out", str(out), "--model", str(model_folder)]
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert f"scored {ROWS:,} declarations in 3 parts (0 already done)" in result.output
    again = runner.invoke(app, [*args, "--workers", "1"])
    assert "(3 already done)" in again.output
    assert pl.scan_parquet(out / "part-*.parquet").select(pl.len()).collect().item() == ROWS


def test_a_rerun_cut_otherwise_keeps_the_first_cut_and_other_files_are_refused(
    tmp_path: Path, scenario: Path, model_folder: Path, reference: Reference
) -> None:
    """Parts are skipped by name: rows cut at other ranges under the same names would be
    lost or scored twice, so a rerun keeps the partitions the folder was started with."""
    files = HistoryFiles.of_scenario(scenario)
    job = ScoreJob(model_folder, files, tmp_path / "out", model_version="v", fast=False)
    first = score_dask(None, partitions(files.declarations, rows_per_partition=5_000), job)
    assert not first.kept_recorded_partitions and len(first.parts) == 6
    scored = pl.read_parquet(first.parts)
    first.parts[3].unlink()  # a crash lost one part

    again = score_dask(None, partitions(files.declarations), job)  # one part per file now
    assert again.kept_recorded_partitions and again.parts_skipped == 5
    assert again.rows_scored == ROWS
    assert_frame_equal(pl.read_parquet(again.parts), scored)

    with pytest.raises(ValueError, match="other input files"):
        score_dask(None, partitions(files.declarations[:1]), job)
