"""Reading a source in chunks: the rows and row numbers of reading it whole, in bounded memory."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cites_risk.features.adapters import SourceMapping
from cites_risk.profiling.sources import (
    InputError,
    load_mapping,
    read_source,
    source_chunks,
    source_header,
)

MAPPING = load_mapping("lemis")

#: Field text with what makes CSV hard: separators, quotes, newlines inside quotes, CRLF,
#: non-ASCII letters (several bytes each).
FIELD = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\u00e9\u6f22;')), max_size=8)


def _chunked(
    path: Path, mapping: SourceMapping, chunk_rows: int, block_bytes: int = 1 << 20
) -> pl.DataFrame:
    chunks = list(source_chunks(path, mapping, chunk_rows, block_bytes=block_bytes))
    assert [k for k, _ in chunks] == list(range(len(chunks)))
    assert all(c.height == chunk_rows for _, c in chunks[:-1])
    return pl.concat([c for _, c in chunks]) if chunks else pl.DataFrame()


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(st.tuples(FIELD, FIELD, FIELD), max_size=25),
    chunk_rows=st.integers(1, 7),
    block_bytes=st.integers(1, 64),
    gzipped=st.booleans(),
    # Parsed by polars; recoded as it is read (two bytes or more a letter, one to four).
    encoding=st.sampled_from(["utf-8", "utf-16", "gb18030"]),
)
def test_chunks_hold_the_rows_of_the_whole_source(
    tmp_path: Path,
    rows: list[tuple[str, str, str]],
    chunk_rows: int,
    block_bytes: int,
    gzipped: bool,
    encoding: str,
) -> None:
    """Cut anywhere (inside a quoted field, between the bytes of a letter), with any chunk
    size, in any encoding, the chunks give the whole file's rows, in order, with its row
    numbers."""
    frame = pl.DataFrame(rows, schema=["a", " b ", "c"], orient="row")
    path = tmp_path / ("rows.csv.gz" if gzipped else "rows.csv")
    text = frame.write_csv().encode(encoding)
    path.write_bytes(gzip.compress(text) if gzipped else text)
    mapping = _reading(encoding)
    whole = read_source(path, mapping).collect()
    chunked = _chunked(path, mapping, chunk_rows, block_bytes)
    assert whole.height == len(rows)
    assert whole.select("a", "b", "c").rows() == [tuple(v or None for v in r) for r in rows]
    if rows:
        assert chunked.equals(whole)
    else:
        assert chunked.height == 0


def _reading(encoding: str) -> SourceMapping:
    return SourceMapping.from_dict({"name": "enc", "read": {"encoding": encoding}, "records": {}})


def test_a_ragged_line_keeps_its_surplus_in_any_chunk(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b\n1,2\n3,4,extra\n5,6\n")
    chunked = _chunked(path, MAPPING, 1, 3)
    assert chunked.equals(read_source(path, MAPPING).collect())
    assert chunked.get_column("__surplus").to_list() == [None, "extra", None]
    assert chunked.get_column("__row").to_list() == [1, 2, 3]


def test_parquet_is_read_in_row_blocks(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    pl.DataFrame({"a": list(range(23)), "b": [f"x{i}" for i in range(23)]}).write_parquet(path)
    chunked = _chunked(path, MAPPING, 4)
    assert chunked.equals(read_source(path, MAPPING).collect())
    assert chunked.get_column("__row").to_list() == list(range(1, 24))


def test_another_encoding_is_read_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("a,b\nJos\u00e9,1\nM\u00fcller,2\n".encode("latin-1"))
    mapping = SourceMapping.from_dict(
        {"name": "latin", "read": {"encoding": "latin-1"}, "records": {}}
    )
    chunked = _chunked(path, mapping, 1, 2)
    assert chunked.get_column("a").to_list() == ["Jos\u00e9", "M\u00fcller"]


def test_another_encoding_is_recoded_block_by_block_not_whole(tmp_path: Path) -> None:
    """An 8 MB cp1252 file read in blocks of 256 kB: what Python holds at once stays a few
    blocks, where decoding the file whole held it three times (bytes, text, UTF-8)."""
    path = tmp_path / "windows.csv"
    line = "Jos\u00e9 M\u00fcller,1\n".encode("cp1252")
    path.write_bytes(b"a,b\n" + line * (8 * 2**20 // len(line)))
    tracemalloc.start()
    try:
        rows = sum(
            c.height for _, c in source_chunks(path, _reading("cp1252"), 50_000, block_bytes=2**18)
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == 8 * 2**20 // len(line)
    assert peak < 4 * 2**20


def test_a_byte_not_of_the_encoding_stops_the_file_before_any_chunk(tmp_path: Path) -> None:
    """Near the end, or a character cut short at the end: the file is refused before its
    first chunk, naming where in the file."""
    path = tmp_path / "windows.csv"
    lines = b"a,b\n" + "".join(f"Jos\u00e9 {i},{i}\n" for i in range(20_000)).encode("cp1252")
    path.write_bytes(lines + b"bad \x81,1\n")
    chunks = source_chunks(path, _reading("cp1252"), 10, block_bytes=1024)
    with pytest.raises(InputError, match=f"not cp1252 text at byte {len(lines) + 4:,}"):
        next(chunks)
    cut = tmp_path / "cut.csv"
    cut.write_bytes("a,b\n1,\u4e2d".encode("utf-16")[:-1])
    with pytest.raises(InputError, match="not utf-16 text"):
        next(source_chunks(cut, _reading("utf-16"), 10))
    with pytest.raises(InputError, match="not utf-16 text"):
        read_source(cut, _reading("utf-16"))


@pytest.mark.parametrize(
    ("encoding", "says"), [("rot13", "not a text encoding"), ("undefined", "undefined")]
)
def test_a_codec_that_is_not_of_text_is_one_sentence(
    tmp_path: Path, encoding: str, says: str
) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(InputError, match=says):
        list(source_chunks(path, _reading(encoding), 10))
    with pytest.raises(InputError, match=says):
        read_source(path, _reading(encoding))


def test_a_line_ends_at_a_newline_only_in_any_encoding(tmp_path: Path) -> None:
    """U+0085 and a form feed end a line for Python's text readers, not for CSV."""
    path = tmp_path / "latin.csv"
    path.write_bytes("a\x85x,b\n1\x0c2,3\n".encode("latin-1"))
    mapping = _reading("latin-1")
    chunked = _chunked(path, mapping, 1, 4)
    assert chunked.equals(read_source(path, mapping).collect())
    assert chunked.select("a\x85x", "b").rows() == [("1\x0c2", "3")]


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "utf-8-sig"])
@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("bom", [False, True])
def test_empty_lines_before_the_header_are_passed_over(
    tmp_path: Path, encoding: str, gzipped: bool, bom: bool
) -> None:
    """Some exports start with empty lines (after a byte-order mark, maybe); the header is
    the first line with text, and the rows are numbered from the line after it."""
    text = ("\ufeff" if bom and encoding == "utf-8" else "") + "\r\n\na,b\n1,2\n3,4\n"
    whole = _read_every_way(tmp_path / "late-header.csv", text.encode(encoding), gzipped, encoding)
    assert whole.select("__row", "a", "b").rows() == [(1, "1", "2"), (2, "3", "4")]


