"""Roles of the people and systems that use the engine, and what each may see."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    INSPECTOR = "inspector"
    TARGETING = "targeting"
    ANALYST = "analyst"
    ADMIN = "admin"


class Confidentiality(StrEnum):
    """How widely a profile's rationale may be shown."""

    PUBLIC = "public"
    RESTRICTED = "restricted"
    SECRET = "secret"


#: The lowest role that may read a rationale at each level. A hidden rationale is replaced
#: by a neutral sentence, so inspectors still know a profile asked for the check.
RATIONALE_VISIBLE_FROM: dict[Confidentiality, Role] = {
    Confidentiality.PUBLIC: Role.INSPECTOR,
    Confidentiality.RESTRICTED: Role.TARGETING,
    Confidentiality.SECRET: Role.ANALYST,
}
_RANK = {Role.INSPECTOR: 0, Role.TARGETING: 1, Role.ANALYST: 2, Role.ADMIN: 3}


def at_least(role: Role, minimum: Role) -> bool:
    return _RANK[role] >= _RANK[minimum]


def may_read_rationale(role: Role, level: Confidentiality) -> bool:
    return at_least(role, RATIONALE_VISIBLE_FROM[level])
