"""Promotion: pure decisions, a real MLflow registry in tmp_path, the audited CLI."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer import Typer
from typer.testing import CliRunner

from cites_risk.features.contract import D
from cites_risk.models.registry import Candidate, decide
from cites_risk.models.tracking import (
    CHAMPION,
    Tracking,
    alias_version,
    candidate,
    load_model,
    log_model_run,
    promote,
)
from cites_risk.models.training import Split, TrainResult, train_and_evaluate
from cites_risk.profiling.cli.context import console
from cites_risk.profiling.cli.models_cmd import models_app
from cites_risk.profiling.config import Settings
from cites_risk.profiling.store import Store
from tests.models.conftest import FAST, SPLIT, utc

TAGS = {"holdout": "2020-01-01..2020-07-01", "feature_set": "cites-core", "feature_version": "2"}
#: The test set's size and offences, logged with every run's metrics.
ROWS = {"n": 401.0, "positives": 10.0}


def test_decide_refuses_worse_and_incomparable_without_force() -> None:
    champ = Candidate("1", {"average_precision": 0.7, "recall_at_5": 0.8, **ROWS}, TAGS)
    better = Candidate("2", {"average_precision": 0.75, "recall_at_5": 0.8, **ROWS}, TAGS)
    worse = Candidate("3", {"average_precision": 0.6, "recall_at_5": 0.85, **ROWS}, TAGS)
    other = Candidate(
        "4", {"average_precision": 0.9, "recall_at_5": 0.9, **ROWS}, {**TAGS, "holdout": "x"}
    )
    assert decide(better, champ).allowed
    assert decide(better, None).allowed
    refused = decide(worse, champ)
    assert not refused.allowed and refused.needs_force
    assert "average_precision 0.600 is worse" in refused.summary
    assert decide(worse, champ, force=True).allowed
    assert not decide(other, champ).allowed
    assert "not comparable" in decide(other, champ).summary


def test_models_tested_on_other_rows_of_the_same_holdout_are_not_comparable() -> None:
    # An open holdout grows as data arrives: the same tag, more rows and offences.
    tags = {**TAGS, "holdout": "2020-01-01..open"}
    champ = Candidate("1", {"average_precision": 0.93, "recall_at_5": 1.0, **ROWS}, tags)
    grown = {"average_precision": 0.95, "recall_at_5": 1.0, "n": 1001.0, "positives": 29.0}
    later = Candidate("2", grown, tags)
    for a, b in ((later, champ), (champ, later)):
        refused = decide(a, b)
        assert not refused.allowed and refused.needs_force
        assert "not comparable: tested on" in refused.summary
    # As many rows, but an inspection recorded since changed the offences.
    relabelled = Candidate("3", {**grown, "n": ROWS["n"]}, tags)
    assert "not comparable" in decide(relabelled, champ).summary
    # A run without the test set's size is unknown: only force promotes it.
    unknown = Candidate("4", {"average_precision": 0.95, "recall_at_5": 1.0}, tags)
    assert "tested on unknown rows" in decide(unknown, champ).summary
    assert not decide(unknown, champ).allowed and decide(unknown, champ, force=True).allowed
    assert decide(Candidate("5", {**grown, **ROWS}, tags), champ).allowed


@pytest.fixture()
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
        artifact_root=(tmp_path / "artifacts").as_uri(),
        experiment="test",
        model_name="cites-risk",
    )


def test_real_registry_promotion_and_audited_cli(
    trained: TrainResult,
    tracking: Tracking,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = trained
    example = result.test.features.head(20)
    good = dict(result.metrics)
    bad = {**good, "average_precision": good["average_precision"] - 0.1}
    _, v1 = log_model_run(tracking, result.model, params={}, metrics=good, example=example)
    _, v2 = log_model_run(tracking, result.model, params={}, metrics=bad, example=example)
    assert (v1, v2) == ("1", "2")
    assert alias_version(tracking, CHAMPION) == "1"
    assert alias_version(tracking, "challenger") == "2"
    found = candidate(tracking, "2")
    assert found is not None and found.tags["holdout"] == SPLIT.holdout()
    assert found.tags["feature_set"] == result.model.feature_set

    assert not promote(tracking, "2").allowed
    assert alias_version(tracking, CHAMPION) == "1"

    # The CLI: refused without --force, allowed and audited with it.
    runner, app = _cli(tracking, tmp_path, monkeypatch)
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "champion" in listed.output
    refused = runner.invoke(app, ["models", "promote", "2"])
    assert refused.exit_code == 2 and "--force" in refused.output
    forced = runner.invoke(app, ["models", "promote", "2", "--force"])
    assert forced.exit_code == 0, forced.output
    assert alias_version(tracking, CHAMPION) == "2"
    assert alias_version(tracking, "challenger") == "1"

    from cites_risk.profiling.config import Settings
    from cites_risk.profiling.store import Store

    store = Store(Settings().store_url)
    try:
        events = store.audit.query(action="model.promote")
        refusals = store.audit.query(action="model.promote.refused")
        # A running API learns of the promotion from the store on its next request.
        stamps = store.stamps()
    finally:
        store.close()
    assert stamps == (("champion", 1),)
    assert len(events) == 1  # the refused attempt changed nothing and is not a promotion
    assert [e["target"] for e in refusals] == ["2"]  # but it is on record
    assert events[0]["target"] == "2"
    assert "forced" in str(events[0]) and "True" in str(events[0])


def _cli(
    tracking: Tracking, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[CliRunner, Typer]:
    """The ``models`` commands over ``tracking``, with a store in a fresh home."""
    monkeypatch.setenv("CITES_RISK_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CITES_RISK_MLFLOW_TRACKING_URI", tracking.tracking_uri)
    monkeypatch.setenv("CITES_RISK_MODEL_NAME", tracking.model_name)
    # Wide enough for the table's every column. The console reads COLUMNS once, when it is
    # made at import (before this test could set it): set its width itself.
    monkeypatch.setattr(console, "width", 200)
    app = Typer()
    app.add_typer(models_app, name="models")
    return CliRunner(), app


def test_promoting_the_champion_again_changes_nothing_and_announces_nothing(
    trained: TrainResult,
    tracking: Tracking,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    example = trained.test.features.head(20)
    log_model_run(
        tracking, trained.model, params={}, metrics=dict(trained.metrics), example=example
    )
    runner, app = _cli(tracking, tmp_path, monkeypatch)
    for target in ("champion", "1"):
        done = runner.invoke(app, ["models", "promote", target])
        assert done.exit_code == 0, done.output
        assert "version 1 is already champion: nothing changed" in done.output
    assert alias_version(tracking, CHAMPION) == "1"
    store = Store(Settings().store_url)
    try:
        events = store.audit.query(action="model.promote")
        stamps = store.stamps()
    finally:
        store.close()
    # No promotion to audit, and running APIs are not told to reload the same champion.
    assert events == [] and stamps == ()


def test_a_model_trained_after_its_open_holdout_grew_is_not_compared_on_it(
    labelled: pl.DataFrame,
    extras: dict[str, str],
    tracking: Tracking,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No test_until: both holdouts read "2020-01-01..open", but the second model was
    # trained four months of data later and tested on many more rows.
    split = Split(utc("2019-01-01"), utc("2020-01-01"))
    early = labelled.filter(pl.col(D.DECLARED_AT) < utc("2020-03-01"))
    for data in (early, labelled):
        result = train_and_evaluate(data, split, seed=0, extras=extras, params=FAST, max_rounds=40)
        assert result.model.info["holdout"] == "2020-01-01..open"
        log_model_run(
            tracking,
            result.model,
            params={},
            metrics=result.metrics,
            example=result.test.features.head(20),
        )
    runner, app = _cli(tracking, tmp_path, monkeypatch)
    compared = runner.invoke(app, ["models", "compare", "2", "1"], terminal_width=200)
    assert compared.exit_code == 0 and "not comparable: tested on" in compared.output
    for version in ("2", "1"):  # neither way round
        refused = promote(tracking, version)
        assert not refused.allowed and "not comparable: tested on" in refused.summary
        promote(tracking, version, force=True)


def test_a_loaded_model_scores_as_trained_and_leaves_no_download_behind(
    trained: TrainResult,
    tracking: Tracking,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = trained
    example = result.test.features.head(20)
    log_model_run(tracking, result.model, params={}, metrics=dict(result.metrics), example=example)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # The OS temp folder is the boundary: point it at an empty folder and look inside after.
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    for _ in range(3):  # a service reloads its champion on every promotion
        loaded, version = load_model(tracking)
    assert version == "1"
    features = result.test.features
    assert np.array_equal(loaded.predict_proba(features), result.model.predict_proba(features))
    assert list(scratch.iterdir()) == []
