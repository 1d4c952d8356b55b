"""Early stopping on a smoothed validation curve: a lucky early round does not stop boosting."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from lightgbm.basic import EvalResult
from lightgbm.callback import CallbackEnv, EarlyStopException

from cites_risk.models.early_stopping import SmoothedEarlyStopping


def _drive(callback: SmoothedEarlyStopping, curve: list[float]) -> tuple[int, int]:
    """Feed ``curve`` round by round; (round it stopped at, best round), 0-based."""
    for i, value in enumerate(curve):
        env = CallbackEnv(
            model=None,
            params={},
            iteration=i,
            begin_iteration=0,
            end_iteration=len(curve),
            evaluation_result_list=[
                EvalResult("valid_0", "average_precision", value, True),
                EvalResult("valid_0", "auc", 0.5, True),
            ],
        )
        try:
            callback(env)
        except EarlyStopException as stop:
            return i, stop.best_iteration
    raise AssertionError("the callback never stopped")


def _noisy_rise(rounds: int, seed: int = 0) -> list[float]:
    """Validation AP that climbs slowly from 0.5 to 0.7, with noise of a few positives."""
    rng = np.random.default_rng(seed)
    return list(np.linspace(0.5, 0.7, rounds) + rng.normal(0, 0.01, rounds))


def test_a_peak_in_the_first_rounds_does_not_stop_boosting() -> None:
    curve = _noisy_rise(600)
    curve[4] = 0.72  # better than anything to come, for one round only
    stopped, best = _drive(SmoothedEarlyStopping(patience=100, window=25), curve)
    assert best > 400
    assert stopped == len(curve) - 1
    # The single best round would have stopped it 100 rounds after the lucky one.
    plain = SmoothedEarlyStopping(patience=100, window=0)
    assert _drive(plain, curve) == (104, 4)


def test_it_stops_patience_rounds_after_the_smoothed_peak() -> None:
    curve = _noisy_rise(300) + [0.5] * 400
    stopped, best = _drive(SmoothedEarlyStopping(patience=150, window=25), curve)
    means = [np.mean(curve[i - 25 : i + 1]) for i in range(25, len(curve))]
    assert best == 25 + int(np.argmax(means[: stopped - 25 + 1]))
    assert 280 <= best < 300
    assert stopped == best + 150


def test_a_metric_it_cannot_find_is_an_error() -> None:
    with pytest.raises(ValueError, match="binary_logloss"):
        _drive(SmoothedEarlyStopping(metric="binary_logloss"), [0.5])
    with pytest.raises(ValueError, match="patience"):
        SmoothedEarlyStopping(patience=0)


def test_lightgbm_keeps_the_trees_up_to_the_smoothed_peak() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 1.5, 3000) > 2.0).astype(float)
    train, valid = lgb.Dataset(x[:2000], y[:2000]), lgb.Dataset(x[2000:], y[2000:])
    recorded: dict[str, dict[str, list[float]]] = {}
    booster = lgb.train(
        {"objective": "binary", "metric": ["average_precision"], "verbose": -1, "seed": 0},
        train,
        num_boost_round=400,
        valid_sets=[valid],
        callbacks=[lgb.record_evaluation(recorded), SmoothedEarlyStopping(patience=40, window=5)],
    )
    curve = recorded["valid_0"]["average_precision"]
    means = [np.mean(curve[i - 5 : i + 1]) for i in range(5, len(curve))]
    best = 5 + int(np.argmax(means))
    assert booster.best_iteration == best + 1
    assert len(curve) == min(400, best + 40 + 1)
