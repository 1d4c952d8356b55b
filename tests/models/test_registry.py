"""Promotion: pure decisions, a real MLflow registry in tmp_path, the audited CLI."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer import Typer
from typer.testing import CliRunner

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
from cites_risk.models.training import TrainResult
from cites_risk.profiling.cli.context import console
from cites_risk.profiling.cli.models_cmd import models_app
from tests.models.conftest import SPLIT

TAGS = {"holdout": "2020-01-01..2020-07-01", "feature_set": "cites-core", "feature_version": "2"}


def test_decide_refuses_worse_and_incomparable_without_force() -> None:
    champ = Candidate("1", {"average_precision": 0.7, "recall_at_5": 0.8}, TAGS)
    better = Candidate("2", {"average_precision": 0.75, "recall_at_5": 0.8}, TAGS)
    worse = Candidate("3", {"average_precision": 0.6, "recall_at_5": 0.85}, TAGS)
    other = Candidate("4", {"average_precision": 0.9, "recall_at_5": 0.9}, {**TAGS, "holdout": "x"})
    assert decide(better, champ).allowed
    assert decide(better, None).allowed
    refused = decide(worse, champ)
    assert not refused.allowed and refused.needs_force
    assert "average_precision 0.600 is worse" in refused.summary
    assert decide(worse, champ, force=True).allowed
    assert not decide(other, champ).allowed
    assert "not comparable" in decide(other, champ).summary


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
    home = tmp_path / "home"
    monkeypatch.setenv("CITES_RISK_HOME", str(home))
    monkeypatch.setenv("CITES_RISK_MLFLOW_TRACKING_URI", tracking.tracking_uri)
    monkeypatch.setenv("CITES_RISK_MODEL_NAME", tracking.model_name)
    # Wide enough for the table's every column. The console reads COLUMNS once, when it is
    # made at import (before this test could set it): set its width itself.
    monkeypatch.setattr(console, "width", 200)
    app = Typer()
    app.add_typer(models_app, name="models")
    runner = CliRunner()
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
        # A running API learns of the promotion from the store on its next request.
        stamps = store.stamps()
    finally:
        store.close()
    assert stamps == (("champion", 1),)
    assert len(events) == 1  # the refused attempt changed nothing and is not a promotion
    assert events[0]["target"] == "2"
    assert "forced" in str(events[0]) and "True" in str(events[0])


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
