"""Reading sources through their mappings: the edge where files become contract records.

Structural problems (unreadable file, unknown mapping, a required column missing) raise
:class:`InputError` with one sentence for the user; row problems become rejects.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from cites_risk.features.adapters import ROW, SURPLUS, MappingError, SourceMapping
from cites_risk.features.contract import RECORDS, schema_of
from cites_risk.features.reference import Reference
from cites_risk.features.validation import REJECT_SCHEMA, Vocabulary, validate

MAPPINGS_DIR = Path(__file__).parent / "mappings"
SAMPLE_DIR = Path(__file__).parent / "sample_data"
LEMIS_SAMPLE = SAMPLE_DIR / "lemis_amphibian_2016_2021.csv.gz"

#: Spellings of country names in free-text sources that are not the reference's names.
COUNTRY_ALIASES = {
    "usa": "US",
    "us": "US",
    "united states": "US",
    "uk": "GB",
    "united kingdom": "GB",
    "uae": "AE",
    "hong kong": "HK",
    "vietnam": "VN",
    "viet nam": "VN",
    "laos": "LA",
    "taiwan": "TW",
    "south korea": "KR",
    "korea": "KR",
    "russia": "RU",
    "drc": "CD",
    "dr congo": "CD",
    "democratic republic of congo": "CD",
    "republic of congo": "CG",
    "congo": "CG",
    "tanzania": "TZ",
    "iran": "IR",
    "syria": "SY",
    "bolivia": "BO",
    "venezuela": "VE",
    "ivory coast": "CI",
    "cote d'ivoire": "CI",
    "czech republic": "CZ",
    "macau": "MO",
    "macao": "MO",
    "burma": "MM",
    "myanmar": "MM",
    "china": "CN",
}


class InputError(RuntimeError):
    """A source cannot be used at all; the message says why in one sentence."""


@dataclass(frozen=True)
class Loaded:
    record: str
    accepted: pl.DataFrame
    rejects: pl.DataFrame
    rows_read: int
    #: The source row of each accepted record.
    source_rows: pl.Series

    def refuse(self, ids: Sequence[str], reason: str) -> Loaded:
        """This load with the accepted records of ``ids`` (their key) moved to the rejects:
        refused by the store, not by the contract."""
        if not ids:
            return self
        key = RECORDS[self.record].key
        refused = self.accepted.get_column(key).is_in(pl.Series(ids, dtype=pl.String).implode())
        rejects = pl.DataFrame(
            {
                "row": self.source_rows.filter(refused),
                "field": key,
                "value": self.accepted.get_column(key).filter(refused),
                "reason": reason,
            }
        ).cast(REJECT_SCHEMA)
        return replace(
            self,
            accepted=self.accepted.filter(~refused),
            rejects=pl.concat([self.rejects, rejects]).sort("row", maintain_order=True),
            source_rows=self.source_rows.filter(~refused),
        )

    @property
    def summary(self) -> str:
        rejected_rows = self.rejects.get_column("row").n_unique() if self.rejects.height else 0
        return (
            f"{self.rows_read} rows read, {self.accepted.height} {self.record} records accepted, "
            f"{rejected_rows} rows rejected"
        )


def available_mappings() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.yaml"))


def shipped_mapping(name: str) -> SourceMapping:
    """A mapping shipped with the project, by name only.

    What a remote caller may choose: a path there would let any API key probe the server's
    files and read fragments of them back in the error.
    """
    names = available_mappings()
    if name not in names:
        raise InputError(f"no mapping {name!r}: choose one of {', '.join(names)}")
    return load_mapping(name)


def load_mapping(name_or_path: str | Path) -> SourceMapping:
    """A shipped mapping by name (``lemis``) or a mapping file an administration brings."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MAPPINGS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(
            f"no mapping {str(name_or_path)!r}: give a YAML file or one of "
            f"{', '.join(available_mappings())}"
        )
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
        return SourceMapping.from_dict(data)
    except (yaml.YAMLError, MappingError, AttributeError, TypeError) as exc:
        raise InputError(f"mapping {path} is not valid: {exc}") from exc


