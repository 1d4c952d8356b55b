"""Declarative source mappings: how a source's columns become contract records.

A customs administration brings a mapping (YAML, parsed elsewhere into a dict), not code.
Each contract field is given by one rule:

- ``"col"``: copy a source column;
- ``{column: col}`` / ``{concat: [a, b, $row], sep: "-"}`` / ``{constant: "x"}``: the value;
- modifiers on any of them: ``values`` (recode; unmapped values kept unless
  ``default`` is given, ``null`` drops them), ``split`` (separator: a list of countries),
  ``scale_by`` (multiply a number by a factor looked up in another column, e.g. grams to kg;
  rows whose unit has no factor get null), ``format`` (strptime format for times),
  ``upper`` (upper-case the value), ``first`` (keep the part before a separator),
  ``part_after`` (keep the part after the last separator: "Lagos, Nigeria" -> "Nigeria"),
  ``lookup`` (translate through a named reference table, e.g. ``country_name``),
  ``prefix`` (prepend text, e.g. to keep ids of two sources apart).

Fields a contract does not know (an administration's own codes) are declared under
``extras`` with a ``kind`` (``category`` or ``number``) and travel as ``x_<name>`` columns.

The adapter produces strings (and string lists); parsing and checking belong to
:mod:`cites_risk.features.validation`, so that a bad value is reported with the field's name
rather than lost inside a cast here.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from cites_risk.features.contract import RECORDS, STR_LIST, Record, schema_of

ROW = "__row"
#: What a CSV line holds beyond its header's fields (null on a well-formed line): a
#: separator in an unquoted value shifts every field after it, so such a line is rejected.
SURPLUS = "__surplus"
ROW_TOKEN = "$row"
_KNOWN_KEYS = {
    "column",
    "concat",
    "constant",
    "sep",
    "values",
    "default",
    "split",
    "scale_by",
    "format",
    "upper",
    "first",
    "part_after",
    "lookup",
    "prefix",
    "kind",
}
EXTRA_PREFIX = "x_"


class MappingError(ValueError):
    """The mapping file itself is wrong: an unknown key, field or source column."""


@dataclass(frozen=True)
class FieldRule:
    column: str | None = None
    concat: tuple[str, ...] = ()
    constant: str | None = None
    sep: str = ""
    values: dict[str, str | None] | None = None
    default: str | None = None
    has_default: bool = False
    split: str | None = None
    scale_by: tuple[str, dict[str, float]] | None = None
    format: str | None = None
    upper: bool = False
    first: str | None = None
    part_after: str | None = None
    lookup: str | None = None
    prefix: str | None = None

    @classmethod
    def parse(cls, target: str, spec: Any) -> FieldRule:
        if isinstance(spec, str):
            return cls(column=spec)
        if not isinstance(spec, MappingABC):
            raise MappingError(f"field {target!r}: expected a column name or a mapping")
        unknown = set(spec) - _KNOWN_KEYS
        if unknown:
            raise MappingError(f"field {target!r}: unknown keys {sorted(unknown)}")
        sources = [k for k in ("column", "concat", "constant") if k in spec]
        if len(sources) != 1:
            raise MappingError(f"field {target!r}: give exactly one of column, concat, constant")
        scale = spec.get("scale_by")
        scale_by = None
        if scale is not None:
            if not isinstance(scale, MappingABC) or set(scale) != {"column", "factors"}:
                raise MappingError(f"field {target!r}: scale_by needs column and factors")
            scale_by = (
                str(scale["column"]),
                {str(k): float(v) for k, v in scale["factors"].items()},
            )
        values = spec.get("values")
        return cls(
            column=spec.get("column"),
            concat=tuple(str(c) for c in spec.get("concat", ())),
            constant=None if spec.get("constant") is None else str(spec["constant"]),
            sep=str(spec.get("sep", "")),
            values=None if values is None else {str(k): v for k, v in values.items()},
            default=spec.get("default"),
            has_default="default" in spec,
            split=spec.get("split"),
            scale_by=scale_by,
            format=spec.get("format"),
            upper=bool(spec.get("upper", False)),
            first=spec.get("first"),
            part_after=spec.get("part_after"),
            lookup=spec.get("lookup"),
            prefix=spec.get("prefix"),
        )

    def source_columns(self) -> set[str]:
        cols = {c for c in self.concat if c != ROW_TOKEN}
        if self.column:
            cols.add(self.column)
        if self.scale_by:
            cols.add(self.scale_by[0])
        return cols

    def _text(self, value: pl.Expr, lookups: Lookups) -> pl.Expr:
        """Per-value text steps; applied to each element when the field is a list."""
        if self.first:
            value = value.str.split(self.first).list.first().str.strip_chars()
        if self.part_after:
            value = value.str.split(self.part_after).list.last().str.strip_chars()
        if self.upper:
            value = value.str.to_uppercase()
        if self.values is not None:
            default = pl.lit(self.default, pl.String) if self.has_default else value
            value = value.replace_strict(self.values, default=default, return_dtype=pl.String)
        if self.lookup:
            if self.lookup not in lookups:
                raise MappingError(f"unknown lookup {self.lookup!r}; have {sorted(lookups)}")
            table = lookups[self.lookup]
            # Unknown names are kept so that validation reports them instead of dropping them.
            value = value.str.to_lowercase().replace_strict(
                table, default=value, return_dtype=pl.String
            )
        if self.prefix:
            value = pl.lit(self.prefix) + value
        return value

    def expr(self, target: str, dtype: pl.DataType, lookups: Lookups | None = None) -> pl.Expr:
        lookups = lookups or {}
        if self.constant is not None:
            value: pl.Expr = pl.lit(self.constant, pl.String)
        elif self.concat:
            parts = [
                pl.col(ROW).cast(pl.String) if c == ROW_TOKEN else _clean(pl.col(c))
                for c in self.concat
            ]
            # A missing part is left out rather than nulling the whole value.
            value = pl.concat_str(parts, separator=self.sep, ignore_nulls=True)
            value = pl.when(value.str.len_chars() > 0).then(value)
        else:
            value = _clean(pl.col(str(self.column)))
        if dtype != STR_LIST:
            value = self._text(value, lookups)
        if self.scale_by is not None:
            unit_col, factors = self.scale_by
            factor = _clean(pl.col(unit_col)).replace_strict(
                factors, default=None, return_dtype=pl.Float64
            )
            number = value.cast(pl.Float64, strict=False) * factor
            # Keep unparsable text as is so validation reports it; scale what parses.
            value = (
                pl.when(value.cast(pl.Float64, strict=False).is_null())
                .then(pl.when(factor.is_not_null()).then(value))
                .otherwise(number.cast(pl.String))
            )
        if dtype == STR_LIST:
            sep = self.split or ";"
            return (
                value.str.split(sep)
                .list.eval(pl.element().str.strip_chars())
                .list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
                .list.eval(self._text(pl.element(), lookups))
                .alias(target)
            )
        return value.alias(target)


Lookups = MappingABC[str, MappingABC[str, str]]


def _clean(expr: pl.Expr) -> pl.Expr:
    """Trimmed text; blanks become null so that 'missing' has one representation."""
    text = expr.cast(pl.String).str.strip_chars()
    return pl.when(text.str.len_chars() > 0).then(text)


@dataclass(frozen=True)
class SourceMapping:
    """A parsed mapping file: how to read the source and how to build each record."""

    name: str
    description: str = ""
    format: str = "csv"
    encoding: str = "utf8"
    separator: str = ","
    null_values: tuple[str, ...] = ("", "NA")
    #: Named datetime formats per contract field (taken from the field rules).
    records: dict[str, dict[str, FieldRule]] = field(default_factory=dict)
    #: Optional row filter: keep rows whose column equals one of the values.
    keep_rows: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Administration-specific declaration columns: name -> (rule, kind).
    extras: dict[str, tuple[FieldRule, str]] = field(default_factory=dict)

    @property
    def extra_kinds(self) -> dict[str, str]:
        """``x_<name>`` column -> ``category`` or ``number``."""
        return {EXTRA_PREFIX + name: kind for name, (_, kind) in self.extras.items()}

    @classmethod
    def from_dict(cls, data: MappingABC[str, Any]) -> SourceMapping:
        if "name" not in data or "records" not in data:
            raise MappingError("a mapping needs 'name' and 'records'")
        records: dict[str, dict[str, FieldRule]] = {}
        for record_name, rules in data["records"].items():
            if record_name not in RECORDS:
                raise MappingError(
                    f"unknown record {record_name!r}; expected one of {sorted(RECORDS)}"
                )
            record = RECORDS[record_name]
            parsed: dict[str, FieldRule] = {}
            for target, spec in rules.items():
                if target not in record.names:
                    raise MappingError(f"{record_name} has no field {target!r}")
                parsed[target] = FieldRule.parse(target, spec)
            missing = [n for n in record.required if n not in parsed]
            if missing:
                raise MappingError(f"{record_name} mapping lacks required fields {missing}")
            records[record_name] = parsed
        extras: dict[str, tuple[FieldRule, str]] = {}
        for name, spec in (data.get("extras") or {}).items():
            kind = spec.get("kind", "category") if isinstance(spec, MappingABC) else "category"
            if kind not in ("category", "number"):
                raise MappingError(f"extra {name!r}: kind must be category or number")
            if isinstance(spec, MappingABC):
                spec = {k: v for k, v in spec.items() if k != "kind"}
            extras[str(name)] = (FieldRule.parse(str(name), spec), kind)
        read = data.get("read", {})
        keep = data.get("keep_rows", {}) or {}
        return cls(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            format=str(read.get("format", "csv")),
            encoding=str(read.get("encoding", "utf8")),
            separator=str(read.get("separator", ",")),
            null_values=tuple(str(v) for v in read.get("null_values", ("", "NA"))),
            records=records,
            keep_rows={str(k): tuple(str(v) for v in vs) for k, vs in keep.items()},
            extras=extras,
        )

    def source_columns(self, record: str) -> set[str]:
        cols: set[str] = set(self.keep_rows)
        for rule in self.records[record].values():
            cols |= rule.source_columns()
        if record == "declaration":
            for rule, _ in self.extras.values():
                cols |= rule.source_columns()
        return cols

    def apply(
        self, raw: pl.LazyFrame, record: Record, lookups: Lookups | None = None
    ) -> pl.LazyFrame:
        """Map a raw source frame (which carries ``__row``) onto the record's fields, as text.

        Fields the mapping does not give are absent; validation adds them as nulls.
        """
        if record.name not in self.records:
            raise MappingError(f"mapping {self.name!r} has no {record.name} records")
        rules = self.records[record.name]
        present = set(schema_of(raw).names())
        absent = sorted(self.source_columns(record.name) - present)
        if absent:
            raise MappingError(
                f"source for mapping {self.name!r} lacks column(s): {', '.join(absent)}"
            )
        frame = raw
        for column, allowed in self.keep_rows.items():
            frame = frame.filter(_clean(pl.col(column)).is_in(list(allowed)))
        exprs = [pl.col(ROW)]
        if SURPLUS in present:
            exprs.append(pl.col(SURPLUS))
        for f in record.fields:
            if f.name in rules:
                exprs.append(rules[f.name].expr(f.name, f.dtype, lookups))
        if record.name == "declaration":
            for name, (rule, _) in self.extras.items():
                exprs.append(rule.expr(EXTRA_PREFIX + name, pl.String(), lookups))
        return frame.select(exprs)

    def time_format(self, record: str, field_name: str) -> str | None:
        rule = self.records.get(record, {}).get(field_name)
        return rule.format if rule else None
