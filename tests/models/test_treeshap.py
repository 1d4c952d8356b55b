"""Compiled TreeSHAP: LightGBM's pred_contrib to 1e-9, and LightGBM where it does not apply."""

from __future__ import annotations

import logging
import pickle
from dataclasses import replace

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cites_risk.models import treeshap
from cites_risk.models.training import TrainResult
from cites_risk.models.treeshap import (
    LightGBMContributions,
    TreeShap,
    TreeShapUnavailableError,
    for_booster,
)

pytest.importorskip("numba")

TOLERANCE = 1e-9


def _data(seed: int, n: int = 3_000) -> tuple[np.ndarray, np.ndarray]:
    """Numeric columns with NaNs and exact zeros, a categorical one with NaN and negatives."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [
            rng.normal(size=n),
            np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
            rng.integers(0, 25, size=n).astype(float),  # categorical codes
            rng.exponential(size=n),
            rng.integers(0, 3, size=n).astype(float),
        ]
    )
    x[rng.random(n) < 0.1, 0] = np.nan
    x[rng.random(n) < 0.05, 2] = np.nan
    x[rng.random(n) < 0.02, 2] = -1.0
    x[rng.random(n) < 0.05, 3] = np.nan
    logit = (
        np.nan_to_num(x[:, 0]) * x[:, 3].clip(0, 3)
        + np.isin(x[:, 2], [0, 2, 5, 11, 17]) * 1.5
        + (x[:, 1] == 0) * 0.8
        - 1.0
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(int)
    return x, y


def _booster(x: np.ndarray, y: np.ndarray, rounds: int = 30, **params: object) -> lgb.Booster:
    base = {
        "objective": "binary",
        "verbose": -1,
        "num_leaves": 31,
        "min_data_in_leaf": 5,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "seed": 0,
    }
    dataset = lgb.Dataset(x, y, categorical_feature=[2], params={"verbose": -1})
    return lgb.train({**base, **params}, dataset, num_boost_round=rounds)


def _unseen(x: np.ndarray) -> np.ndarray:
    """Rows the trees never saw: unknown categories, NaN everywhere, huge values."""
    extra = np.array(
        [
            [np.nan] * x.shape[1],
            [0.0] * x.shape[1],
            [1e300, -1e300, 99.0, 1e300, 7.0],
            [-0.0, 1e-40, 3.9, -1e-40, 2.0],
            [0.5, -0.5, -0.5, 0.5, -0.5],  # -0.5 truncates to category 0
            # Within LightGBM's zero threshold (the float 1e-35f), so read as 0.
            [1.000000001e-35, -1.000000001e-35, 1e-36, 1.000000001e-35, 0.0],
        ]
    )
    return np.vstack([x, extra])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"zero_as_missing": True},
        {"use_missing": False},
        {"num_leaves": 65, "max_depth": -1},  # 64 splits: every bit of the decision word
        {"num_leaves": 4, "max_depth": 2},
        {"bagging_fraction": 0.5, "bagging_freq": 1, "feature_fraction": 0.6},
    ],
    ids=["default", "zero-as-missing", "no-missing", "widest", "shallow", "bagged"],
)
# Every leaf computed per row (0), leaves of up to 3 features looked up, the default.
@pytest.mark.parametrize("table_slots", [0, 3, None], ids=["no-tables", "small-tables", "tables"])
def test_equals_lightgbm_pred_contrib(params: dict[str, object], table_slots: int | None) -> None:
    x, y = _data(seed=1)
    booster = _booster(x, y, **params)
    rows = _unseen(x)
    expected = booster.predict(rows, pred_contrib=True)
    tables = {} if table_slots is None else {"table_slots": table_slots}
    got = TreeShap(booster, threads=2, **tables).contributions(rows)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    # Local accuracy: the contributions add up to the raw margin.
    np.testing.assert_allclose(
        got.sum(axis=1), booster.predict(rows, raw_score=True), rtol=0, atol=TOLERANCE
    )


def test_threads_and_task_boundaries_do_not_change_a_row() -> None:
    x, y = _data(seed=2, n=1_500)
    booster = _booster(x, y)
    one = TreeShap(booster, threads=1).contributions(x)
    two = TreeShap(booster, threads=2).contributions(x)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(TreeShap(booster).contributions(x[700:701]), one[700:701])


def test_a_split_without_training_rows_falls_back() -> None:
    """Counts of 0 (a model edited or refit by hand) would make LightGBM's shares 0/0."""
    x, y = _data(seed=6, n=800)
    text = _booster(x, y, rounds=2).model_to_string()
    head, rest = text.split("internal_count=", 1)
    root, tail = rest.split(" ", 1)
    # Same width: the model text records each tree's size in bytes.
    edited = lgb.Booster(model_str=f"{head}internal_count={'0' * len(root)} {tail}")
    with pytest.raises(TreeShapUnavailableError, match="without training rows"):
        TreeShap(edited)
    assert isinstance(for_booster(edited), LightGBMContributions)


