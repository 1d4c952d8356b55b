"""Risk profiles as validated data: what an analyst writes in YAML or sends to the API.

A profile is a boolean test over one declaration (its contract columns, its features and
the model's ``score``) plus what a hit does: add ``weight`` to the risk and/or force a
``lane``. Criteria are nested ``all`` / ``any`` groups of conditions; each condition names
one column and one operator. Everything is checked here, at load time, so that a typo in a
field name is a clear error for the analyst instead of a profile that silently never hits.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import polars as pl
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from cites_risk.features.adapters import EXTRA_PREFIX
from cites_risk.features.contract import DECLARATION
from cites_risk.features.pipeline import feature_schema
from cites_risk.profiling.roles import Confidentiality

#: The calibrated model probability joined onto the frame profiles are evaluated on.
SCORE = "score"
APPENDIX_COLUMN = "sp_appendix"


class Lane(StrEnum):
    RED = "red"  # physical inspection
    YELLOW = "yellow"  # documentary check
    GREEN = "green"  # release


class EntityKind(StrEnum):
    """Watch-listed parties; each is also the declaration column that names it."""

    IMPORTER = "importer"
    EXPORTER = "exporter"
    DECLARANT = "declarant"


def known_columns() -> dict[str, pl.DataType]:
    """Columns a profile may test: the declaration contract, the features and ``score``."""
    columns: dict[str, pl.DataType] = dict(DECLARATION.schema.items())
    columns.update(feature_schema().items())
    columns[SCORE] = pl.Float64()
    return columns


KNOWN_COLUMNS = known_columns()
OPERATORS = ("equals", "in", "hs_prefix", "regex", "range", "watchlist", "appendix", "is_null")
_CONDITION_KEYS = {*OPERATORS, "field", "negate"}
_DEFAULT_FIELD = {
    "hs_prefix": "hs_code",
    "regex": "goods_description",
    "appendix": APPENDIX_COLUMN,
}
_APPENDIX_NAMES = {"I": 1, "II": 2, "III": 3}

Scalar = str | int | float | bool


class ProfileError(ValueError):
    """A profile or a profile file is invalid; the message names the profile and field."""


def _check_field(name: str) -> None:
    if name in KNOWN_COLUMNS or name.startswith(EXTRA_PREFIX):
        return
    close = difflib.get_close_matches(name, list(KNOWN_COLUMNS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown field {name!r}{hint}")


def check_regex(pattern: str) -> None:
    """Reject a pattern the evaluator (polars, Rust regex syntax) cannot compile."""
    try:
        pl.Series([""], dtype=pl.String).str.contains(pattern)
    except pl.exceptions.PolarsError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        # polars puts the reason on the "error: ..." line, after an echo of the pattern.
        reason = next((x for x in lines if x.startswith("error:")), lines[0] if lines else "")
        raise ValueError(f"bad regex {pattern!r}: {reason.removeprefix('error: ')}") from None


class Range(BaseModel):
    """Inclusive numeric bounds; either may be left open."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is above max {self.max}")
        return self


class Condition(BaseModel):
    """One test on one column: ``{field: country_export, in: [NG, CM]}``.

    ``field`` may be left out for ``hs_prefix`` (hs_code), ``regex`` (goods_description),
    ``appendix`` (sp_appendix) and ``watchlist`` (the column named like the list).
    A null value never satisfies an operator; ``negate`` then makes it satisfy the negation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    field: str | None = None
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in", min_length=1)
    hs_prefix: list[str] | None = Field(default=None, min_length=1)
    regex: str | None = None
    range: Range | None = None
    watchlist: EntityKind | None = None
    appendix: list[int] | None = Field(default=None, min_length=1)
    is_null: bool | None = None
    negate: bool = False

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # pydantic's own message ("extra inputs are not permitted") does not tell an analyst
        # which operators exist, so unknown keys are reported here first.
        if isinstance(data, dict):
            unknown = [k for k in data if k not in _CONDITION_KEYS]
            if unknown:
                raise ValueError(
                    f"unknown operator {unknown[0]!r}"
                    + (f" on field {data['field']!r}" if "field" in data else "")
                    + f"; expected one of {', '.join(OPERATORS)}"
                )
            ops = [k for k in data if k in OPERATORS]
            if len(ops) != 1:
                found = ", ".join(ops) or "none"
                raise ValueError(f"a condition needs exactly one operator (found {found})")
        return data

    @field_validator("hs_prefix", mode="before")
    @classmethod
    def _prefixes(cls, value: Any) -> Any:
        values = [value] if isinstance(value, str | int) else value
        out = [str(v).replace(".", "").strip() for v in values]
        bad = [v for v in out if not v.isdigit()]
        if bad:
            raise ValueError(f"hs_prefix must be digits, got {bad[0]!r}")
        return out

    @field_validator("appendix", mode="before")
    @classmethod
    def _appendices(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        out = []
        for v in values:
            rank = _APPENDIX_NAMES.get(v.strip().upper()) if isinstance(v, str) else v
            if rank not in (1, 2, 3):
                raise ValueError(f"appendix must be I, II, III (or 1, 2, 3), got {v!r}")
            out.append(rank)
        return out

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            check_regex(value)
        return value

    @model_validator(mode="after")
    def _field_fits_operator(self) -> Self:
        column = self.column
        _check_field(column)
        if self.appendix is not None and column != APPENDIX_COLUMN:
            raise ValueError(f"appendix tests {APPENDIX_COLUMN}, not {column!r}")
        dtype = KNOWN_COLUMNS.get(column)
        if dtype is None:  # an administration's x_ column: checked against the frame later
            return self
        if (self.regex is not None or self.hs_prefix is not None) and dtype != pl.String:
            raise ValueError(f"{self.operator} needs a text field; {column!r} is {dtype}")
        if self.range is not None and not dtype.is_numeric():
            raise ValueError(f"range needs a numeric field; {column!r} is {dtype}")
        if self.watchlist is not None and dtype != pl.String:
            raise ValueError(f"watchlist needs a name field; {column!r} is {dtype}")
        return self

    @property
    def operator(self) -> str:
        return next(op for op in OPERATORS if getattr(self, _attr(op)) is not None)

    @property
    def column(self) -> str:
        """The column tested: ``field`` or the operator's default."""
        if self.field is not None:
            return self.field
        if self.watchlist is not None:
            return self.watchlist.value
        default = _DEFAULT_FIELD.get(self.operator)
        if default is None:
            raise ValueError(f"{self.operator} needs a field")
        return default


