"""Profile weights earned on past inspections, and the batch capacity pool."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from cites_risk.features.contract import DECLARATION, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features
from cites_risk.features.reference import Reference
from cites_risk.profiling.profile_evidence import (
    Evidence,
    from_info,
    measure,
    to_info,
    weighted,
)
from cites_risk.profiling.profiles.model import parse_profile
from cites_risk.profiling.selection import SelectionConfig, select

T0 = datetime(2024, 3, 1, tzinfo=UTC)
NIGERIA = parse_profile(
    {
        "id": "origin-ng",
        "title": "Origin Nigeria",
        "owner": "t",
        "rationale": "r",
        "source": "test",
        "criteria": {"all": [{"field": D.ORIGIN, "equals": "NG"}]},
        "weight": 0.5,
    }
)
RED = parse_profile(
    {
        "id": "red",
        "title": "Forced",
        "owner": "t",
        "rationale": "r",
        "source": "test",
        "criteria": {"all": [{"field": D.ORIGIN, "equals": "CN"}]},
        "lane": "red",
    }
)


def _frame(reference: Reference, n: int = 40) -> pl.DataFrame:
    rows = [
        {
            D.ID: f"d{i}",
            D.DECLARED_AT: T0 + timedelta(hours=i),
            D.OFFICE: "JFK",
            D.ORIGIN: "NG" if i % 2 else "VN",
            D.HS: "0106",
        }
        for i in range(n)
    ]
    decl = pl.DataFrame(rows, schema=DECLARATION.schema)
    features = build_features(decl.lazy(), History.empty(), reference).collect()
    carried = [c for c in decl.columns if c not in features.columns or c == D.ID]
    return features.join(decl.select(carried), on=D.ID)


def test_measured_precision_replaces_the_guess(reference: Reference) -> None:
    frame = _frame(reference)
    labels = np.array([1 if i % 4 == 1 else 0 for i in range(frame.height)])  # half of NG hit
    evidence = measure(frame, [NIGERIA, RED], labels)
    assert evidence["origin-ng"] == Evidence(inspected=20, found=10)
    assert evidence["red"] == Evidence(0, 0)
    (ng, red) = weighted([NIGERIA, RED], evidence, strength=20.0)
    assert ng.weight == (10 + 20 * 0.5) / (20 + 20)
    assert red == RED  # forced lanes are orders, not weights
    # No record: the analyst's weight stands.
    assert weighted([NIGERIA], {})[0].weight == 0.5
    assert from_info({"profile_evidence": to_info(evidence)}) == evidence


def test_a_useless_profile_loses_its_weight() -> None:
    evidence = {"origin-ng": Evidence(inspected=400, found=0)}
    (ng,) = weighted([NIGERIA], evidence)
    assert ng.weight is not None and ng.weight < 0.03


def test_batch_pool_caps_the_whole_batch(reference: Reference) -> None:
    frame = _frame(reference, n=100).with_columns(
        pl.Series("score", np.linspace(0, 1, 100)),
        pl.when(pl.int_range(pl.len()) % 3 == 0)
        .then(pl.lit("LAX"))
        .otherwise(pl.lit("JFK"))
        .alias(D.OFFICE),
    )
    batch = select(frame, [], SelectionConfig(capacity_share=0.05, pool="batch", random_share=0))
    assert batch.frame.get_column("selected").sum() == 5
    assert set(batch.frame.filter("selected").get_column(D.ID)) == {f"d{i}" for i in range(95, 100)}
    per_office = select(frame, [], SelectionConfig(capacity_share=0.05, random_share=0))
    # Per office and day every group gets ceil(5 %): more than the batch quota here.
    assert per_office.frame.get_column("selected").sum() > 5
