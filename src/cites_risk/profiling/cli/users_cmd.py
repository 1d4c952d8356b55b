"""``cites-risk users ...``: issue, list and revoke API keys."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cites_risk.profiling.auth import KeyRepository
from cites_risk.profiling.cli.context import console, fail, open_context
from cites_risk.profiling.roles import Role

users_app = typer.Typer(help="API keys of people and systems: add, list, revoke.")


@users_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Who holds the key (person or system).")],
    org: Annotated[str, typer.Option("--org", help="Organisation the key acts for.")],
    role: Annotated[Role, typer.Option("--role", help="What the key may do.")],
) -> None:
    """Issue a key and print it once: only its hash is stored."""
    with open_context() as ctx:
        try:
            issued = KeyRepository(ctx.store).issue(name, org, role, ctx.actor)
        except ValueError as exc:
            raise fail(str(exc)) from exc
    console.print(f"key id {issued.key.key_id} for {name} ({org}, {role.value})")
    console.print("the key (shown once; store it now):")
    # Plain print: rich would wrap or style a long token.
    print(issued.token)


@users_app.command("list")
def list_keys() -> None:
    """Every key: id, holder, organisation, role, created and revoked."""
    with open_context() as ctx:
        keys = KeyRepository(ctx.store).list()
        ctx.audit("key.list", None, rows=len(keys))
    table = Table("key id", "name", "organisation", "role", "created", "revoked")
    for k in keys:
        table.add_row(
            k.key_id,
            k.name,
            k.organisation,
            k.role.value,
            k.created_at.strftime("%Y-%m-%d %H:%M"),
            k.revoked_at.strftime("%Y-%m-%d %H:%M") if k.revoked_at else "",
        )
    console.print(table)


@users_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id shown by add / list.")]) -> None:
    """Revoke a key at once; requests with it fail from now on."""
    with open_context() as ctx:
        if not KeyRepository(ctx.store).revoke(key_id, ctx.actor):
            raise fail(f"no active key {key_id!r}")
    console.print(f"revoked {key_id}")