def test_single_leaf_trees_move_only_the_bias() -> None:
    x, _ = _data(seed=3, n=500)
    y = (x[:, 3] > 1).astype(int)
    booster = _booster(x, y, rounds=5, min_gain_to_split=1e9)  # no split is worth it
    assert all("split_index" not in t["tree_structure"] for t in booster.dump_model()["tree_info"])
    got = TreeShap(booster).contributions(x[:50])
    np.testing.assert_allclose(got, booster.predict(x[:50], pred_contrib=True), atol=TOLERANCE)
    assert np.all(got[:, :-1] == 0.0)


def test_wrong_width_is_refused() -> None:
    x, y = _data(seed=4, n=500)
    shap = TreeShap(_booster(x, y, rounds=3))
    with pytest.raises(ValueError, match="5 columns"):
        shap.contributions(x[:, :4])


def test_trees_beyond_its_reach_fall_back_to_lightgbm(caplog: pytest.LogCaptureFixture) -> None:
    x, y = _data(seed=5)
    wide = _booster(x, y, rounds=3, num_leaves=100, min_data_in_leaf=2)
    assert max(t["num_leaves"] for t in wide.dump_model()["tree_info"]) > 65
    with pytest.raises(TreeShapUnavailableError, match="more than 64 splits"):
        TreeShap(wide)
    with caplog.at_level(logging.WARNING, logger="cites_risk.models.treeshap"):
        chosen = for_booster(wide)
    assert isinstance(chosen, LightGBMContributions)
    assert "falls back" in caplog.text
    np.testing.assert_array_equal(
        chosen.contributions(x[:20]), wide.predict(x[:20], pred_contrib=True)
    )
    linear = _booster(np.nan_to_num(x), y, rounds=3, linear_tree=True)
    assert isinstance(for_booster(linear), LightGBMContributions)
    assert for_booster(_booster(x, y, rounds=3)).backend == "treeshap-numba"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    leaves=st.integers(2, 40),
    rounds=st.integers(1, 12),
    zero_as_missing=st.booleans(),
    table_slots=st.integers(0, 12),
)
def test_property_equals_lightgbm(
    seed: int, leaves: int, rounds: int, zero_as_missing: bool, table_slots: int
) -> None:
    x, y = _data(seed, n=600)
    booster = _booster(
        x, y, rounds=rounds, num_leaves=leaves, zero_as_missing=zero_as_missing, seed=seed
    )
    rows = _unseen(x[:200])
    np.testing.assert_allclose(
        TreeShap(booster, table_slots=table_slots).contributions(rows),
        booster.predict(rows, pred_contrib=True),
        rtol=0,
        atol=TOLERANCE,
    )


def test_a_risk_model_rebuilds_its_explainer_where_it_is_unpickled(trained: TrainResult) -> None:
    """A pickled model (a Dask worker's copy) does not carry the explainer: that process
    builds its own, with its own thread budget and its own numba (or the fallback)."""
    model = replace(trained.model)
    explainer = model.explainer(warm=True, threads=1)
    assert explainer.backend == "treeshap-numba"
    assert model.explainer() is explainer  # built once
    copy = pickle.loads(pickle.dumps(model))
    assert copy._shap is None
    x = np.zeros((3, len(model.columns)))
    np.testing.assert_array_equal(copy.explainer().contributions(x), explainer.contributions(x))


def test_warming_a_fallback_runs_nothing() -> None:
    """LightGBM refuses to explain linear trees: loading such a model must still work."""
    x, y = _data(seed=7, n=600)
    linear = _booster(np.nan_to_num(x), y, rounds=3, linear_tree=True)
    fallback = for_booster(linear)
    fallback.warm(x.shape[1])  # no error: nothing is explained yet
    with pytest.raises(lgb.basic.LightGBMError, match="linear"):
        fallback.contributions(x[:2])


def test_tables_shrink_to_their_memory_budget_and_stay_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, y = _data(seed=3)
    booster = _booster(x, y, num_leaves=40)
    rows = _unseen(x[:300])
    full = TreeShap(booster)
    assert full._trees.tables.nbytes > 4096
    monkeypatch.setattr(treeshap, "_TABLE_BYTES", 4096)
    small = TreeShap(booster)
    assert 0 < small._trees.tables.nbytes <= 4096
    np.testing.assert_allclose(
        small.contributions(rows), booster.predict(rows, pred_contrib=True), rtol=0, atol=TOLERANCE
    )
