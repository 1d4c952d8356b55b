"""Real data for the model tests: the LEMIS sample 2017-2020 with point-in-time features."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from cites_risk.features.contract import OFFENCE, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features
from cites_risk.features.reference import Reference
from cites_risk.models.training import Split, TrainResult, label_frame, train_and_evaluate
from cites_risk.profiling.sources import LEMIS_SAMPLE, load_mapping, load_records

#: Small and quick: few rounds to find, so tests train in a second or two.
FAST = {"learning_rate": 0.15, "num_leaves": 15}


def utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@pytest.fixture(scope="session")
def lemis_frames(reference: Reference) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]:
    """(features, inspections, extras) of LEMIS declarations from 2017 to mid-2020."""
    mapping = load_mapping("lemis")
    decl = load_records(LEMIS_SAMPLE, mapping, "declaration", reference).accepted
    insp = load_records(LEMIS_SAMPLE, mapping, "inspection", reference).accepted
    decl = decl.filter(pl.col(D.DECLARED_AT).is_between(utc("2017-01-01"), utc("2020-07-01")))
    history = History(decl.lazy(), pl.DataFrame(schema=OFFENCE.schema).lazy(), insp.lazy())
    features = build_features(decl.lazy(), history, reference, mapping.extra_kinds).collect()
    return features, insp, mapping.extra_kinds


@pytest.fixture(scope="session")
def labelled(lemis_frames: tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]) -> pl.DataFrame:
    return label_frame(lemis_frames[0], lemis_frames[1])


@pytest.fixture(scope="session")
def extras(lemis_frames: tuple[pl.DataFrame, pl.DataFrame, dict[str, str]]) -> dict[str, str]:
    return lemis_frames[2]


SPLIT = Split(utc("2019-01-01"), utc("2020-01-01"), utc("2020-07-01"))


@pytest.fixture(scope="session")
def trained(labelled: pl.DataFrame, extras: dict[str, str]) -> TrainResult:
    """One real model (train, early stop and calibrate, refit) shared by read-only tests."""
    return train_and_evaluate(labelled, SPLIT, seed=0, extras=extras, params=FAST, max_rounds=80)
