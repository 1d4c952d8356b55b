"""Training runs: labels from inspection results, time-based splits, selection-bias weights.

Selection bias. Inspected rows were mostly chosen *because* they looked risky, so their hit
rate overstates the population's, and a model fitted on them alone learns the targeting
officer's view of risk. Rows inspected at random (``selected_by == "random"``) are an
unbiased sample of the traffic. :func:`label_frame` therefore gives every random row the
weight ``w = n_targeted / n_random`` (clipped to ``[1, MAX_RANDOM_WEIGHT]``): the random
stream then carries as much total weight as the targeted one, so

    weighted hit rate = (hits_t + w * hits_r) / (n_t + w * n_r) = (rate_t + rate_r) / 2

(unclipped), i.e. the base rate the model learns is pulled halfway from the targeted rate
to the unbiased one however few random inspections there were; the clip stops a handful of
random rows from dominating. Rows selected any other way (model, rule, manual, unknown)
weigh 1. Declarations never inspected have no label and are not used. ``tests/models``
checks the identity above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from cites_risk.features.contract import D, I, Outcome, SelectedBy
from cites_risk.features.pipeline import CATEGORICAL
from cites_risk.models.baselines import LogisticBaseline, offence_history_score
from cites_risk.models.ensemble import average
from cites_risk.models.evaluation import ScoreReport, evaluate, evaluate_scores
from cites_risk.models.risk_model import (
    Calibrator,
    RiskModel,
    TrainingData,
    categorical_columns,
    fit_risk_model,
    model_columns,
)

LABEL = "__label"
WEIGHT = "__weight"
RANDOM = "__random"
#: When a labelled declaration's first result, and its first hit, were recorded.
FIRST_RESULT = "__first_result_at"
FIRST_HIT = "__first_hit_at"
MAX_RANDOM_WEIGHT = 20.0

#: The bounded random search: a handful of LightGBM parameters that matter on small data.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "num_leaves": (7, 15, 31, 63),
    "min_data_in_leaf": (5, 10, 20, 50),
    "feature_fraction": (0.5, 0.7, 0.9),
    "lambda_l2": (0.0, 1.0, 10.0),
    "learning_rate": (0.02, 0.03, 0.05),
    "cat_smooth": (10.0, 50.0),
}


@dataclass(frozen=True)
class Split:
    """Train before ``valid_from``, validate until ``test_from``, test from there on.

    ``train_from`` drops older rows; ``test_until`` closes the test period. The holdout
    definition (:meth:`holdout`) is recorded with every model, so two models are compared
    only on the same test period.
    """

    valid_from: datetime
    test_from: datetime
    test_until: datetime | None = None
    train_from: datetime | None = None

    def masks(self, times: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        train = times < self.valid_from
        if self.train_from is not None:
            train = train & (times >= self.train_from)
        valid = ((times >= self.valid_from) & (times < self.test_from)).to_numpy()
        test = times >= self.test_from
        if self.test_until is not None:
            test = test & (times < self.test_until)
        return train.to_numpy(), valid, test.to_numpy()

    def holdout(self) -> str:
        """The test period as text, e.g. ``2020-01-01..open``."""
        end = self.test_until.date().isoformat() if self.test_until else "open"
        return f"{self.test_from.date().isoformat()}..{end}"


def label_frame(
    features: pl.DataFrame, inspections: pl.DataFrame, positive: pl.Expr | None = None
) -> pl.DataFrame:
    """Features of inspected declarations with ``__label``, ``__weight`` and ``__random``.

    ``positive`` overrides what counts as a hit (e.g. ``finding == "critical"``). A
    declaration counts as random only if every inspection of it was selected at random.
    ``__first_result_at`` and ``__first_hit_at`` say when the label became known
    (:func:`known_by`).
    """
    hit = positive if positive is not None else pl.col(I.OUTCOME) == Outcome.HIT
    timed = I.INSPECTED_AT in inspections.columns
    results = inspections.group_by(I.DECLARATION).agg(
        hit.any().fill_null(False).cast(pl.Float64).alias(LABEL),
        (pl.col(I.SELECTED_BY) == SelectedBy.RANDOM).all().alias(RANDOM),
        *(
            [
                pl.col(I.INSPECTED_AT).min().alias(FIRST_RESULT),
                pl.col(I.INSPECTED_AT).filter(hit.fill_null(False)).min().alias(FIRST_HIT),
            ]
            if timed
            else []
        ),
    )
    labelled = features.join(results, left_on=D.ID, right_on=I.DECLARATION, how="inner")
    w = random_weight(int(labelled.get_column(RANDOM).sum()), labelled.height)
    # A fixed row order: LightGBM's bagging depends on it, and training must be repeatable.
    return labelled.with_columns(pl.when(pl.col(RANDOM)).then(w).otherwise(1.0).alias(WEIGHT)).sort(
        D.DECLARED_AT, D.ID
    )


def known_by(labelled: pl.DataFrame, cut: datetime) -> pl.DataFrame:
    """Labels as known at ``cut`` for the declarations before it, which a model trained at
    ``cut`` learns from: a result recorded later did not exist yet, so a declaration with
    none by then is not labelled, and one found only later is a clearance if it was cleared
    before. Declarations from ``cut`` on keep every result: they are what the model is
    tested on. (A LEMIS refusal can be recorded a year after the shipment.)"""
    if FIRST_RESULT not in labelled.columns:
        return labelled
    before = pl.col(D.DECLARED_AT) < cut
    as_then = (pl.col(FIRST_HIT) < cut).fill_null(False).cast(pl.Float64)
    return labelled.filter(~before | (pl.col(FIRST_RESULT) < cut)).with_columns(
        pl.when(before).then(as_then).otherwise(pl.col(LABEL)).alias(LABEL)
    )


def random_weight(n_random: int, n_total: int) -> float:
    """Weight of a randomly selected row: n_targeted / n_random, clipped to [1, 20]."""
    n_targeted = n_total - n_random
    if not n_random or not n_targeted:
        return 1.0
    return min(MAX_RANDOM_WEIGHT, max(1.0, n_targeted / n_random))


def _data(frame: pl.DataFrame, mask: np.ndarray) -> TrainingData:
    part = frame.filter(pl.Series(mask))
    return TrainingData(
        features=part,
        label=part.get_column(LABEL).to_numpy(),
        weight=part.get_column(WEIGHT).to_numpy() if WEIGHT in part.columns else None,
    )


@dataclass(frozen=True)
class TrainResult:
    model: RiskModel
    test: TrainingData
    test_scores: np.ndarray
    metrics: dict[str, float]
    sizes: dict[str, int]
    #: The model and each baseline on the same test rows (empty when not asked for).
    reports: list[ScoreReport] = field(default_factory=list)
    search: list[dict[str, Any]] = field(default_factory=list)


def search_params(
    train: TrainingData,
    valid: TrainingData,
    *,
    trials: int,
    seed: int = 0,
    extras: dict[str, str] | None = None,
    exclude: Sequence[str] = (),
    max_rounds: int = 2000,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A small random search scored on validation average precision, ``trials`` fits.

    Returns the best parameters (the defaults when ``trials`` is 0) and every trial.
    """
    rng = np.random.default_rng(seed)
    best: dict[str, Any] = {}
    best_ap = -1.0
    history: list[dict[str, Any]] = []
    for trial in range(trials):
        params = {k: v[int(rng.integers(len(v)))] for k, v in SEARCH_SPACE.items()}
        model = fit_risk_model(
            train,
            valid,
            seed=seed,
            params=params,
            extras=extras,
            exclude=exclude,
            num_boost_round=max_rounds,
        )
        ap = evaluate(valid.label, model.margin(valid.features))["average_precision"]
        history.append({"trial": trial, **params, "valid_average_precision": ap})
        if ap > best_ap:
            best, best_ap = params, ap
    return best, history