def read_source(path: Path, mapping: SourceMapping) -> pl.LazyFrame:
    """The raw source as text columns with header names trimmed, plus ``__row`` (1-based).

    A CSV line with more fields than its header keeps the surplus in ``__surplus``
    (validation rejects the line); a line with fewer has nulls in the fields it lacks.
    """
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    try:
        if path.suffix == ".parquet" or mapping.format == "parquet":
            frame = pl.scan_parquet(path)
            frame = frame.select(_as_text(n, t) for n, t in schema_of(frame).items())
        elif (encoding := mapping.encoding.lower().replace("-", "")) in ("utf8", "utf8lossy"):
            # Lossy: a stray byte becomes U+FFFD in its field, not a failed batch.
            frame = _scan_csv(path, mapping, "utf8-lossy" if encoding == "utf8lossy" else "utf8")
        else:
            frame = _scan_csv(_as_utf8(path, mapping), mapping, "utf8")
        names = schema_of(frame).names()
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError, LookupError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    renamed = {n: n.strip() for n in names if n != n.strip()}
    return frame.rename(renamed).with_row_index(ROW, offset=1)


#: Spare columns past the header's. An empty field reads as an absent one, so a line is seen
#: to be too long by a non-empty field among these: "a,b,c,,junk" needs two.
SPARE_FIELDS = 4


def _scan_csv(source: Path | io.BytesIO, mapping: SourceMapping, encoding: str) -> pl.LazyFrame:
    """Every field as text, with spare columns past the header's: a line with more fields
    fills them (and the rest of the line is cut) instead of failing the whole file; the
    first non-empty one is ``__surplus``. A trailing separator alone is no surplus."""
    options: dict[str, Any] = {
        "separator": mapping.separator,
        "null_values": list(mapping.null_values),
        "encoding": encoding,
    }
    header = schema_of(pl.scan_csv(source, infer_schema=False, n_rows=0, **options)).names()
    if isinstance(source, io.BytesIO):
        source.seek(0)
    spare = [f"{SURPLUS}{i}" for i in range(SPARE_FIELDS)]
    schema = pl.Schema(dict.fromkeys([*header, *spare], pl.String()))
    return pl.scan_csv(
        source,
        has_header=False,
        skip_rows=1,
        schema=schema,
        missing_columns="insert",
        truncate_ragged_lines=True,
        **options,
    ).select(*header, pl.coalesce(spare).alias(SURPLUS))


def _as_utf8(path: Path, mapping: SourceMapping) -> io.BytesIO:
    """A CSV in another encoding, decoded in memory (polars scans only UTF-8)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return io.BytesIO(raw.decode(mapping.encoding).encode("utf-8"))


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A typed Parquet column as the text a CSV would hold: times in ISO 8601, which the
    validation parses (a plain cast writes "2021-12-30 00:00:00.000000", which it does not)."""
    if isinstance(dtype, pl.Datetime):
        zone = "%:z" if dtype.time_zone else ""
        return pl.col(name).dt.to_string(f"%Y-%m-%dT%H:%M:%S%.f{zone}")
    return pl.col(name).cast(pl.String)


def country_lookup(reference: Reference) -> dict[str, str]:
    names = {
        name.lower(): code
        for code, name in reference.countries.select("iso2", "name").iter_rows()
        if name
    }
    return names | COUNTRY_ALIASES


def vocabulary(reference: Reference) -> Vocabulary:
    return Vocabulary(
        countries=reference.country_codes(),
        code_lists={"purpose": reference.codes("purpose"), "source": reference.codes("source")},
    )


def load_records(
    path: Path, mapping: SourceMapping, record_name: str, reference: Reference
) -> Loaded:
    """Read, map and validate one record type of a source; collect once, here."""
    record = RECORDS[record_name]
    raw = read_source(path, mapping)
    try:
        mapped = mapping.apply(raw, record, {"country_name": country_lookup(reference)})
        time_formats = {f: mapping.time_format(record_name, f) for f in record.names}
        extras = mapping.extra_kinds if record_name == "declaration" else {}
        checked = validate(mapped, record, vocabulary(reference), time_formats, extras)
        accepted, rejects, count = pl.collect_all(
            [checked.accepted_rows, checked.rejects, raw.select(pl.len())]
        )
    except (MappingError, ValueError) as exc:
        raise InputError(f"{path}: {exc}") from exc
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    rows_read = int(count.item())
    return Loaded(record_name, accepted.drop(ROW), rejects, rows_read, accepted.get_column(ROW))


def write_rejects(rejects: pl.DataFrame, path: Path) -> Path:
    """Rejects as CSV (row, field, value, reason): what a clerk fixes and resubmits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rejects.select(REJECT_SCHEMA.names()).write_csv(path)
    return path
