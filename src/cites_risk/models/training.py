"""Training runs: labels from inspection results, time-based splits, selection-bias weights.

Selection bias: inspected rows were mostly chosen *because* they looked risky, so their hit
rate overstates the population's. Rows inspected at random are an unbiased sample; each is
weighted by the inverse of its inclusion probability relative to targeted rows, so the
random sample counts in proportion to the traffic it stands for (clipped so that a handful
of random rows cannot dominate). Rows with no inspection are not labelled and not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from cites_risk.features.contract import D, I, Outcome, SelectedBy
from cites_risk.models.evaluation import evaluate
from cites_risk.models.risk_model import RiskModel, TrainingData, fit_risk_model

LABEL = "__label"
WEIGHT = "__weight"
MAX_RANDOM_WEIGHT = 20.0


@dataclass(frozen=True)
class Split:
    """Train before ``valid_from``, validate until ``test_from``, test from there on."""

    valid_from: datetime
    test_from: datetime
    test_until: datetime | None = None

    def masks(self, times: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        train = (times < self.valid_from).to_numpy()
        valid = ((times >= self.valid_from) & (times < self.test_from)).to_numpy()
        test = times >= self.test_from
        if self.test_until is not None:
            test = test & (times < self.test_until)
        return train, valid, test.to_numpy()


def label_frame(
    features: pl.DataFrame, inspections: pl.DataFrame, positive: pl.Expr | None = None
) -> pl.DataFrame:
    """Features of inspected declarations with ``__label`` and ``__weight`` columns.

    ``positive`` overrides what counts as a hit (e.g. ``finding == "critical"``).
    """
    hit = positive if positive is not None else pl.col(I.OUTCOME) == Outcome.HIT
    results = inspections.group_by(I.DECLARATION).agg(
        hit.any().cast(pl.Float64).alias(LABEL),
        (pl.col(I.SELECTED_BY) == SelectedBy.RANDOM).all().alias("__random"),
    )
    labelled = features.join(results, left_on=D.ID, right_on=I.DECLARATION, how="inner")
    n_random = int(labelled.get_column("__random").sum())
    n_targeted = labelled.height - n_random
    random_weight = (
        min(MAX_RANDOM_WEIGHT, max(1.0, n_targeted / n_random)) if n_random and n_targeted else 1.0
    )
    # A fixed row order: LightGBM's bagging depends on it, and training must be repeatable.
    return (
        labelled.with_columns(
            pl.when(pl.col("__random")).then(random_weight).otherwise(1.0).alias(WEIGHT)
        )
        .drop("__random")
        .sort(D.DECLARED_AT, D.ID)
    )


def _data(frame: pl.DataFrame, mask: np.ndarray) -> TrainingData:
    part = frame.filter(pl.Series(mask))
    return TrainingData(
        features=part,
        label=part.get_column(LABEL).to_numpy(),
        weight=part.get_column(WEIGHT).to_numpy(),
    )


@dataclass(frozen=True)
class TrainResult:
    model: RiskModel
    test: TrainingData
    test_scores: np.ndarray
    metrics: dict[str, float]
    sizes: dict[str, int]


def train_and_evaluate(
    labelled: pl.DataFrame,
    split: Split,
    *,
    seed: int = 0,
    extras: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    refit: bool = True,
    exclude: Sequence[str] = (),
) -> TrainResult:
    """Fit on train (rounds and calibration from valid), then score and evaluate test.

    With ``refit`` the final trees are grown again on train + valid with the number of
    rounds early stopping found (plus the share of extra data), because the most recent
    period is the most informative one and small validation sets make early stopping noisy.
    """
    train_mask, valid_mask, test_mask = split.masks(labelled.get_column(D.DECLARED_AT))
    train, valid, test = (_data(labelled, m) for m in (train_mask, valid_mask, test_mask))
    if train.label.sum() == 0 or valid.label.sum() == 0:
        raise ValueError("training and validation periods both need positive (hit) results")
    model = fit_risk_model(train, valid, seed=seed, extras=extras, params=params, exclude=exclude)
    if refit:
        both = _data(labelled, train_mask | valid_mask)
        rounds = int(model.booster.num_trees() * len(both.label) / max(1, len(train.label)))
        final = fit_risk_model(
            both,
            valid,
            seed=seed,
            extras=extras,
            params=params,
            exclude=exclude,
            num_boost_round=max(rounds, 10),
            early_stopping=0,
        )
        # Calibrate the refitted trees on the first model's out-of-sample margins mapped
        # through the same ranks: the validation rows are in-sample for the refit.
        final.calibrator = model.calibrator
        final.info["calibration"] = "platt, fitted on validation margins before refit"
        model = final
    scores = model.predict_proba(test.features) if len(test.label) else np.zeros(0)
    value = test.features.get_column("log_value").fill_null(0).exp().to_numpy() - 1.0
    metrics = evaluate(test.label, scores, scores, value=value) if len(test.label) else {}
    sizes = {
        "train": len(train.label),
        "valid": len(valid.label),
        "test": len(test.label),
        "train_positives": int(train.label.sum()),
        "valid_positives": int(valid.label.sum()),
        "test_positives": int(test.label.sum()),
    }
    return TrainResult(model, test, scores, metrics, sizes)
