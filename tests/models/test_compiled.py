"""Compiled trees: same margins as LightGBM, cached by model, a fallback where unavailable."""

from __future__ import annotations

import logging
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from cites_risk.models.compiled import (
    CompilationUnavailableError,
    CompiledPredictor,
    LightGBMPredictor,
    cache_dir_for,
    compile_booster,
    prune_cache,
)
from cites_risk.models.risk_model import RiskModel

pytest.importorskip("lleaves")


def _booster(seed: int, trees: int = 20) -> tuple[lgb.Booster, np.ndarray]:
    """A real booster on numeric + categorical columns with NaNs, and data to predict."""
    rng = np.random.default_rng(seed)
    n = 4_000
    x = np.column_stack(
        [
            rng.normal(size=n),
            rng.integers(0, 30, size=n).astype(float),  # categorical codes
            rng.exponential(size=n),
            rng.integers(0, 5, size=n).astype(float),  # categorical, few levels
        ]
    )
    x[rng.random(n) < 0.1, 0] = np.nan
    x[rng.random(n) < 0.1, 1] = np.nan
    x[rng.random(n) < 0.05, 2] = np.nan
    logit = x[:, 0] * 0.8 + np.isin(x[:, 1], [3, 7, 11]) * 2.0 - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(float)
    booster = lgb.train(
        {
            "objective": "binary",
            "num_leaves": 15,
            "min_data_in_leaf": 10,
            "max_cat_to_onehot": 4,
            "verbose": -1,
            "seed": seed,
            "num_threads": 1,
        },
        lgb.Dataset(x, y, categorical_feature=[1, 3], feature_name=["a", "b", "c", "d"]),
        num_boost_round=trees,
    )
    test = np.column_stack(
        [
            rng.normal(size=3_000),
            rng.integers(-2, 40, size=3_000).astype(float),  # unseen and negative codes too
            rng.exponential(size=3_000),
            rng.integers(0, 7, size=3_000).astype(float),
        ]
    )
    test[rng.random(3_000) < 0.15] = np.nan
    return booster, test


def test_compiled_margins_equal_lightgbm(tmp_path: Path) -> None:
    booster, x = _booster(0)
    predictor = CompiledPredictor.for_booster(booster, tmp_path, fallback=False)
    assert predictor.backend == "lleaves"
    expected = booster.predict(x, raw_score=True)
    np.testing.assert_allclose(predictor.margin(x), expected, rtol=0, atol=1e-9)
    # Few rows (single thread) and many threads give the same answer.
    np.testing.assert_allclose(predictor.margin(x[:5]), expected[:5], rtol=0, atol=1e-9)
    many = CompiledPredictor.for_booster(booster, tmp_path, threads=4, fallback=False)
    big = np.tile(x, (3, 1))
    np.testing.assert_allclose(many.margin(big), np.tile(expected, 3), rtol=0, atol=1e-9)


def test_cache_is_reused_and_keyed_by_the_model(tmp_path: Path) -> None:
    first, x = _booster(0)
    p1 = compile_booster(first, tmp_path)
    artefacts = sorted(tmp_path.glob("*.o"))
    assert artefacts == [p1.artefact]
    stamp = p1.artefact.stat().st_mtime_ns
    again = compile_booster(first, tmp_path)
    assert again.artefact == p1.artefact and p1.artefact.stat().st_mtime_ns == stamp
    np.testing.assert_allclose(again.margin(x), first.predict(x, raw_score=True), atol=1e-9)

    # A retrained model (other seed) never uses the first model's artefact.
    second, _ = _booster(1)
    p2 = compile_booster(second, tmp_path)
    assert p2.artefact != p1.artefact
    np.testing.assert_allclose(p2.margin(x), second.predict(x, raw_score=True), atol=1e-9)
    assert not np.allclose(p2.margin(x), p1.margin(x))
    assert len(list(tmp_path.glob("*.o"))) == 2
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind

    removed = prune_cache(tmp_path, keep={p2.artefact.name.removesuffix(".lleaves.o")})
    assert removed == [p1.artefact] and p2.artefact.exists()


def test_risk_model_predictor_matches_its_margin(tmp_path: Path, lemis_model: RiskModel) -> None:
    """On the real LEMIS model: compiled margin of the model matrix == RiskModel.margin."""

    folder = lemis_model.save(tmp_path / "model")
    model = RiskModel.load(folder)
    predictor = CompiledPredictor.for_model(model, cache_dir_for(folder), fallback=False)
    rng = np.random.default_rng(0)
    n_cols = len(model.columns)
    x = rng.normal(size=(500, n_cols))
    x[rng.random(x.shape) < 0.2] = np.nan
    np.testing.assert_allclose(
        predictor.margin(x), model.booster.predict(x, raw_score=True), rtol=0, atol=1e-9
    )


def test_falls_back_to_lightgbm_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    booster, x = _booster(0)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # a cache folder that cannot be created
    with caplog.at_level(logging.WARNING, logger="cites_risk.models.compiled"):
        p = CompiledPredictor.for_booster(booster, blocked / "cache")
        q = CompiledPredictor.for_booster(booster, blocked / "cache")
    assert isinstance(p, LightGBMPredictor) and isinstance(q, LightGBMPredictor)
    assert p.backend == "lightgbm"
    np.testing.assert_array_equal(p.margin(x), booster.predict(x, raw_score=True))
    assert len([r for r in caplog.records if "could not compile" in r.getMessage()]) == 1
    with pytest.raises(CompilationUnavailableError):
        CompiledPredictor.for_booster(booster, blocked / "cache", fallback=False)


def test_wrong_width_is_refused(tmp_path: Path) -> None:
    booster, x = _booster(0)
    predictor = compile_booster(booster, tmp_path)
    with pytest.raises(ValueError, match="4 columns"):
        predictor.margin(x[:, :3])
    assert predictor.margin(x[:0]).shape == (0,)