def _attr(op: str) -> str:
    return "in_" if op == "in" else op


def _node_kind(value: Any) -> str:
    if isinstance(value, Group):
        return "group"
    if isinstance(value, dict) and ("all" in value or "any" in value):
        return "group"
    return "condition"


Node = Annotated[
    Annotated["Group", Tag("group")] | Annotated[Condition, Tag("condition")],
    Discriminator(_node_kind),
]


class Group(BaseModel):
    """``{all: [...]}`` (every item holds) or ``{any: [...]}`` (at least one holds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: list[Node] | None = Field(default=None, min_length=1)
    any: list[Node] | None = Field(default=None, min_length=1)
    negate: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.all is None) == (self.any is None):
            raise ValueError("a group has exactly one of 'all' or 'any'")
        return self

    @property
    def items(self) -> list[Group | Condition]:
        return list(self.all if self.all is not None else self.any or [])

    def conditions(self) -> list[Condition]:
        """Every condition, however deeply nested."""
        out: list[Condition] = []
        for item in self.items:
            out.extend(item.conditions() if isinstance(item, Group) else [item])
        return out


Group.model_rebuild()


class Profile(BaseModel):
    """A rule profile: criteria, effect, validity, owner and the text an inspector sees."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    title: str = Field(min_length=1, max_length=200)
    owner: str = Field(min_length=1)
    rationale: str = Field(min_length=1, description="what the inspector is told and asked")
    source: str = Field(min_length=1, description="where the indicator comes from")
    criteria: Group
    #: Evidence strength in [0, 1): final risk = 1 - (1 - p) * prod(1 - weight).
    weight: float | None = Field(default=None, ge=0.0, lt=1.0)
    lane: Literal[Lane.RED, Lane.YELLOW] | None = None
    #: First and last day (UTC, inclusive) on which declarations can hit.
    valid_from: date | None = None
    valid_to: date | None = None
    enabled: bool = True
    confidentiality: Confidentiality = Confidentiality.PUBLIC

    @model_validator(mode="after")
    def _effect_and_dates(self) -> Self:
        if self.weight is None and self.lane is None:
            raise ValueError("a profile needs a weight, a lane or both")
        if self.valid_from and self.valid_to and self.valid_from > self.valid_to:
            raise ValueError(f"valid_from {self.valid_from} is after valid_to {self.valid_to}")
        return self

    @property
    def columns(self) -> list[str]:
        return sorted({c.column for c in self.criteria.conditions()})

    @property
    def watchlists(self) -> list[EntityKind]:
        return sorted({c.watchlist for c in self.criteria.conditions() if c.watchlist})

    def body(self) -> dict[str, Any]:
        """Canonical JSON form: what the store keeps and versions are compared on."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _format_errors(exc: ValidationError, label: str) -> str:
    lines = []
    for err in exc.errors():
        # Drop pydantic's union tags from the location: the analyst wrote criteria.all.0.
        loc = ".".join(str(p) for p in err["loc"] if p not in ("group", "condition"))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{label}: {loc + ': ' if loc else ''}{msg}")
    return "\n".join(lines)


def parse_profile(data: Any, label: str | None = None) -> Profile:
    """Validate one profile; errors become one :class:`ProfileError` naming each field."""
    name = label or (f"profile {data.get('id')!r}" if isinstance(data, dict) else "profile")
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_format_errors(exc, name)) from None


def parse_profiles(document: Any) -> list[Profile]:
    """Profiles of a YAML document: ``{profiles: [...]}`` or a bare list."""
    items = document.get("profiles") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise ProfileError("a profile file holds a list under 'profiles'")
    profiles: list[Profile] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        label = f"profiles[{i}]" + (f" ({item.get('id')!r})" if isinstance(item, dict) else "")
        try:
            profiles.append(parse_profile(item, label))
        except ProfileError as exc:
            errors.append(str(exc))
    ids = [p.id for p in profiles]
    errors += [f"duplicate profile id {i!r}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if errors:
        raise ProfileError("\n".join(errors))
    return profiles


def load_profiles_yaml(source: str | Path) -> list[Profile]:
    """Profiles from a YAML file path or YAML text."""
    text = source.read_text(encoding="utf-8") if isinstance(source, Path) else source
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(f"not valid YAML: {exc}") from None
    return parse_profiles(document)


def dump_profiles_yaml(profiles: Sequence[Profile]) -> str:
    return yaml.safe_dump(
        {"profiles": [p.body() for p in profiles]}, sort_keys=False, allow_unicode=True
    )


STARTER_PATH = Path(__file__).with_name("starter.yaml")


def starter_profiles() -> list[Profile]:
    """The packaged starter library built from public red-flag indicators."""
    return load_profiles_yaml(STARTER_PATH)
