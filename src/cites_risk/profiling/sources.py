"""Reading sources through their mappings: the edge where files become contract records.

Structural problems (unreadable file, unknown mapping, a required column missing) raise
:class:`InputError` with one sentence for the user; row problems become rejects.
"""

from __future__ import annotations

import codecs
import gzip
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import yaml

from cites_risk.features.adapters import ROW, SURPLUS, MappingError, SourceMapping
from cites_risk.features.contract import RECORDS, schema_of
from cites_risk.features.reference import Reference
from cites_risk.features.validation import REJECT_SCHEMA, Vocabulary, duplicate_reason, validate

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


class NotTextError(ValueError):
    """A source's bytes are not text in its mapping's encoding (says where in the file)."""


#: What reading a source may raise that makes it unreadable as a whole.
_READ_ERRORS = (
    pl.exceptions.PolarsError,
    OSError,
    EOFError,
    zlib.error,
    UnicodeError,  # decoding, and codecs that refuse even to start ("undefined")
    LookupError,
    NotTextError,
)


@dataclass(frozen=True)
class Loaded:
    record: str
    accepted: pl.DataFrame
    rejects: pl.DataFrame
    rows_read: int
    #: The source row of each accepted record.
    source_rows: pl.Series

    @property
    def rejected_rows(self) -> int:
        """Source rows with at least one reject (a row may break several rules)."""
        return self.rejects.get_column("row").n_unique() if self.rejects.height else 0

    @classmethod
    def checked(
        cls, record: str, accepted: pl.DataFrame, rejects: pl.DataFrame, rows_read: int
    ) -> Loaded:
        """From ``check_records``: ``accepted`` still carries each record's source row."""
        return cls(record, accepted.drop(ROW), rejects, rows_read, accepted.get_column(ROW))

    def refuse(self, ids: Sequence[str], reason: str) -> Loaded:
        """This load with the accepted records of ``ids`` (their key) moved to the rejects:
        refused by the store, not by the contract."""
        if not ids:
            return self
        key = RECORDS[self.record].key
        ids_series = pl.Series(ids, dtype=pl.String).implode()
        return self.refuse_rows(self.accepted.get_column(key).is_in(ids_series), reason)

    def refuse_rows(self, refused: pl.Series, reason: str) -> Loaded:
        """This load with the accepted records where ``refused`` is true moved to the
        rejects, each under its key with ``reason``."""
        key = RECORDS[self.record].key
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
    return _read(path, mapping, header_only=False)


def source_header(path: Path, mapping: SourceMapping) -> pl.LazyFrame:
    """``read_source``'s columns and no rows, read from the CSV's first line only: a CSV
    in another encoding than UTF-8 is not decoded whole for it."""
    return _read(path, mapping, header_only=True).head(0)


def _read(path: Path, mapping: SourceMapping, *, header_only: bool) -> pl.LazyFrame:
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    try:
        if _is_parquet(path, mapping):
            frame = pl.scan_parquet(path)
            frame = frame.select(_as_text(n, t) for n, t in schema_of(frame).items())
        elif (encoding := _polars_encoding(mapping)) is not None and not _cr_file(path):
            frame = _scan_csv(path, mapping, encoding)
        else:
            # Read through ``_opened``: recoded to UTF-8, lines ended in newlines.
            with _opened(path, mapping) as (handle, parse_as):
                text = _header_line(handle)[1] if header_only else handle.read()
                frame = _scan_csv(io.BytesIO(text), mapping, parse_as)
        names = schema_of(frame).names()
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if (
        any("\r" in name for name in names)
        and _compression(path) == "zstd"
        and frame.head(1).collect().height == 0
    ):
        # polars alone reads a zstd file: told by a header holding every line, and no row
        raise InputError(
            f"cannot read {path}: its lines end in a carriage return alone; end them in "
            "newlines, or compress it with gzip"
        )
    renamed = {n: n.strip() for n in names if n != n.strip()}
    return frame.rename(renamed).with_row_index(ROW, offset=1)


def _is_parquet(path: Path, mapping: SourceMapping) -> bool:
    return path.suffix == ".parquet" or mapping.format == "parquet"


