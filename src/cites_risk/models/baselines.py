"""Baselines scored in the same run as the model, so that every gain is measured.

- **offence history**: the strong simple baseline of the customs literature, the smoothed
  earlier hit and offence rates of the importer, the HS heading and the origin combined as
  a noisy-or (the chance that at least one of them "fires"). No fitting at all.
- **logistic regression**: scikit-learn on the same features, numeric columns imputed and
  standardised, categorical ones one-hot encoded (rare levels pooled).
- **rule profiles alone**: computed in ``profiling`` (profiles live there) and passed to
  :func:`cites_risk.models.evaluation.evaluate_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import polars as pl
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from cites_risk.models.preprocess import NotFittedError

#: The keys of the offence-history baseline: who imports, what, from where.
HISTORY_BASELINE_KEYS: tuple[str, ...] = ("importer", "hs4", "origin")


def offence_history_score(
    features: pl.DataFrame, keys: Sequence[str] = HISTORY_BASELINE_KEYS
) -> np.ndarray:
    """Noisy-or of each key's smoothed rate: 1 - prod(1 - max(hit rate, offence rate)).

    Uses the ``<key>_hit_rate`` (earlier inspections) and ``<key>_offence_rate`` (offence
    records per earlier declaration) columns of ``build_features``; both are smoothed
    towards the overall rate there, so a newcomer gets the overall rate, not zero.
    """
    miss = np.ones(features.height)
    for key in keys:
        cols = [c for c in (f"{key}_hit_rate", f"{key}_offence_rate") if c in features.columns]
        if not cols:
            continue
        rate = (
            features.select(pl.max_horizontal(pl.col(c).fill_null(0.0) for c in cols))
            .to_series()
            .to_numpy()
        )
        miss *= 1.0 - np.clip(rate, 0.0, 1.0)
    return 1.0 - miss


class LogisticBaseline:
    """Logistic regression on the model's features (scikit-learn estimator contract)."""

    def __init__(
        self,
        numeric: Sequence[str],
        categorical: Sequence[str],
        C: float = 0.1,  # noqa: N803 - scikit-learn's name
        class_weight: str | None = "balanced",
        seed: int = 0,
    ) -> None:
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.C = C
        self.class_weight = class_weight
        self.seed = seed

    def _frame(self, features: pl.DataFrame) -> object:
        num = features.select(
            pl.col(c).cast(pl.Float64).fill_nan(None) for c in self.numeric
        ).to_pandas()
        cat = features.select(pl.col(c).cast(pl.String).fill_null("∅") for c in self.categorical)
        return num.join(cat.to_pandas())

    def fit(self, features: pl.DataFrame, y: np.ndarray, weight: np.ndarray | None = None) -> Self:
        numeric = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
        )
        encoder = OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5)
        transform = ColumnTransformer(
            [("num", numeric, list(self.numeric)), ("cat", encoder, list(self.categorical))]
        )
        self.pipeline_: Pipeline = make_pipeline(
            transform,
            LogisticRegression(
                C=self.C, class_weight=self.class_weight, max_iter=2000, random_state=self.seed
            ),
        )
        self.pipeline_.fit(self._frame(features), y, logisticregression__sample_weight=weight)
        return self

    def predict_proba(self, features: pl.DataFrame) -> np.ndarray:
        if not hasattr(self, "pipeline_"):
            raise NotFittedError("LogisticBaseline is not fitted")
        return np.asarray(self.pipeline_.predict_proba(self._frame(features))[:, 1])
