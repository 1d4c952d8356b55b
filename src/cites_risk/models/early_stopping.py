"""When boosting stops: the validation average precision, smoothed over the last rounds.

A customs validation period holds a few dozen positives, so one round's average precision
moves by a hit more or less in the top of the ranking. LightGBM's own early stopping takes
the single best round: on the LEMIS backtest fold 2019-H1, two seeds of five peaked at 4
and 5 trees and stopped 100 rounds later, with test AP 0.917 +- 0.016 against 0.926 +-
0.004 for models that boosted on. A mean over the last ``window`` + 1 rounds discounts such
a peak, and a patience of 200 rounds (6 / learning rate at the default rate of 0.03)
outlasts a plateau.
"""

from __future__ import annotations

import math

import lightgbm as lgb
from lightgbm.callback import CallbackEnv, EarlyStopException

#: Rounds without a better smoothed validation score before boosting stops.
PATIENCE = 200
#: Rounds averaged with the current one.
WINDOW = 25


class SmoothedEarlyStopping:
    """A LightGBM callback: stop once ``metric``'s trailing mean stopped improving.

    The mean is over the current round and the ``window`` before it, so the first
    ``window`` rounds are never chosen. The model keeps the trees up to the round where the
    mean peaked. One instance per training run: it remembers the rounds it has seen.
    """

    def __init__(
        self, patience: int = PATIENCE, window: int = WINDOW, metric: str = "average_precision"
    ) -> None:
        if patience < 1 or window < 0:
            raise ValueError("patience must be at least 1 round and window at least 0")
        # Per instance: lgb.train numbers callbacks without their own order first. After
        # evaluation logging (10) and recording (20), at LightGBM's early stopping's place.
        self.order = 30
        self.before_iteration = False
        self.patience = patience
        self.window = window
        self.metric = metric
        self._seen: list[float] = []
        self._best = -1
        self._best_mean = -math.inf
        self._best_results: list[lgb.basic.EvalResult] = []

    def __call__(self, env: CallbackEnv) -> None:
        results = list(env.evaluation_result_list or [])
        found = [r.metric_value for r in results if r.metric_name == self.metric]
        if not found:
            raise ValueError(f"early stopping needs the validation metric {self.metric!r}")
        self._seen.append(found[0])
        recent = self._seen[-(self.window + 1) :]
        mean = sum(recent) / len(recent)
        # A mean over fewer rounds than the window would let one early round count for more.
        if len(recent) > self.window and mean > self._best_mean:
            self._best, self._best_mean, self._best_results = env.iteration, mean, results
        if env.iteration - self._best >= self.patience or env.iteration == env.end_iteration - 1:
            raise EarlyStopException(self._best, self._best_results)
