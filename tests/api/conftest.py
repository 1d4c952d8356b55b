"""API fixtures: a real store, a real tiny LightGBM champion (and a worse challenger) in a
real MLflow store, trained once per session on part of the LEMIS sample; keys per role."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cites_risk.api.app import create_app
from cites_risk.api.schemas import EXAMPLE_DECLARATION
from cites_risk.profiling.auth import KeyRepository
from cites_risk.profiling.config import Settings
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from cites_risk.profiling.store import Actor, Store

ROOT = Path(__file__).resolve().parents[2]
ORG = "US-FWS"
OTHER = "EU-OLAF"
ROLES = tuple(Role)
SETUP = Actor("test-setup", ORG, Role.ADMIN.value)


@dataclass(frozen=True)
class Trained:
    home: Path
    champion_ap: float


def settings_for(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "output_dir": home.parent / "output",
        "organisation": ORG,
        "api_max_batch": 20,
        "api_max_body_mb": 1,
    }
    return Settings(**(values | overrides))


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    home = tmp_path_factory.mktemp("trained") / "home"
    done = subprocess.run(
        [sys.executable, "-m", "tests.api.trained_home", str(home)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ap = float(done.stdout.strip().splitlines()[-1].removeprefix("AP="))
    return Trained(home, ap)


def copy_home(trained: Trained, folder: Path, **overrides: Any) -> Settings:
    """A private copy of the trained home (store, MLflow store, history) for one test."""
    home = folder / "home"
    shutil.copytree(trained.home, home)
    return settings_for(home, **overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(app: FastAPI) -> Iterator[tuple[str, int]]:
    """``app`` on a real uvicorn server on loopback: (its base URL, its port)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", port
    finally:
        server.should_exit = True
        thread.join(10)


def issue_keys(store: Store) -> dict[tuple[str, Role], str]:
    keys = KeyRepository(store)
    return {
        (org, role): keys.issue(f"{org}-{role.value}", org, role, SETUP).token
        for org in (ORG, OTHER)
        for role in ROLES
    }


def bearer(keys: dict[tuple[str, Role], str], role: Role, org: str = ORG) -> dict[str, str]:
    """The headers of a request made with ``org``'s ``role`` key (``issue_keys``)."""
    return {"Authorization": f"Bearer {keys[(org, role)]}"}


@dataclass
class Api:
    client: TestClient
    service: Service
    keys: dict[tuple[str, Role], str]
    settings: Settings
    app: FastAPI

    def auth(self, role: Role, org: str = ORG) -> dict[str, str]:
        return bearer(self.keys, role, org)


@pytest.fixture(scope="session")
def api(trained: Trained) -> Iterator[Api]:
    """One app over a copy of the trained home, shared by the read-mostly tests."""
    folder = Path(tempfile.mkdtemp(prefix="cites-api-"))
    settings = copy_home(trained, folder)
    service = Service.start(settings)
    keys = issue_keys(service.store)
    app = create_app(settings, service)
    with TestClient(app) as client:
        yield Api(client, service, keys, settings, app)
    service.close()
    shutil.rmtree(folder, ignore_errors=True)


def declaration(declaration_id: str = "T-1", **fields: Any) -> dict[str, Any]:
    """The documented example declaration (axolotls from Mexico), with changes."""
    return EXAMPLE_DECLARATION | {"declaration_id": declaration_id} | fields
