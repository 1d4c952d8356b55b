"""Validation: split mapped rows into accepted records and reported rejects.

A bad row never stops a batch and is never silently dropped: every problem becomes a
reject line (source row, field, value, reason) and the row's siblings go on. The checks are
vectorised polars expressions, so validating a million rows costs about one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import polars as pl

from cites_risk.features.adapters import ROW, SURPLUS
from cites_risk.features.contract import STR_LIST, TIMESTAMP, Field, Record, schema_of

REJECT_SCHEMA = pl.Schema(
    {"row": pl.Int64, "field": pl.String, "value": pl.String, "reason": pl.String}
)
_ERRORS = "__errors"
#: Working columns of the checks: a line misread (more fields than the header), a repeat.
_MISREAD, _DUPLICATE = "__misread", "__duplicate"
RAGGED = (
    "more fields than the header: a separator inside an unquoted value? "
    "The line cannot be read safely"
)
_ERROR = pl.Struct({"field": pl.String, "value": pl.String, "reason": pl.String})
# Formats tried, in order, when a mapping names none: ISO 8601 in its common spellings.
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%:z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
)


@dataclass(frozen=True)
class Vocabulary:
    """Codes a value must belong to. Empty sets switch the check off."""

    countries: frozenset[str] = frozenset()
    code_lists: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Validated:
    accepted: pl.LazyFrame
    rejects: pl.LazyFrame
    #: ``accepted`` with each record's source row (``__row``) first.
    accepted_rows: pl.LazyFrame


def parse_time(text: pl.Expr, fmt: str | None) -> pl.Expr:
    """Parse text to a UTC timestamp; null where it does not parse."""
    formats = (fmt,) if fmt else _ISO_FORMATS
    attempts = []
    for f in formats:
        if "%z" in f or "%:z" in f:
            attempts.append(text.str.strptime(TIMESTAMP, f, strict=False, exact=True))
        else:
            naive = text.str.strptime(pl.Datetime("us"), f, strict=False, exact=True)
            attempts.append(naive.dt.replace_time_zone("UTC"))
    return pl.coalesce(attempts).cast(TIMESTAMP)


def _parse(f: Field, raw: pl.Expr, time_format: str | None) -> pl.Expr:
    if f.dtype == TIMESTAMP:
        return parse_time(raw, time_format)
    if f.dtype == pl.Float64:
        return raw.str.replace_all(",", "").cast(pl.Float64, strict=False)
    if f.dtype == STR_LIST:
        return raw.list.eval(pl.element().str.to_uppercase()) if f.country else raw
    if f.name == "hs_code":
        return raw.str.replace_all(r"[\s.]", "")
    if f.country or f.code_list or f.name == "currency":
        return raw.str.to_uppercase()
    return raw


class Check(NamedTuple):
    """Where a value breaks a rule, and the reject that says so."""

    condition: pl.Expr
    error: pl.Expr


def _error(f: Field, condition: pl.Expr, raw: pl.Expr, reason: str) -> Check:
    value = raw.list.join(";") if f.dtype == STR_LIST else raw.cast(pl.String)
    error = pl.struct(
        pl.lit(f.name).alias("field"), value.alias("value"), pl.lit(reason).alias("reason")
    )
    return Check(condition.fill_null(False), error)


def _checks(f: Field, raw: pl.Expr, parsed: pl.Expr, vocab: Vocabulary) -> list[Check]:
    checks: list[Check] = []
    if f.required:
        checks.append(_error(f, raw.is_null(), raw, "required value is missing"))
    if f.dtype == STR_LIST:
        if f.country and vocab.countries:
            unknown = parsed.list.eval(pl.element().is_in(list(vocab.countries)).not_()).list.any()
            checks.append(_error(f, unknown.fill_null(False), raw, "unknown country code"))
        return checks
    kind = {TIMESTAMP: "date/time", pl.Float64: "number"}.get(f.dtype)
    if kind:
        checks.append(
            _error(f, raw.is_not_null() & parsed.is_null(), raw, f"cannot parse a {kind}")
        )
    if f.dtype == pl.Float64:
        # "inf" and "NaN" parse as numbers, and would pass every comparison below.
        checks.append(_error(f, parsed.is_finite().not_(), raw, "not a finite number"))
    if f.non_negative:
        checks.append(_error(f, parsed < 0, raw, "must not be negative"))
    if f.country and vocab.countries:
        bad = parsed.is_not_null() & parsed.is_in(list(vocab.countries)).not_()
        checks.append(_error(f, bad, raw, "unknown country code"))
    if f.code_list and vocab.code_lists.get(f.code_list):
        codes = list(vocab.code_lists[f.code_list])
        bad = parsed.is_not_null() & parsed.is_in(codes).not_()
        checks.append(_error(f, bad, raw, f"unknown CITES {f.code_list} code"))
    if f.choices:
        bad = parsed.is_not_null() & parsed.is_in(list(f.choices)).not_()
        checks.append(_error(f, bad, raw, f"must be one of {', '.join(f.choices)}"))
    if f.name == "hs_code":
        bad = parsed.is_not_null() & parsed.str.contains(r"^\d{2,10}$").not_()
        checks.append(_error(f, bad, raw, "not an HS code (2 to 10 digits)"))
    return checks


def duplicate_reason(record: Record) -> str:
    if not record.also_keyed_by:
        return "duplicate id in batch"
    *names, last = record.identity
    return f"duplicate record in batch (same {', '.join(names)} and {last})"


def validate(
    mapped: pl.LazyFrame,
    record: Record,
    vocab: Vocabulary,
    time_formats: Mapping[str, str | None] | None = None,
    extras: Mapping[str, str] | None = None,
) -> Validated:
    """Parse and check mapped text columns (plus ``__row``) against the record's contract.

    Absent optional fields become typed nulls; an absent required field is a structural
    error raised as ``ValueError`` (the whole source is unusable, not one row).
    """
    present = set(schema_of(mapped).names())
    missing = [n for n in record.required if n not in present]
    if missing:
        raise ValueError(f"{record.name} source lacks required field(s): {', '.join(missing)}")
    formats = time_formats or {}
    parsed_cols: list[pl.Expr] = []
    checks: list[Check] = []
    typed: dict[str, pl.Expr] = {}
    for f in record.fields:
        if f.name in present:
            raw = pl.col(f.name)
            parsed = _parse(f, raw, formats.get(f.name))
            checks.extend(_checks(f, raw, parsed, vocab))
            typed[f.name] = parsed.cast(f.dtype)
        else:
            typed[f.name] = pl.lit(None, f.dtype)
        parsed_cols.append(typed[f.name].alias(f.name))
    for name, kind in (extras or {}).items():
        raw = pl.col(name)
        if kind == "number":
            extra = Field(name, pl.Float64())
            parsed = _parse(extra, raw, None)
            checks.extend(_checks(extra, raw, parsed, vocab))
            parsed_cols.append(parsed.alias(name))
        else:
            parsed_cols.append(raw.alias(name))
    key = pl.col(record.key)
    # Parsed, so that one instant written two ways is one record.
    also = [typed[n].alias(f"__also{i}") for i, n in enumerate(record.also_keyed_by)]
    identity = pl.struct(key, *also) if also else key
    misread = pl.col(SURPLUS).is_not_null() if SURPLUS in present else pl.lit(False)
    # A flag per check first; the rejects' text only for the rows that fail. Built for
    # every row, the text of forty checks took ~0.9 GiB per 200,000 LEMIS lines.
    flags = [f"__check{i}" for i in range(len(checks))]
    flagged = mapped.with_columns(
        *(c.condition.alias(name) for c, name in zip(checks, flags, strict=True)),
        misread.alias(_MISREAD),
    )
    # Only a line valid in every other way is a record that can repeat one: an invalid line
    # claims no id, so a valid line after it is not its duplicate. The same holds across
    # the chunks of a source (``profiling/sources.Repeats`` remembers accepted records).
    valid = pl.any_horizontal(*flags, _MISREAD).not_() if flags else pl.col(_MISREAD).not_()
    first = pl.when(valid).then(identity).is_first_distinct()
    flagged = flagged.with_columns((valid & first.not_() & key.is_not_null()).alias(_DUPLICATE))
    rejected = pl.any_horizontal(*flags, _MISREAD, _DUPLICATE)
    duplicate = _error(record.field(record.key), pl.col(_DUPLICATE), key, duplicate_reason(record))
    # A misread line's fields may be shifted: report it once, not each field it seems to
    # break.
    ragged = pl.struct(
        pl.lit("(line)").alias("field"),
        (pl.col(SURPLUS) if SURPLUS in present else pl.lit(None, pl.String)).alias("value"),
        pl.lit(RAGGED).alias("reason"),
    )
    found = [pl.when(pl.col(name)).then(c.error) for c, name in zip(checks, flags, strict=True)]
    found.append(pl.when(duplicate.condition).then(duplicate.error))
    errors = (
        pl.when(pl.col(_MISREAD))
        .then(pl.concat_list(ragged.cast(_ERROR)))
        .otherwise(pl.concat_list([e.cast(_ERROR) for e in found]).list.drop_nulls())
    )
    accepted_rows = (
        flagged.filter(rejected.not_())
        .select(pl.col(ROW), *parsed_cols)
        .select(ROW, *record.names, *(extras or {}))
    )
    accepted = accepted_rows.drop(ROW)
    rejects = (
        flagged.filter(rejected)
        .select(pl.col(ROW).cast(pl.Int64).alias("row"), errors.alias(_ERRORS))
        .explode(_ERRORS)
        .unnest(_ERRORS)
        .select(REJECT_SCHEMA.names())
        .cast(REJECT_SCHEMA)
    )
    return Validated(accepted=accepted, rejects=rejects, accepted_rows=accepted_rows)