def _read_every_way(path: Path, text: bytes, gzipped: bool, encoding: str) -> pl.DataFrame:
    """``text`` written to ``path`` (gzipped), read whole; asserts that its chunks and its
    header read alone agree with that."""
    path.write_bytes(gzip.compress(text) if gzipped else text)
    mapping = _reading(encoding)
    whole = read_source(path, mapping).collect()
    assert _chunked(path, mapping, 1, 3).equals(whole)
    assert source_header(path, mapping).collect_schema().names() == whole.columns
    return whole


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252"])
def test_a_header_name_may_hold_a_quoted_newline(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "names.csv"
    path.write_bytes('"a\nx",b\n1,2\n3,4\n'.encode(encoding))
    mapping = _reading(encoding)
    whole = read_source(path, mapping).collect()
    assert whole.select("a\nx", "b").rows() == [("1", "2"), ("3", "4")]
    assert source_header(path, mapping).collect_schema().names() == whole.columns
    assert _chunked(path, mapping, 1, 3).equals(whole)


def test_zstd_in_another_encoding_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd" + b"\x00" * 16)
    with pytest.raises(InputError, match="zstd-compressed file must be UTF-8"):
        list(source_chunks(path, _reading("latin-1"), 10))


def test_an_unreadable_source_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(source_chunks(tmp_path / "absent.csv", MAPPING, 10))


@pytest.mark.parametrize("name", ["rows.csv", "ROWS.CSV.GZ", "rows.csv.gz"])
def test_gzip_is_told_by_its_bytes_not_its_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"a,b\n1,2\n3,4\n"))
    chunked = _chunked(path, MAPPING, 1, 4)
    assert chunked.equals(read_source(path, MAPPING).collect())
    assert chunked.get_column("a").to_list() == ["1", "3"]


