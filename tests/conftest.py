"""Shared fixtures: real reference data, the real LEMIS sample, temp stores and settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cites_risk.features.reference import Reference, load_reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.store import Store

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
