"""Shared fixtures: real reference data, the real LEMIS sample, temp stores and settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from cites_risk.features.reference import Reference, load_reference
from cites_risk.models.risk_model import RiskModel
from cites_risk.profiling.config import Settings
from cites_risk.profiling.store import Store


@dataclass(frozen=True)
class LemisData:
    declarations: pl.DataFrame
    inspections: pl.DataFrame
    extras: dict[str, str]


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def reference() -> Reference:
    return load_reference()


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", output_dir=tmp_path / "output", organisation="US-FWS")


@pytest.fixture()
def store(settings: Settings) -> Store:
    s = Store(settings.store_url)
    yield s  # type: ignore[misc]
    s.close()


def shared(path: str) -> Path:
    """A file of ../shared/data; tests that need one skip where it is absent."""
    p = SHARED / path
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


@pytest.fixture(scope="session")
def lemis() -> LemisData:
    """The bundled LEMIS sample as contract frames (declarations, inspections)."""
    from cites_risk.profiling.sources import LEMIS_SAMPLE, load_mapping, load_records

    ref = load_reference()
    mapping = load_mapping("lemis")
    decl = load_records(LEMIS_SAMPLE, mapping, "declaration", ref).accepted
    insp = load_records(LEMIS_SAMPLE, mapping, "inspection", ref).accepted
    return LemisData(decl, insp, mapping.extra_kinds)


@pytest.fixture(scope="session")
def lemis_model(lemis: LemisData) -> RiskModel:
    """A real LightGBM risk model trained on LEMIS 2016-2019 (fast settings)."""
    from datetime import UTC, datetime

    from cites_risk.features.contract import OFFENCE
    from cites_risk.features.history import History
    from cites_risk.features.pipeline import build_features
    from cites_risk.models.training import Split, label_frame, train_and_evaluate

    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    features = build_features(
        lemis.declarations.lazy(), history, load_reference(), lemis.extras
    ).collect()
    labelled = label_frame(features, lemis.inspections)
    split = Split(datetime(2019, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC))
    result = train_and_evaluate(
        labelled,
        split,
        extras=lemis.extras,
        refit=False,
        params={"learning_rate": 0.1, "num_leaves": 15},
    )
    return result.model


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    from tests.pg import postgres_cluster

    with postgres_cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, postgres_server: str | None) -> str:
    """A fresh, empty database of each kind the store supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if postgres_server is None:
        pytest.skip("PostgreSQL server binaries not available on this machine")
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return postgres_server.replace("@/postgres?", f"@/{name}?")


@pytest.fixture()
def any_store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.close()
