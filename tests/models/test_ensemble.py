"""Averaged seeds: one booster whose margins and contributions are the members' means."""

from __future__ import annotations

from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from cites_risk.models.ensemble import average
from cites_risk.models.risk_model import RiskModel
from cites_risk.models.training import member_seeds, train_and_evaluate
from cites_risk.models.treeshap import TreeShap
from tests.models.conftest import FAST, SPLIT


def _boosters(n: int) -> tuple[list[lgb.Booster], np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5))
    x[:, 4] = rng.integers(0, 15, 3000)  # a categorical column: set splits must survive
    y = ((x[:, 0] + (x[:, 4] % 4 == 1) + rng.normal(size=3000)) > 1.0).astype(float)
    params = {"objective": "binary", "num_leaves": 15, "verbose": -1, "bagging_freq": 1}
    # Each member bins its own sample of rows (LightGBM samples 200,000; here 500), as
    # members do on large training sets: their feature ranges differ, their trees add up.
    boosters = [
        lgb.train(
            {**params, "seed": s, "bagging_fraction": 0.7},
            lgb.Dataset(
                x,
                y,
                categorical_feature=[4],
                params={"bin_construct_sample_cnt": 500, "data_random_seed": s},
            ),
            15 + 10 * s,
        )
        for s in range(n)
    ]
    return boosters, x


def test_the_average_booster_gives_the_mean_margin_and_contributions(tmp_path: Path) -> None:
    boosters, x = _boosters(3)
    ranges = {_line(b.model_to_string(), "feature_infos=") for b in boosters}
    assert len(ranges) == 3
    merged = average(boosters)
    assert merged.num_trees() == sum(b.num_trees() for b in boosters)
    mean = np.mean([b.predict(x, raw_score=True) for b in boosters], axis=0)
    np.testing.assert_allclose(merged.predict(x, raw_score=True), mean, rtol=0, atol=1e-12)
    # TreeSHAP is linear in the leaf values: the members' mean contributions, bias included.
    contributions = np.mean([b.predict(x[:200], pred_contrib=True) for b in boosters], axis=0)
    np.testing.assert_allclose(
        TreeShap(merged, threads=1).contributions(x[:200]), contributions, rtol=0, atol=1e-12
    )
    path = tmp_path / "merged.txt"
    merged.save_model(path)
    again = lgb.Booster(model_file=str(path))
    np.testing.assert_allclose(again.predict(x, raw_score=True), mean, rtol=0, atol=1e-12)


def _line(model: str, prefix: str) -> str:
    return next(line for line in model.split("\n") if line.startswith(prefix))


def test_one_booster_is_its_own_average_and_strangers_do_not_average() -> None:
    boosters, x = _boosters(1)
    assert average(boosters) is boosters[0]
    other = lgb.train(
        {"objective": "binary", "verbose": -1},
        lgb.Dataset(x[:, :3], (x[:, 0] > 0).astype(float)),
        5,
    )
    with pytest.raises(ValueError, match="share features"):
        average([boosters[0], other])
    with pytest.raises(ValueError, match="nothing"):
        average([])


def test_member_seeds_do_not_overlap_across_benchmark_seeds() -> None:
    assert member_seeds(3, 1) == [3]
    bags = [member_seeds(seed, 5) for seed in range(5)]
    assert len({s for bag in bags for s in bag}) == 25


def test_a_bag_is_the_mean_of_its_members_refitted(
    labelled: pl.DataFrame, extras: dict[str, str], tmp_path: Path
) -> None:
    members = [
        train_and_evaluate(labelled, SPLIT, seed=s, extras=extras, params=FAST, max_rounds=60)
        for s in member_seeds(1, 2)
    ]
    bag = train_and_evaluate(
        labelled, SPLIT, seed=1, extras=extras, params=FAST, max_rounds=60, bag=2
    )
    test = bag.test.features
    mean = np.mean([m.model.margin(test) for m in members], axis=0)
    np.testing.assert_allclose(bag.model.margin(test), mean, rtol=0, atol=1e-9)
    assert bag.model.info["bag"] == 2 and bag.model.info["seed"] == 1
    assert bag.model.info["member_seeds"] == member_seeds(1, 2)
    assert bag.model.info["best_iteration"] == [m.model.booster.num_trees() for m in members]
    assert bag.model.info["trees"] == bag.model.booster.num_trees()
    assert bag.model.info["valid_best_iteration"] == [
        m.model.info["valid_best_iteration"] for m in members
    ]
    # Calibrated on the members' mean validation margin, so still a probability.
    assert 0.0 < float(bag.test_scores.mean()) < 1.0
    bag.model.save(tmp_path / "model")
    again = RiskModel.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict_proba(test), bag.test_scores, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="at least 1"):
        train_and_evaluate(labelled, SPLIT, seed=1, extras=extras, params=FAST, bag=0)
