"""The service folds its history snapshot forward; a request scores as against all of it."""

from __future__ import annotations

import polars as pl
import pytest

from cites_risk.features.contract import DECLARATION, D
from cites_risk.features.history import History
from cites_risk.profiling.history_store import history_for
from cites_risk.profiling.store import Actor
from tests.api.conftest import ORG, Api, declaration

ACTOR = Actor("online-test", ORG, "targeting")


@pytest.mark.parametrize(
    ("case", "declared_at", "carried"),
    [
        ("new, after the history", "2022-03-01T09:00:00Z", True),
        ("an id already lodged, re-scored later", "2022-03-01T09:00:00Z", False),
        ("new, inside the history", "2019-05-02T09:00:00Z", False),
    ],
)
def test_online_score_equals_the_score_against_the_full_history(
    api: Api, case: str, declared_at: str, carried: bool
) -> None:
    service = api.service
    engine = service.engine()
    full = history_for(service.store, service.declarations, ORG)
    lodged = full.declarations.collect()
    ident = lodged.get_column(D.ID)[0] if "already" in case else "ONLINE-1"
    # The example's taxon, origin and office all have a history in the LEMIS sample.
    row = declaration(ident, declared_at=declared_at)

    [result] = service.score(ACTOR, [row])

    extras = engine.model.extras
    frame = service._declarations(service._validated(DECLARATION, [row], dict(extras)), extras)
    snapshot = service._snapshot(ORG, engine.model.extras, service.store.stamps())
    assert (snapshot.for_request(frame) is snapshot.carried) == carried, case
    whole = History(
        pl.concat([lodged.lazy(), frame.lazy()], how="diagonal_relaxed").unique(
            subset=[D.ID], keep="last", maintain_order=True
        ),
        full.offences,
        full.inspections,
    )
    expected = engine.score(frame, whole)
    assert result.score == pytest.approx(expected.get_column("score")[0], rel=1e-12, abs=1e-15)
    assert result.model_reasons == expected.get_column("reasons")[0].to_list()
