"""Training on real data: weights, determinism, calibration, mismatch refusal, baselines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import brier_score_loss

from cites_risk.features.contract import I, SelectedBy
from cites_risk.models.risk_model import Calibrator, ModelMismatchError, RiskModel
from cites_risk.models.training import (
    LABEL,
    MAX_RANDOM_WEIGHT,
    WEIGHT,
    TrainResult,
    known_by,
    label_frame,
    random_weight,
    train_and_evaluate,
)
from tests.models.conftest import FAST, SPLIT


def test_random_rows_weigh_as_much_as_targeted_rows(labelled: pl.DataFrame) -> None:
    """The documented identity: weighted hit rate = mean of targeted and random rates."""
    features = labelled.drop(LABEL, WEIGHT, "__random").head(2000)
    ids = features.get_column("declaration_id")
    rng = np.random.default_rng(0)
    is_random = rng.random(len(ids)) < 0.1
    # Targeted inspections hit often (30 %), random ones rarely (2 %): the bias to correct.
    hit = np.where(is_random, rng.random(len(ids)) < 0.02, rng.random(len(ids)) < 0.30)
    inspections = pl.DataFrame(
        {
            I.DECLARATION: ids,
            I.OUTCOME: np.where(hit, "hit", "clear"),
            I.SELECTED_BY: np.where(is_random, SelectedBy.RANDOM.value, SelectedBy.MODEL.value),
        }
    )
    out = label_frame(features, inspections)
    y, w, r = (out.get_column(c).to_numpy() for c in (LABEL, WEIGHT, "__random"))
    n_r = int(r.sum())
    assert np.all(w[r] == random_weight(n_r, len(r))) and np.all(w[~r] == 1.0)
    assert w[r].sum() == pytest.approx(w[~r].sum())  # equal total weight
    weighted_rate = float((w * y).sum() / w.sum())
    assert weighted_rate == pytest.approx((y[r].mean() + y[~r].mean()) / 2)
    # ... which is much closer to the unbiased (random) rate than the raw inspected rate.
    assert abs(weighted_rate - y[r].mean()) < abs(y.mean() - y[r].mean())


def test_a_model_trained_at_the_test_start_learns_no_result_recorded_later(
    labelled: pl.DataFrame, extras: dict[str, str]
) -> None:
    """A LEMIS refusal can be recorded a year after the shipment: a model trained at the
    test period's start had no such label, and its backtest must not have it either."""
    day = [datetime(2019, m, 1, tzinfo=UTC) for m in (6, 7, 8)]
    later = [datetime(2020, m, 1, tzinfo=UTC) for m in (2, 3, 5)]
    features = pl.DataFrame(
        {"declaration_id": ["a", "b", "c", "d"], "declared_at": [day[0]] * 3 + [later[0]]}
    )
    inspections = pl.DataFrame(
        {
            I.DECLARATION: ["a", "a", "b", "c", "d"],
            I.INSPECTED_AT: [day[1], later[1], later[0], day[2], later[2]],
            I.OUTCOME: ["clear", "hit", "hit", "hit", "hit"],
            I.SELECTED_BY: [SelectedBy.MODEL.value] * 5,
        }
    )
    cut = datetime(2020, 1, 1, tzinfo=UTC)
    known = known_by(label_frame(features, inspections), cut)
    # a: cleared then, found after; b: no result then; d: in the test period, found later.
    assert dict(known.select("declaration_id", LABEL).iter_rows()) == {"a": 0.0, "c": 1.0, "d": 1.0}

    result = train_and_evaluate(labelled, SPLIT, seed=0, extras=extras, params=FAST, max_rounds=40)
    as_then = known_by(labelled, SPLIT.test_from)
    before = pl.col("declared_at") < SPLIT.test_from
    assert result.sizes["train"] + result.sizes["valid"] == as_then.filter(before).height
    assert as_then.filter(before).height < labelled.filter(before).height  # LEMIS has such rows


def test_random_weight_is_clipped() -> None:
    assert random_weight(1, 1000) == MAX_RANDOM_WEIGHT
    assert random_weight(0, 1000) == 1.0
    assert random_weight(900, 1000) == 1.0


def test_training_is_deterministic_by_seed(labelled: pl.DataFrame, extras: dict[str, str]) -> None:
    a = train_and_evaluate(labelled, SPLIT, seed=3, extras=extras, params=FAST, max_rounds=80)
    b = train_and_evaluate(labelled, SPLIT, seed=3, extras=extras, params=FAST, max_rounds=80)
    np.testing.assert_array_equal(a.test_scores, b.test_scores)
    assert a.metrics["average_precision"] > 0.3  # it learns something real


def test_calibration_improves_brier_on_held_out_rows() -> None:
    """Platt scaling fitted on one half of the rows improves Brier on the other half."""
    rng = np.random.default_rng(0)
    margin = rng.normal(-2, 2, 20_000)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(0.5 * margin - 2.0)))).astype(float)
    fit, held = slice(0, 10_000), slice(10_000, None)
    calibrator = Calibrator().fit(margin[fit], y[fit])
    raw = 1 / (1 + np.exp(-margin[held]))
    assert brier_score_loss(y[held], calibrator(margin[held])) < brier_score_loss(y[held], raw)
    assert calibrator.coef == pytest.approx(0.5, abs=0.1)


def test_real_model_calibration_on_rows_the_trees_never_saw(
    labelled: pl.DataFrame, extras: dict[str, str]
) -> None:
    result = train_and_evaluate(
        labelled, SPLIT, seed=0, extras=extras, params=FAST, refit=False, max_rounds=80
    )
    _, valid_mask, _ = SPLIT.masks(labelled.get_column("declared_at"))
    valid = labelled.filter(pl.Series(valid_mask))
    y = valid.get_column("__label").to_numpy()
    margin = result.model.margin(valid)
    calibrated = result.model.predict_proba(valid)
    assert brier_score_loss(y, calibrated) <= brier_score_loss(y, 1 / (1 + np.exp(-margin)))
    assert result.metrics["brier"] == pytest.approx(
        brier_score_loss(result.test.label, result.test_scores)
    )


def test_saved_model_round_trips_and_refuses_other_feature_sets(
    trained: TrainResult, tmp_path: Path
) -> None:
    result = trained
    folder = result.model.save(tmp_path / "model")
    loaded = RiskModel.load(folder)
    np.testing.assert_allclose(loaded.predict_proba(result.test.features), result.test_scores)
    assert loaded.info["holdout"] == SPLIT.holdout()
    meta = json.loads((folder / "model.json").read_text())
    meta["feature_version"] = "0-old"
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="retrain"):
        RiskModel.load(folder)
    with pytest.raises(ModelMismatchError, match="lack model columns"):
        loaded.predict_proba(result.test.features.drop("office_hit_rate"))


def test_search_is_bounded_and_baselines_share_the_test_rows(
    labelled: pl.DataFrame, extras: dict[str, str]
) -> None:
    result = train_and_evaluate(
        labelled,
        SPLIT,
        seed=0,
        extras=extras,
        params=FAST,
        trials=2,
        baselines=True,
        n_boot=20,
        max_rounds=80,
    )
    assert len(result.search) == 2
    names = [r.name for r in result.reports]
    assert names == ["lightgbm", "offence_history", "logistic_regression"]
    n = {r.metrics["n"] for r in result.reports}
    assert n == {float(result.sizes["test"])}
    assert result.reports[0].metrics["average_precision"] == result.metrics["average_precision"]
