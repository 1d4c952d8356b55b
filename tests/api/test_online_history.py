"""The service folds its history snapshot forward; a request scores as against all of it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.contract import DECLARATION, D
from cites_risk.features.history import History
from cites_risk.profiling.history_store import history_for
from cites_risk.profiling.service import Service
from cites_risk.profiling.store import Actor
from tests.api.conftest import ORG, Api, Trained, copy_home, declaration

ACTOR = Actor("online-test", ORG, "targeting")
AFTER = "2022-03-01T09:00:00Z"  # after the history: the carried snapshot


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


def test_a_load_published_after_a_score_is_read_by_the_next(
    trained: Trained, tmp_path: Path
) -> None:
    """The snapshot is kept between requests: a load published meanwhile (an ingest of
    the day's export, as a generation of its own) must be noticed."""
    service = Service.start(copy_home(trained, tmp_path))
    try:
        engine = service.engine()
        extras = engine.model.extras
        service.score(ACTOR, [declaration("ONLINE-A", declared_at=AFTER)])

        def frame(row: dict[str, object]) -> pl.DataFrame:
            return service._declarations(
                service._validated(DECLARATION, [row], dict(extras)), extras
            )

        # An earlier shipment of the same importer, lodged by a load published now.
        loaded = frame(declaration("LOADED-1", declared_at="2022-02-01T09:00:00Z"))
        with service.declarations.loading("late-export") as loading:
            loading.stage(loaded, 0)
            loading.publish()
        row = declaration("ONLINE-B", declared_at=AFTER)
        [result] = service.score(ACTOR, [row])
        asked = frame(row)

        full = history_for(service.store, service.declarations, ORG)
        lodged = full.declarations.collect()
        assert "LOADED-1" in lodged.get_column(D.ID).to_list()

        def scored(declarations: pl.DataFrame) -> float:
            history = History(
                pl.concat([declarations.lazy(), asked.lazy()], how="diagonal_relaxed"),
                full.offences,
                full.inspections,
            )
            return float(engine.score(asked, history).get_column("score")[0])

        expected = scored(lodged)
        assert scored(lodged.filter(pl.col(D.ID) != "LOADED-1")) != expected  # it counts
        assert result.score == pytest.approx(expected, rel=1e-12, abs=1e-15)
    finally:
        service.close()