def test_a_cut_gzip_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv.gz"
    data = gzip.compress(b"a,b\n" + "".join(f"{i},{i * i}\n" for i in range(5000)).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read"):
        list(source_chunks(path, MAPPING, 10))


def test_a_line_longer_than_the_spare_columns_is_rejected_not_fatal_at_a_block_start(
    tmp_path: Path,
) -> None:
    """Where the blocks are cut must not decide whether a file can be read."""
    path = tmp_path / "long.csv"
    path.write_text("a,b\n1,2\n" + ",".join("x" * 12) + "\n5,6\n")
    whole = read_source(path, MAPPING).collect()
    for block_bytes in (1, 8, 1 << 20):
        chunked = _chunked(path, MAPPING, 2, block_bytes)
        assert chunked.equals(whole)
    assert whole.get_column("__surplus").to_list() == [None, "x", None]


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "utf-16"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_lines_that_end_in_a_carriage_return_alone_are_read(
    tmp_path: Path, encoding: str, gzipped: bool
) -> None:
    """Old Mac exports end lines in CR alone; polars reads such a file as one header line
    and no row, so a load would lose every row without a word."""
    text = '\r\ra,b\r1,"x\ry"\r3,4\r'.encode(encoding)
    whole = _read_every_way(tmp_path / "mac.csv", text, gzipped, encoding)
    assert whole.select("__row", "a", "b").rows() == [(1, "1", "x\ny"), (2, "3", "4")]


def _zstd_stored(data: bytes) -> bytes:
    """``data`` as a zstd frame of one stored (uncompressed) block, under 256 bytes."""
    assert len(data) < 256
    block = (len(data) << 3 | 1).to_bytes(3, "little")  # raw block, the last
    return b"\x28\xb5\x2f\xfd" + bytes([0x20, len(data)]) + block + data


def test_zstd_with_lines_ending_in_a_carriage_return_alone_is_one_sentence(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mac.csv.zst"
    path.write_bytes(_zstd_stored(b"a,b\r1,2\r3,4\r"))
    with pytest.raises(InputError, match="carriage return alone"):
        read_source(path, _reading("utf-8"))
    newlines = tmp_path / "unix.csv.zst"
    newlines.write_bytes(_zstd_stored(b"a,b\n1,2\n3,4\n"))
    assert read_source(newlines, _reading("utf-8")).collect().height == 2


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("ending", ["\r", "\r\n"])
def test_how_lines_end_is_told_past_a_wide_header(
    tmp_path: Path, gzipped: bool, ending: str
) -> None:
    """A header of a few hundred columns is wider than a file's read buffer; and the look
    ahead may end between the CR and the LF of a CRLF file."""
    names = [f"c{i:05d}" for i in range(9361)] + ["z" * 8]
    header = ",".join(names)  # its line end starts at byte 65,535: the last looked at
    assert len(header) == 65_535
    text = (header + ending + ",".join("1" * len(names)) + ending).encode()
    path = tmp_path / ("wide.csv.gz" if gzipped else "wide.csv")
    path.write_bytes(gzip.compress(text) if gzipped else text)
    mapping = _reading("utf-8")
    whole = read_source(path, mapping).collect()
    assert whole.height == 1 and whole.columns[1:-1] == names
    assert whole.select("__row", names[-1]).row(0) == (1, "1")
    assert _chunked(path, mapping, 1, 1 << 10).equals(whole)


def test_zstd_with_a_quoted_carriage_return_in_its_header_is_read(tmp_path: Path) -> None:
    path = tmp_path / "names.csv.zst"
    path.write_bytes(_zstd_stored(b'a,"b\rc"\n1,2\n'))
    assert read_source(path, _reading("utf-8")).collect().select("a", "b\rc").rows() == [("1", "2")]