def _polars_encoding(mapping: SourceMapping) -> str | None:
    """The encoding polars parses the source in, or None: it is decoded to UTF-8 first."""
    encoding = mapping.encoding.lower().replace("-", "")
    # Lossy: a stray byte becomes U+FFFD in its field, not a failed batch.
    return {"utf8": "utf8", "utf8lossy": "utf8-lossy"}.get(encoding)


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
    # Empty lines before the header: polars passes over them to find it, but counts them
    # among the rows it is told to skip.
    if isinstance(source, io.BytesIO):
        source.seek(0)
        blank = _header_line(source)[0]
        source.seek(0)
    elif (compression := _compression(source)) == "zstd":
        blank = 0  # decompressed by polars alone: not looked into
    else:
        with _opened_bytes(source, compression) as raw:
            blank = _header_line(raw)[0]
    spare = [f"{SURPLUS}{i}" for i in range(SPARE_FIELDS)]
    schema = pl.Schema(dict.fromkeys([*header, *spare], pl.String()))
    return pl.scan_csv(
        source,
        has_header=False,
        skip_rows=blank + 1,
        schema=schema,
        missing_columns="insert",
        # A line longer than even the spare columns is cut, not a failed file: the spare
        # columns already mark it (and a block may start with it).
        extra_columns="ignore",
        truncate_ragged_lines=True,
        **options,
    ).select(*header, pl.coalesce(spare).alias(SURPLUS))


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