def _value(features: pl.DataFrame) -> np.ndarray:
    return features.get_column("log_value").fill_null(0).exp().to_numpy() - 1.0


@dataclass
class _Member:
    """One seed's model (refitted when asked) and the model fitted on train alone, whose
    margins on valid are out of sample."""

    model: RiskModel
    first: RiskModel


def member_seeds(seed: int, bag: int) -> list[int]:
    """The seeds of a bag: disjoint across ``seed``, so that five benchmark seeds with
    ``bag=5`` train 25 different models; a bag of one keeps ``seed`` itself."""
    return [seed] if bag == 1 else [seed * bag + k for k in range(bag)]


def _member(
    train: TrainingData,
    valid: TrainingData,
    both: TrainingData | None,
    *,
    seed: int,
    extras: dict[str, str] | None,
    params: dict[str, Any] | None,
    exclude: Sequence[str],
    max_rounds: int,
) -> _Member:
    model = fit_risk_model(
        train,
        valid,
        seed=seed,
        extras=extras,
        params=params,
        exclude=exclude,
        num_boost_round=max_rounds,
    )
    rounds = model.booster.num_trees()
    if both is None:
        return _Member(model, model)
    final = fit_risk_model(
        both,
        valid,
        seed=seed,
        extras=extras,
        params=params,
        exclude=exclude,
        num_boost_round=max(int(rounds * len(both.label) / max(1, len(train.label))), 10),
        early_stopping=0,
    )
    # The validation rows are in-sample for the refit, so its calibrator would be
    # overconfident: keep the one fitted on the first model's out-of-sample margins.
    final.calibrator = model.calibrator
    final.info["calibration"] = "platt, fitted on validation margins before refit"
    final.info["valid_best_iteration"] = rounds
    return _Member(final, model)


