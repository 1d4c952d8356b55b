"""The risk model: fitted preprocessing + LightGBM + calibration, saved and loaded as one.

Everything the scorer needs to reproduce training travels in the model folder: the
category vocabularies, the unit-value bands, the calibrator, the feature-set name and
version and the exact column order. Loading refuses a model built for other features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import joblib
import lightgbm as lgb
import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression

from cites_risk.features.pipeline import (
    CATEGORICAL,
    EXTRA_HISTORY_STATS,
    FEATURE_SET,
    FEATURE_VERSION,
    MODEL_COLUMNS,
    extra_history_keys,
)
from cites_risk.models.early_stopping import PATIENCE, SmoothedEarlyStopping
from cites_risk.models.preprocess import CategoryCodes, UnitValueBands, to_matrix

if TYPE_CHECKING:
    from cites_risk.models.treeshap import Contributions

BOOSTER_FILE = "booster.txt"
STATE_FILE = "state.joblib"
META_FILE = "model.json"


#: Fewest rows for which a prediction uses more than the calling thread. Below it, starting
#: threads costs more than they save. Above all, libgomp keeps an OpenMP team alive with the
#: thread that started it: once a process holds more OpenMP threads than cores (an API
#: process whose scoring threads each predicted with 2), every team in it sleeps at its
#: barriers instead of spinning, and training in that process ran 2x slower (LightGBM, 300
#: rounds on 20,000 rows: 3.5 s, 7.1 s with one idle thread that had predicted 100 rows
#: with 2 threads, 3.4 s when it had used 1).
THREADED_ROWS = 2_000


def prediction_threads(rows: int, most: int) -> int:
    """Threads for predicting ``rows`` rows with at most ``most``."""
    return most if rows >= THREADED_ROWS else 1


class ModelMismatchError(RuntimeError):
    """The model was built for another feature set or version than this code produces."""


DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.03,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # Strong smoothing of categorical splits: a few dozen positives, many rare levels.
    "cat_smooth": 50.0,
    "min_data_per_group": 50,
    "cat_l2": 10.0,
    "max_cat_to_onehot": 8,
    "verbose": -1,
    "num_threads": 2,
}


@dataclass
class Calibrator:
    """Platt scaling on the raw margin, fitted on validation rows.

    Few positives (a few dozen refusals) make isotonic regression jumpy; two parameters
    are what the validation data can support.
    """

    coef: float = 1.0
    intercept: float = 0.0

    def fit(self, margin: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> Self:
        if len(np.unique(y)) < 2:
            return self
        lr = LogisticRegression(C=1e4, max_iter=1000)
        lr.fit(margin.reshape(-1, 1), y, sample_weight=weight)
        self.coef = float(lr.coef_[0, 0])
        self.intercept = float(lr.intercept_[0])
        return self

    def __call__(self, margin: np.ndarray) -> np.ndarray:
        z = np.clip(self.coef * margin + self.intercept, -50, 50)
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class RiskModel:
    """Preprocessing + booster + calibrator. Train with :func:`fit_risk_model`."""

    booster: lgb.Booster
    categories: CategoryCodes
    bands: UnitValueBands
    calibrator: Calibrator
    columns: list[str]
    extras: dict[str, str] = field(default_factory=dict)
    feature_set: str = FEATURE_SET
    feature_version: str = FEATURE_VERSION
    info: dict[str, Any] = field(default_factory=dict)
    _shap: Contributions | None = field(default=None, init=False, repr=False, compare=False)

    def matrix(self, features: pl.DataFrame, given: np.ndarray | None = None) -> np.ndarray:
        """The model's input matrix of ``features``; ``given`` when the caller built it
        already (prediction and explanation of the same rows share one)."""
        if given is not None:
            return given
        have = set(features.columns)
        missing = [c for c in self.input_columns if c not in have]
        if missing:
            raise ModelMismatchError(f"features lack model columns: {', '.join(missing)}")
        prepared = self.categories.transform(self.bands.transform(features))
        return to_matrix(prepared, self.columns)

    @property
    def input_columns(self) -> list[str]:
        banded = set(UnitValueBands.output_columns())
        return [c for c in self.columns if c not in banded]

    def margin(self, features: pl.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """Raw scores (``matrix``: see ``matrix``)."""
        x = self.matrix(features, matrix)
        threads = prediction_threads(x.shape[0], DEFAULT_PARAMS["num_threads"])
        return np.asarray(self.booster.predict(x, raw_score=True, num_threads=threads))

    def predict_proba(self, features: pl.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """Calibrated probability that inspecting the declaration finds an offence."""
        if features.height == 0:
            return np.zeros(0)
        return self.calibrator(self.margin(features, matrix))

    def contributions(self, features: pl.DataFrame, matrix: np.ndarray | None = None) -> np.ndarray:
        """SHAP values on the margin: rows x (columns + bias), LightGBM's ``pred_contrib``
        computed by :mod:`cites_risk.models.treeshap` where it applies."""
        if features.height == 0:
            return np.zeros((0, len(self.columns) + 1))
        return self.explainer().contributions(self.matrix(features, matrix))

    def explainer(self, *, warm: bool = False, threads: int | None = None) -> Contributions:
        """What computes :meth:`contributions`, built on first use (``threads``: its budget,
        default every usable core; the first call decides). ``warm`` loads its compiled
        code now, so that a service pays for it before its first request."""
        if self._shap is None:
            from cites_risk.models.treeshap import for_booster  # numba loads on first use

            self._shap = for_booster(self.booster, threads)
        if warm:
            self._shap.warm(len(self.columns))
        return self._shap

    def __getstate__(self) -> dict[str, Any]:
        # The explainer is rebuilt where the model is unpickled: numba may be missing there,
        # and the thread budget is that process's.
        return {**self.__dict__, "_shap": None}

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / BOOSTER_FILE))
        joblib.dump(
            {"categories": self.categories, "bands": self.bands, "calibrator": self.calibrator},
            folder / STATE_FILE,
        )
        meta = {
            "feature_set": self.feature_set,
            "feature_version": self.feature_version,
            "columns": self.columns,
            "extras": self.extras,
            "info": self.info,
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: Path, *, check: bool = True) -> RiskModel:
        meta = json.loads((folder / META_FILE).read_text())
        if check and (meta["feature_set"], meta["feature_version"]) != (
            FEATURE_SET,
            FEATURE_VERSION,
        ):
            raise ModelMismatchError(
                f"model was trained on features {meta['feature_set']} v{meta['feature_version']}"
                f"; this engine builds {FEATURE_SET} v{FEATURE_VERSION}: retrain the model"
            )
        state = joblib.load(folder / STATE_FILE)
        booster = lgb.Booster(model_file=str(folder / BOOSTER_FILE))
        if check and booster.feature_name() != meta["columns"]:
            raise ModelMismatchError("booster columns differ from the saved column order")
        return cls(
            booster=booster,
            categories=state["categories"],
            bands=state["bands"],
            calibrator=state["calibrator"],
            columns=list(meta["columns"]),
            extras=dict(meta.get("extras", {})),
            feature_set=meta["feature_set"],
            feature_version=meta["feature_version"],
            info=dict(meta.get("info", {})),
        )


def model_columns(extras: dict[str, str] | None = None) -> list[str]:
    """Model inputs: the feature set's columns, the learned deviations, the extras."""
    history = [f"{n}_{s}" for n in extra_history_keys(extras) for s in EXTRA_HISTORY_STATS]
    return [*MODEL_COLUMNS, *UnitValueBands.output_columns(), *(extras or {}), *history]