def check_records(
    raw: pl.LazyFrame, mapping: SourceMapping, record_name: str, reference: Reference
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Map and validate source rows as ``record_name``: the accepted records (with their
    source row in ``ROW``) and the rejects. A mapping that does not fit raises
    ``InputError``; a source polars cannot read raises its ``PolarsError``."""
    record = RECORDS[record_name]
    try:
        mapped = mapping.apply(raw, record, {"country_name": country_lookup(reference)})
        time_formats = {f: mapping.time_format(record_name, f) for f in record.names}
        extras = mapping.extra_kinds if record_name == "declaration" else {}
        checked = validate(mapped, record, vocabulary(reference), time_formats, extras)
        # Two queries, not three: collect_all shares the checks between them (measured: a
        # third for the keys made a 50 k-line chunk's validation 1.0 -> 2.0 s).
        accepted, rejects = pl.collect_all([checked.accepted_rows, checked.rejects])
    except (MappingError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    return accepted, rejects


def load_checked(
    path: Path,
    raw: pl.LazyFrame,
    mapping: SourceMapping,
    record_name: str,
    reference: Reference,
    rows_read: int,
) -> Loaded:
    """``check_records`` on ``rows_read`` rows of the source at ``path``; what stops the
    load is said once, naming the file."""
    try:
        accepted, rejects = check_records(raw, mapping, record_name, reference)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from exc
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    return Loaded.checked(record_name, accepted, rejects, rows_read)


def load_records(
    path: Path, mapping: SourceMapping, record_name: str, reference: Reference
) -> Loaded:
    """Read, map and validate one record type of a whole source, in memory."""
    source = read_source(path, mapping)
    try:
        raw = source.collect()
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    return load_checked(path, raw.lazy(), mapping, record_name, reference, raw.height)


#: CSV bytes parsed at a time by ``source_chunks``: with the chunk being assembled, what
#: bounds the memory of reading a source of any size.
CSV_BLOCK_BYTES = 8 << 20
_NEWLINE, _QUOTE = ord("\n"), ord('"')
_BOM = codecs.BOM_UTF8


def source_chunks(
    source: Path, mapping: SourceMapping, chunk_rows: int, *, block_bytes: int = CSV_BLOCK_BYTES
) -> Iterator[tuple[int, pl.DataFrame]]:
    """(chunk index, raw rows) in fixed row ranges, streamed from the source: the rows of
    ``read_source``, read ``block_bytes`` of CSV (or ``chunk_rows`` of Parquet) at a time.

    Not polars' own batched collect: its reader decodes ahead of the caller whatever the
    caller takes (~0.9 GiB held at the first batch of a 2 M-line CSV; for Parquet, the
    more the more rows: pola-rs/polars#28569). Read here in 8 MB blocks, chunks of
    200,000 lines of that CSV peak at 0.4 GiB.
    """
    # The file's problems before any chunk. A CSV in another encoding is not decoded whole
    # for them: of it, ``whole`` holds the names only, all its blocks need.
    whole = _read(source, mapping, header_only=True)
    buffer: list[pl.DataFrame] = []
    buffered = 0
    index = 0
    try:
        if _polars_encoding(mapping) is None:
            _check_decodable(source, mapping, block_bytes)
        for block in _source_blocks(source, mapping, whole, block_bytes, chunk_rows):
            buffer.append(block)
            buffered += block.height
            while buffered >= chunk_rows:
                joined = pl.concat(buffer)
                yield index, joined.head(chunk_rows)
                rest = joined.slice(chunk_rows)
                buffer, buffered = [rest], rest.height
                index += 1
    except _READ_ERRORS as exc:
        raise InputError(f"cannot read {source}: {exc}") from exc
    if buffered:
        yield index, pl.concat(buffer)


def _source_blocks(
    path: Path,
    mapping: SourceMapping,
    whole: pl.LazyFrame,
    block_bytes: int,
    parquet_rows: int,
) -> Iterator[pl.DataFrame]:
    """``whole``'s rows in consecutive blocks, each parsed on its own and numbered on from
    the block before."""
    if _compression(path) == "zstd":
        # No zstd reader in the standard library: polars decompresses it whole, in memory.
        yield whole.collect()
        return
    if _is_parquet(path, mapping):
        # A slice reads only the row groups it needs.
        total = int(pl.scan_parquet(path).select(pl.len()).collect().item())
        for start in range(0, total, parquet_rows):
            yield whole.slice(start, parquet_rows).collect()
        return
    with _opened(path, mapping) as (handle, parse_as):
        header = _header_line(handle)[1]
        names = schema_of(whole).names()
        rows = 0
        for block in _record_blocks(handle, block_bytes):
            frame = _scan_csv(io.BytesIO(header + block), mapping, parse_as)
            numbered = frame.with_row_index(ROW, offset=rows + 1).collect()
            numbered.columns = names  # trimmed, as ``read_source`` gives them
            rows += numbered.height
            yield numbered


class _Lines(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self) -> bytes: ...


class _Bytes(_Lines, Protocol):
    def peek(self, size: int, /) -> bytes: ...


class _Translated:
    """A byte stream read through ``convert`` (its bytes, and whether they are the last)
    a block at a time, with lines that end at a newline only.

    Not ``codecs.EncodedFile``: its ``readline`` ends a line at any Unicode line break
    (U+0085 is a Latin-1 byte, U+2028 …), where polars ends one at a newline only.
    """

    def __init__(self, raw: _Bytes, convert: Callable[[bytes, bool], bytes]) -> None:
        self._raw = raw
        self._convert = convert
        # Grown at its end and cut at its start in place: a whole file read through it
        # costs its size once, not once per block.
        self._ready = bytearray()
        self._done = False

    def _fill(self, size: int) -> None:
        chunk = self._raw.read(size)
        self._done = not chunk
        self._ready += self._convert(chunk, self._done)

    def _take(self, n: int) -> bytes:
        with memoryview(self._ready) as ready:
            out = bytes(ready[:n])  # one copy (a slice of the bytearray would be two)
        del self._ready[:n]  # a bytearray drops its start without moving the rest
        return out

    def read(self, size: int = -1, /) -> bytes:
        while not self._done and (size < 0 or len(self._ready) < size):
            self._fill(size if size > 0 else 1 << 20)
        return self._take(len(self._ready) if size < 0 else size)

    def readline(self) -> bytes:
        seen = 0  # bytes already searched: a long line is scanned once
        while (end := self._ready.find(b"\n", seen)) < 0 and not self._done:
            seen = len(self._ready)
            self._fill(1 << 16)
        return self._take(end + 1 if end >= 0 else len(self._ready))

    def peek(self, size: int, /) -> bytes:
        while not self._done and len(self._ready) < size:
            self._fill(1 << 16)
        return bytes(self._ready[:size])


class _Decoding:
    """``_Translated``'s conversion of a file in ``encoding`` to UTF-8."""

    def __init__(self, encoding: str) -> None:
        "".encode(encoding)  # LookupError for an unknown codec, or one not of text (rot13)
        self.encoding = encoding
        self._decoder = codecs.getincrementaldecoder(encoding)()
        self._read = 0

    def __call__(self, chunk: bytes, final: bool) -> bytes:
        # Bytes of a character begun in the last chunk: the decoder holds them.
        held = len(self._decoder.getstate()[0])
        try:
            # Final at the end: a character cut short there is an error, not dropped.
            text = self._decoder.decode(chunk, final=final)
        except UnicodeDecodeError as exc:
            at = self._read - held + exc.start
            raise NotTextError(f"not {self.encoding} text at byte {at:,}: {exc.reason}") from exc
        self._read += len(chunk)
        return text.encode("utf-8")


#: Bytes looked at to tell how the file's lines end: more than any header.
_LINE_END_PEEK = 1 << 16


def _ends_lines_in_cr(handle: _Bytes) -> bool:
    """True when the file's lines end in a carriage return alone (as old Mac exports do):
    polars would read the whole file as its header line, and no row. One byte more is
    looked at than searched: a CR that ends the head may start a CRLF."""
    head = handle.peek(_LINE_END_PEEK + 1)
    return b"\r" in head[:_LINE_END_PEEK] and b"\n" not in head


def _cr_as_newline(chunk: bytes, final: bool) -> bytes:
    return chunk.replace(b"\r", b"\n")


def _cr_file(path: Path) -> bool:
    """``_ends_lines_in_cr`` of a CSV file polars would read itself (a zstd file is read
    by polars alone: not looked into)."""
    compression = _compression(path)
    if compression == "zstd":
        return False
    with _opened_bytes(path, compression) as raw:
        return _ends_lines_in_cr(raw)


def _lines(handle: _Bytes) -> _Bytes:
    """``handle`` with lines that end in a newline, whatever they end in in the file."""
    return _Translated(handle, _cr_as_newline) if _ends_lines_in_cr(handle) else handle


@contextmanager
def _opened(path: Path, mapping: SourceMapping) -> Iterator[tuple[_Bytes, str]]:
    """The CSV's bytes, and the encoding polars parses them in. A CSV in another encoding
    is recoded to UTF-8 as it is read (polars parses only UTF-8), so that reading it in
    blocks holds a block of it, not the whole file."""
    parse_as = _polars_encoding(mapping)
    compression = _compression(path)
    if parse_as is None and compression == "zstd":
        raise InputError(
            f"cannot read {path}: a zstd-compressed file must be UTF-8, and the mapping reads "
            f"{mapping.encoding}; decompress it, or compress it with gzip"
        )
    with _opened_bytes(path, compression) as raw:
        if parse_as is None:
            # Lines are told apart in UTF-8: a carriage return's byte may be half of a
            # UTF-16 character.
            yield _lines(_Translated(raw, _Decoding(mapping.encoding))), "utf8"
        else:
            yield _lines(raw), parse_as


def _check_decodable(path: Path, mapping: SourceMapping, block_bytes: int) -> None:
    """Read a CSV in another encoding through once, a block at a time and keeping none: a
    byte that is not text in it then stops the file before any chunk is stored, as when
    it is read whole."""
    with _opened(path, mapping) as (handle, _):
        while handle.read(block_bytes):
            pass


@contextmanager
def _opened_bytes(path: Path, compression: str | None) -> Iterator[_Bytes]:
    """The file's bytes, gunzipped if ``compression`` (``_compression``'s) is gzip; zstd
    is left to polars."""
    with gzip.open(path, "rb") if compression == "gzip" else path.open("rb") as raw:
        yield _Headed(raw, _LINE_END_PEEK + 1)


class _Headed:
    """A byte stream whose first ``size`` bytes are read ahead, so that ``peek`` sees
    that many (a file's or a gzip's own ``peek`` gives what its buffer holds: 4 or 8 kB)."""

    def __init__(self, raw: _Lines, size: int) -> None:
        self._raw = raw
        self._head = b""
        while len(self._head) < size and (more := raw.read(size - len(self._head))):
            self._head += more

    def peek(self, size: int, /) -> bytes:
        return self._head[:size]

    def read(self, size: int = -1, /) -> bytes:
        if not self._head:
            return self._raw.read(size)
        if 0 <= size <= len(self._head):
            out, self._head = self._head[:size], self._head[size:]
            return out
        out, self._head = self._head, b""
        return out + self._raw.read(-1 if size < 0 else size - len(out))

    def readline(self) -> bytes:
        end = self._head.find(b"\n")
        if end >= 0:
            return self.read(end + 1)
        return self.read(len(self._head)) + self._raw.readline()


def _header_line(handle: _Lines) -> tuple[int, bytes]:
    """The number of empty lines before the header, and the header's line (or lines: a
    quoted name may hold a newline), read past them. A UTF-8 byte-order mark, which
    polars drops, makes no line less empty."""
    blank = 0
    line = handle.readline()
    while line.removeprefix(_BOM if blank == 0 else b"") in (b"\n", b"\r\n"):
        blank += 1
        line = handle.readline()
    while line.count(b'"') % 2 and (more := handle.readline()):
        line += more
    return blank, line


def _compression(path: Path) -> str | None:
    """What the file is compressed with, told by its first bytes as polars tells it (a
    gzip file named ``.csv`` or ``.CSV.GZ`` is still gzip)."""
    with path.open("rb") as probe:
        magic = probe.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def _record_blocks(handle: _Lines, size: int) -> Iterator[bytes]:
    """The rest of ``handle`` in blocks of about ``size`` bytes, each ending where a record
    does: at a newline outside quotes, as a quoted field may hold newlines."""
    rest = b""
    while block := handle.read(size):
        data = rest + block
        cut = _last_record_end(data)
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def _last_record_end(data: bytes) -> int:
    """Just past the last newline of ``data`` outside quotes, or 0.

    ``data`` starts where a record does, and a quote inside a quoted field is doubled, so
    a newline is outside quotes when an even number of quotes precedes it. (A stray quote
    inside an unquoted field would upset the count, but polars rejects such a file whole.)
    """
    codes = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(codes == _NEWLINE)
    # Only the parity counts: a sum kept in one byte wraps at 256 and keeps it.
    quotes = np.cumsum(codes == _QUOTE, dtype=np.uint8)
    outside = newlines[quotes[newlines] % 2 == 0]
    return int(outside[-1]) + 1 if outside.size else 0


class Repeats:
    """The identities of records accepted from earlier chunks of one source.

    Validation rejects a record repeated within what it sees; a source read in chunks
    needs the earlier chunks' records too, so that a record repeated across chunks is
    rejected as it would be within one (every line after the first). Every accepted
    record's identity is kept, as a 128-bit hash of its identity columns: 16 bytes a
    record, where the columns themselves took ~50 (93 MB for the declarations and
    inspection results of two million LEMIS lines). Of what loading a source holds, this
    alone grows with it. Two different identities share a hash with a probability of
    about n^2 / 2^129: 3e-21 for a billion records.
    """

    def __init__(self, record_name: str) -> None:
        self.record = RECORDS[record_name]
        self._seen: pl.DataFrame | None = None

    def _hashed(self, accepted: pl.DataFrame) -> pl.DataFrame:
        identity = pl.struct(self.record.identity)
        # Two independently seeded 64-bit hashes: one would meet a false repeat at ~4
        # billion records, and a repeat is a record refused.
        return accepted.select(
            identity.hash(seed=0x5EED_0001).alias("__h0"),
            identity.hash(seed=0x5EED_0002).alias("__h1"),
        )

    def drop_repeats(self, loaded: Loaded) -> Loaded:
        """``loaded`` without the records an earlier chunk accepted (they become rejects);
        its own are remembered for the chunks after it."""
        identity = self._hashed(loaded.accepted)
        if self._seen is not None and self._seen.height and identity.height:
            repeated = (
                identity.with_row_index("__i")
                .join(self._seen, on=["__h0", "__h1"], how="semi")
                .get_column("__i")
            )
            if repeated.len():
                mask = pl.Series(range(identity.height)).is_in(repeated.implode())
                loaded = loaded.refuse_rows(mask, duplicate_reason(self.record))
                identity = identity.filter(~mask)
        self._seen = identity if self._seen is None else pl.concat([self._seen, identity])
        return loaded


class RejectsFile:
    """A rejects CSV written chunk by chunk, under a temporary name until ``close``: a
    source read in chunks never holds all its rejects in memory, and a crash leaves no
    half file under the real name. No rejects, no file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp = path.with_name(f".{path.name}.tmp")
        self._tmp.unlink(missing_ok=True)  # left by a load that did not finish
        self._handle: io.BufferedWriter | None = None

    def write(self, rejects: pl.DataFrame) -> None:
        if not rejects.height:
            return
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self._tmp.open("wb")
            header = True
        else:
            header = False
        rejects.select(REJECT_SCHEMA.names()).write_csv(self._handle, include_header=header)

    def abandon(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._tmp.unlink(missing_ok=True)

    def close(self) -> Path | None:
        """The file's path if any rejects were written, else None (and an older file of
        the same name, from an earlier load of this source, is removed)."""
        if self._handle is None:
            self.path.unlink(missing_ok=True)
            return None
        self._handle.close()
        self._tmp.replace(self.path)
        return self.path


def write_rejects(rejects: pl.DataFrame, path: Path) -> Path:
    """Rejects as CSV (row, field, value, reason): what a clerk fixes and resubmits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rejects.select(REJECT_SCHEMA.names()).write_csv(path)
    return path