def train_and_evaluate(
    labelled: pl.DataFrame,
    split: Split,
    *,
    seed: int = 0,
    extras: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    refit: bool = True,
    exclude: Sequence[str] = (),
    trials: int = 0,
    baselines: bool = False,
    n_boot: int = 0,
    max_rounds: int = 2000,
    bag: int = 1,
    on_member: Callable[[int, int, int], None] | None = None,
) -> TrainResult:
    """Fit on train (rounds and calibration from valid), then score and evaluate test.

    With ``refit`` the final trees are grown again on train + valid with the number of
    rounds early stopping found (plus the share of extra data), because the most recent
    period is the most informative one and small validation sets make early stopping noisy.
    ``trials`` > 0 first runs :func:`search_params`. ``baselines`` also fits and scores the
    offence-history and logistic-regression baselines on the same test rows. ``bag`` > 1
    trains that many seeds (:func:`member_seeds`) and keeps the mean of their margins as
    one booster (``models/ensemble.py``), calibrated on the mean of their validation
    margins. ``on_member(k, bag, seed)`` is called as member ``k`` (from 1) starts, so a
    caller can show how far a long bag has come.
    """
    if bag < 1:
        raise ValueError("bag must be at least 1")
    # Trained as at the test period's start: no label recorded after it.
    labelled = known_by(labelled, split.test_from)
    train_mask, valid_mask, test_mask = split.masks(labelled.get_column(D.DECLARED_AT))
    train, valid, test = (_data(labelled, m) for m in (train_mask, valid_mask, test_mask))
    if train.label.sum() == 0 or valid.label.sum() == 0:
        raise ValueError("training and validation periods both need positive (hit) results")
    search: list[dict[str, Any]] = []
    if trials > 0:
        found, search = search_params(
            train,
            valid,
            trials=trials,
            seed=seed,
            extras=extras,
            exclude=exclude,
            max_rounds=max_rounds,
        )
        params = {**found, **(params or {})}
    # Built once for every member's refit.
    both = _data(labelled, train_mask | valid_mask) if refit else None
    members = []
    for k, member_seed in enumerate(member_seeds(seed, bag)):
        if on_member is not None:
            on_member(k + 1, bag, member_seed)
        members.append(
            _member(
                train,
                valid,
                both,
                seed=member_seed,
                extras=extras,
                params=params,
                exclude=exclude,
                max_rounds=max_rounds,
            )
        )
    model = members[0].model
    if bag > 1:
        model = replace(model, booster=average([m.model.booster for m in members]))
        # Calibrated like a single model: on the mean margin of out-of-sample members.
        margin = np.mean([m.first.margin(valid.features) for m in members], axis=0)
        model.calibrator = Calibrator().fit(margin, valid.label, valid.weight)
        model.info = {
            **model.info,
            "seed": seed,
            "bag": bag,
            "member_seeds": member_seeds(seed, bag),
            "best_iteration": [m.model.booster.num_trees() for m in members],
            "trees": model.booster.num_trees(),
            "valid_best_iteration": [m.first.booster.num_trees() for m in members],
        }
    model.info["holdout"] = split.holdout()
    scores = model.predict_proba(test.features) if len(test.label) else np.zeros(0)
    value = _value(test.features) if len(test.label) else None
    metrics = evaluate(test.label, scores, scores, value=value) if len(test.label) else {}
    sizes = {
        "train": len(train.label),
        "valid": len(valid.label),
        "test": len(test.label),
        "train_positives": int(train.label.sum()),
        "valid_positives": int(valid.label.sum()),
        "test_positives": int(test.label.sum()),
    }
    reports: list[ScoreReport] = []
    if len(test.label) and (baselines or n_boot):
        reports.append(
            evaluate_scores(
                "lightgbm", test.label, scores, proba=scores, value=value, n_boot=n_boot
            )
        )
    if len(test.label) and baselines:
        reports.extend(baseline_reports(labelled, split, seed=seed, extras=extras, n_boot=n_boot))
    return TrainResult(model, test, scores, metrics, sizes, reports, search)


def baseline_reports(
    labelled: pl.DataFrame,
    split: Split,
    *,
    seed: int = 0,
    extras: dict[str, str] | None = None,
    n_boot: int = 0,
) -> list[ScoreReport]:
    """The offence-history and logistic-regression baselines on the split's test rows.

    Logistic regression is fitted on train + valid (it has no rounds to tune).
    """
    train_mask, valid_mask, test_mask = split.masks(labelled.get_column(D.DECLARED_AT))
    fit, test = _data(labelled, train_mask | valid_mask), _data(labelled, test_mask)
    value = _value(test.features)
    history = offence_history_score(test.features)
    cats = [c for c in categorical_columns(extras) if c in CATEGORICAL or c in (extras or {})]
    numeric = [c for c in model_columns(extras) if c not in cats and c in labelled.columns]
    logistic = LogisticBaseline(numeric, cats, seed=seed).fit(fit.features, fit.label, fit.weight)
    lr = logistic.predict_proba(test.features)
    return [
        evaluate_scores("offence_history", test.label, history, value=value, n_boot=n_boot),
        evaluate_scores("logistic_regression", test.label, lr, value=value, n_boot=n_boot),
    ]
