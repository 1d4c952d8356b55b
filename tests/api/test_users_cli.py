"""``cites-risk users``: a key printed once works against the API until it is revoked."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cites_risk.profiling.auth import KeyRepository
from cites_risk.profiling.cli.users_cmd import users_app
from cites_risk.profiling.config import Settings
from cites_risk.profiling.store import Store
from cites_risk.profiling.store.schema import api_keys

runner = CliRunner()


def test_add_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITES_RISK_HOME", str(tmp_path / "home"))
    added = runner.invoke(users_app, ["add", "ana", "--org", "US-FWS", "--role", "analyst"])
    assert added.exit_code == 0, added.output
    token = added.output.strip().splitlines()[-1]
    key_id = token.split(".")[0]

    store = Store(Settings(home=tmp_path / "home").store_url)
    keys = KeyRepository(store)
    actor = keys.authenticate(token)
    assert actor is not None and (actor.name, actor.organisation, actor.role) == (
        "ana",
        "US-FWS",
        "analyst",
    )
    with store.db.begin() as conn:
        (stored,) = conn.execute(api_keys.select()).all()
    assert token.split(".")[1] not in stored.key_hash  # only a salted hash is kept

    listed = runner.invoke(users_app, ["list"])
    assert key_id in listed.output and token not in listed.output
    assert runner.invoke(users_app, ["revoke", key_id]).exit_code == 0
    assert keys.authenticate(token) is None
    assert runner.invoke(users_app, ["revoke", key_id]).exit_code == 2
    bad_role = runner.invoke(users_app, ["add", "x", "--org", "O", "--role", "boss"])
    assert bad_role.exit_code != 0
    store.close()
