"""What every command needs: settings, the store, the reference data, the acting user."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import typer
from rich.console import Console

from cites_risk.features.reference import Reference, load_reference
from cites_risk.profiling.config import Settings
from cites_risk.profiling.roles import Role
from cites_risk.profiling.store import Actor, Store, StoreError

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


@dataclass
class Context:
    settings: Settings
    store: Store
    reference: Reference

    @property
    def actor(self) -> Actor:
        # The command line is run by an operator of the organisation the settings name.
        return Actor(name="cli", organisation=self.settings.organisation, role=Role.ADMIN)

    def audit(self, action: str, target: str | None = None, **detail: Any) -> None:
        """What the operator read or was refused, audited as the API audits the same."""
        self.store.audit.record(self.actor, action, target, **detail)


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


@contextmanager
def open_context(settings: Settings | None = None) -> Iterator[Context]:
    try:
        settings = settings or Settings()
    except ValueError as exc:
        raise fail(f"invalid settings: {exc}") from exc
    try:
        store = Store(settings.store_url)
    except StoreError as exc:
        raise fail(str(exc)) from exc
    try:
        yield Context(settings, store, load_reference())
    finally:
        store.close()