def categorical_columns(extras: dict[str, str] | None = None) -> list[str]:
    return [*CATEGORICAL, *(n for n, k in (extras or {}).items() if k == "category")]


@dataclass(frozen=True)
class TrainingData:
    features: pl.DataFrame
    label: np.ndarray
    weight: np.ndarray | None = None


def fit_risk_model(
    train: TrainingData,
    valid: TrainingData,
    *,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    extras: dict[str, str] | None = None,
    num_boost_round: int = 2000,
    early_stopping: int = PATIENCE,
    exclude: Sequence[str] = (),
) -> RiskModel:
    """Fit preprocessing on train, boost with early stopping on valid, calibrate on valid."""
    extras = extras or {}
    cats = [c for c in categorical_columns(extras) if c not in exclude]
    columns = [c for c in model_columns(extras) if c not in exclude]
    categories = CategoryCodes(cats).fit(train.features)
    bands = UnitValueBands().fit(train.features)

    def prepare(frame: pl.DataFrame) -> np.ndarray:
        return to_matrix(categories.transform(bands.transform(frame)), columns)

    x_train, x_valid = prepare(train.features), prepare(valid.features)
    positives = max(1.0, float(train.label.sum()))
    negatives = float(len(train.label)) - positives
    merged = {**DEFAULT_PARAMS, **(params or {})}
    # Rare positives: up-weight them, but by the square root so probabilities stay sane
    # before calibration and the trees still see the negatives' structure.
    merged.setdefault("scale_pos_weight", max(1.0, (negatives / positives) ** 0.5))
    merged.update(
        seed=seed,
        bagging_seed=seed,
        feature_fraction_seed=seed,
        data_random_seed=seed,
        deterministic=True,
        force_row_wise=True,
    )
    dtrain = lgb.Dataset(
        x_train,
        train.label,
        weight=train.weight,
        feature_name=columns,
        categorical_feature=cats,
        free_raw_data=False,
    )
    dvalid = lgb.Dataset(
        x_valid, valid.label, weight=valid.weight, reference=dtrain, categorical_feature=cats
    )
    callbacks: list[Any] = (
        [SmoothedEarlyStopping(patience=early_stopping)] if early_stopping > 0 else []
    )
    booster = lgb.train(
        {**merged, "metric": ["average_precision", "auc"]},
        dtrain,
        num_boost_round=num_boost_round,
        valid_sets=[dvalid],
        callbacks=callbacks,
    )
    best = booster.best_iteration or None
    margin = np.asarray(booster.predict(x_valid, raw_score=True, num_iteration=best))
    calibrator = Calibrator().fit(margin, valid.label, valid.weight)
    # Keep only the trees early stopping chose, so saved model == evaluated model.
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    return RiskModel(
        booster=booster,
        categories=categories,
        bands=bands,
        calibrator=calibrator,
        columns=columns,
        extras=dict(extras),
        info={"best_iteration": booster.num_trees(), "seed": seed, "params": merged},
    )
