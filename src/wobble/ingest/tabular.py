"""Tabular extracts: CSV and Parquet files read through a source's column mapping.

A CSV is read twice by DuckDB in parallel (codes and identifiers first, then every field), with
malformed lines kept aside with their line numbers; faults that make a whole file untrustworthy
(the wrong encoding, a field of megabytes, an unclosed quote, a truncated last line) fail the file
with one line. A gzip-compressed CSV is read as DuckDB reads it, decompressing; UTF-16 text
(Excel's "Unicode text") and Windows-1252 through a UTF-8 copy. Quarantined rows are numbered by
the file's own lines, also where quoted fields hold line breaks (`record_lines`).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import shutil
import tempfile
import zlib
from contextlib import closing
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

from wobble.core.config import Source
from wobble.core.errors import WobbleError, first_line, some_of
from wobble.core.sql import literal
from wobble.core.warehouse import scalar
from wobble.ingest.reader import TYPED, Fingerprint, Input, file_layers, select_fields, tabular_input, text_chunks


def open_parquet(con, source: Source, path: Path) -> Input:
    try:
        info = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        raise WobbleError(f"not a readable Parquet file: truncated or damaged? ({first_line(exc)})") from None
    types = {r[0]: r[1] for r in info}
    # Names are matched without surrounding spaces, as a CSV header's are ("NHS " is NHS).
    named = {}
    for name in types:
        if named.setdefault(name.strip(), name) != name:
            raise WobbleError(f"the file names a column twice ({name.strip()})")
    _check_columns(source, list(named))
    if not scalar(con, "SELECT sum(num_rows) FROM parquet_file_metadata(?)", [str(path)]):
        raise WobbleError("no rows: the file is empty")
    actual = source.model_copy(update={"columns": {f: named[c] for f, c in source.columns.items()}})
    scan = f"read_parquet({literal(str(path))}, file_row_number = true)"
    rel = f"(SELECT file_row_number + 1 AS _ord, {select_fields(actual, types)} FROM {scan})"
    first = f"(SELECT {select_fields(actual, types)} FROM read_parquet({literal(str(path))}))"
    fields = {f: types[col] if types[col].upper().startswith(TYPED) else "VARCHAR"
              for f, col in actual.columns.items()}
    return tabular_input(source, rel, first, fields)  # (quarantined rows name columns as the config does)


def _check_columns(source: Source, found: list[str]) -> None:
    missing = [c for c in source.columns.values() if c not in found]
    if missing:
        raise WobbleError(f"missing column(s) {', '.join(missing)} (found: {some_of(found, 12)})")


def _head(path: Path, size: int = 1 << 16) -> tuple[bytes, bool]:
    """The start of the text DuckDB will read (`text_chunks`), and whether that is all of it."""
    try:
        with closing(text_chunks(path, size)) as chunks:
            head = next(chunks, b"")
            return head, not any(c for c in itertools.islice(chunks, 2))
    except (OSError, EOFError, zlib.error):
        raise WobbleError("the gzip file is damaged or cut short: copy it again") from None
    except UnicodeDecodeError:
        raise WobbleError("the file starts as UTF-16 text but is damaged: save it as UTF-8 CSV") from None


def _csv_header(path: Path, source: Source, encoding: str) -> list[str]:
    """The header's column names; a clear error when the file is not the text we expect."""
    head, whole = _head(path)
    if not head.strip():
        raise WobbleError("the file is empty")
    if b"\x00" in head:
        if head[:4096].count(b"\x00") * 3 > len(head[:4096]):  # every other byte: UTF-16 with no BOM
            raise WobbleError("the file looks like UTF-16 text without a byte-order mark: save it as UTF-8 CSV")
        raise WobbleError("the file is binary, not CSV text")
    line, _, rest = head.partition(b"\n")
    line = line.rstrip(b"\r")
    if b"\r" in line:
        raise WobbleError("lines end in CR only (old Mac format): save it as CSV with CRLF or LF line endings")
    if whole and not rest.strip():
        raise WobbleError("no rows after the header: the file is empty")
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError:
        raise WobbleError(
            f"the header is not {encoding} text; set encoding in the source block (utf-8, "
            "cp1252 for Windows and Excel, or latin-1)"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark before the first name (even a quoted one)
    try:
        names = next(csv.reader(io.StringIO(text), delimiter=source.delimiter), [])
    except csv.Error as exc:
        raise WobbleError(f"the header cannot be read as CSV ({exc})") from None
    return [n.strip() for n in names]


# Encodings DuckDB does not read itself: the file is read through a UTF-8 copy (`transcoded`).
# UTF-16 (its byte-order mark says so, whatever `encoding` says) is decoded by `text_chunks`.
TRANSCODED = {"cp1252": "cp1252", "windows-1252": "cp1252", "utf-16": "utf-8"}
SCRATCH_SUFFIX = ".transcoded"  # beside the warehouse: <warehouse>.transcoded/


def scratch_dir(con) -> Path:
    """The folder for this connection's transcoded copies: beside the warehouse (else the temp folder)."""
    db = scalar(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return Path((db or os.path.join(tempfile.gettempdir(), f"wobble-{os.getpid()}")) + SCRATCH_SUFFIX)


# Copies without a name (Linux's O_TMPFILE), by scratch folder: their descriptors stay open until
# `drop_copies`, and the kernel frees them when the process ends, however it ends.
_UNNAMED: dict[str, list[int]] = {}


def _new_copy(folder: Path, name: str) -> tuple[int, Path, bool]:
    """An empty file for a copy: (its descriptor, the path DuckDB reads it by, whether the
    descriptor must stay open). On Linux the file has no name and is read through /proc/self/fd,
    so a process killed mid-load (SIGKILL included) leaves nothing on disk. Elsewhere, or on a
    filesystem without unnamed files, it is `name` in the private folder, gone at `drop_copies`
    (or, after a crash, at the next load)."""
    if hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError:
            pass
        else:
            _UNNAMED.setdefault(str(folder), []).append(fd)
            return fd, Path(f"/proc/self/fd/{fd}"), True
    out = folder / name
    return os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), out, False


def drop_copies(con) -> None:
    """Remove this connection's copies (`transcoded`): close the unnamed ones, delete the folder."""
    folder = scratch_dir(con)
    for fd in _UNNAMED.pop(str(folder), []):
        os.close(fd)
    shutil.rmtree(folder, ignore_errors=True)


def transcoded(con, path: Path, encoding: str) -> Path:
    """A UTF-8 copy of a file in `encoding` (decompressed, if it is gzip), written in chunks (bounded
    memory) to a private folder beside the warehouse (`_new_copy`: on Linux, a file without a
    name), which `drop_copies` removes once the file is loaded: the copy holds what the file holds,
    identifiers included, for no longer than the file's load. A byte the encoding does not define
    fails the file, naming its line."""
    folder = scratch_dir(con)
    folder.mkdir(mode=0o700, exist_ok=True)
    fd, out, keep_open = _new_copy(folder, f"{path.stem}.csv")
    decoder = codecs.getincrementaldecoder(TRANSCODED[encoding])()
    lines = 1
    with open(fd, "wb", closefd=not keep_open) as dst:
        try:
            for chunk in text_chunks(path):
                try:
                    dst.write(decoder.decode(chunk).encode("utf-8"))
                except UnicodeDecodeError as exc:
                    line = lines + chunk.count(b"\n", 0, exc.start)
                    raise WobbleError(f"line {line} is not {encoding} text (byte 0x{chunk[exc.start]:02X}): "
                                      "is it UTF-8 or latin-1? Set encoding in the source block") from None
                lines += chunk.count(b"\n")
        except UnicodeDecodeError:  # raised by text_chunks: UTF-16 that is not
            raise WobbleError(f"UTF-16 text that cannot be decoded after line {lines}: save it as UTF-8 CSV") from None
        except (OSError, EOFError, zlib.error):
            raise WobbleError("the gzip file is damaged or cut short: copy it again") from None
        dst.write(decoder.decode(b"", final=True).encode("utf-8"))
    return out


def open_csv(con, source: Source, path: Path, fp: Fingerprint) -> Input:
    gzipped, utf16 = file_layers(path)
    encoding = "utf-16" if utf16 else source.encoding  # a byte-order mark is the file's own word
    text_encoding = "utf-8" if utf16 else encoding  # of `text_chunks`, which decodes UTF-16
    names = _csv_header(path, source, text_encoding)
    if len(names) < 2:
        raise WobbleError(
            f"only one column found with delimiter {source.delimiter!r}: is the delimiter right?"
        )
    named = [n for n in names if n]
    if len(set(named)) != len(named):
        twice = next(n for n in named if named.count(n) > 1)
        raise WobbleError(f"the header names a column twice ({twice})")
    _check_columns(source, names)
    names = _without_trailing_blanks(path, source, names, text_encoding)
    # A blank name (a trailing delimiter, an unnamed column) is a column no mapping can name.
    columns = "{" + ", ".join(f"{literal(n or _blank_name(i, names))}: 'VARCHAR'" for i, n in enumerate(names)) + "}"
    if encoding in TRANSCODED:
        path, encoding, gzipped = transcoded(con, path, encoding), "utf-8", False
    opts = (
        f"delim = {literal(source.delimiter)}, quote = '\"', escape = '\"', header = true, "
        f"auto_detect = false, columns = {columns}, encoding = {literal(encoding)}, "
        f"max_line_size = {source.max_line_bytes}, compression = '{'gzip' if gzipped else 'none'}'"
    )
    scan = (f"read_csv({literal(str(path))}, {opts}, store_rejects = true, rejects_table = 'rej_errors', "
            "rejects_scan = 'rej_scans')")
    rel = f"(SELECT row_number() OVER () AS _ord, {select_fields(source)} FROM {scan})"
    first = f"(SELECT {select_fields(source)} FROM read_csv({literal(str(path))}, {opts}, ignore_errors = true))"
    inp = tabular_input(source, rel, first, dict.fromkeys(source.columns, "VARCHAR"))
    inp.parallel = f"(SELECT {select_fields(source)} FROM {scan})"
    # The k-th row that parsed is on line k + a step function of k (`line_steps`, made by
    # `csv_rejects`), looked up with an ASOF join: one probe per row, however many steps.
    inp.line_sql = ("(_ord + (SELECT s.plus FROM (SELECT _ord AS k) x "
                    "ASOF JOIN line_steps s ON x.k >= s.from_ord))")
    inp.rejects = "rejects"
    inp.fingerprint = fp
    inp.path = path
    return inp


def _blank_name(i: int, names: list[str]) -> str:
    """A name for the header's unnamed column `i` that no other column has."""
    name = f"(blank {i + 1})"
    while name in names:
        name += "_"
    return name


def _without_trailing_blanks(path: Path, source: Source, names: list[str], encoding: str) -> list[str]:
    """The header's names, less trailing blank ones (a header ending in a delimiter) when the first
    row does not have those fields too: the rows then match the header without them."""
    blanks = len(names) - len(list(itertools.dropwhile(lambda n: not n, reversed(names))))
    if not blanks:
        return names
    head = _head(path)[0].decode(encoding, errors="replace")
    lines = csv.reader(io.StringIO(head, newline=""), delimiter=source.delimiter)
    try:
        next(lines, None)
        first = next(lines, None)
    except csv.Error:
        return names
    return names[:-blanks] if first is not None and len(first) == len(names) - blanks else names


def duckdb_error_line(exc: Exception) -> str:
    """One line for an error DuckDB raised reading a file: its first line, or what to do."""
    line = first_line(exc)
    if "is not latin-1 encoded" in line:  # bytes 0x80-0x9F, which latin-1 does not use for text
        return ("the file is not latin-1 text: it has Windows characters such as curly quotes or €; "
                "set encoding = \"cp1252\" in the source block")
    return line


def longest_line(path: Path) -> int:
    """The longest line of a file, in bytes (read in chunks: the line may be huge)."""
    longest = current = 0
    for chunk in text_chunks(path):
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            longest, current = max(longest, current + len(part)), 0
        current += len(parts[-1])
    return max(longest, current)


def csv_rejects(con, source: Source, fp: Fingerprint, path: Path | None = None) -> None:
    """Turn DuckDB's reject tables into `rejects` (one row per malformed line, with its line in the
    file) and `line_steps` (`_line_steps`); raise for the faults that make the whole file
    untrustworthy. Needs `staged`, the rows that parsed."""
    mapped = _line_steps(con, fp, path)
    con.register("wobble_lines", mapped)
    try:
        con.execute("""
            CREATE OR REPLACE TEMP TABLE rejects AS
            SELECT m.line, any_value(e.csv_line) AS csv_line, string_agg(DISTINCT e.error_type, '; ') AS error
            FROM rej_errors e JOIN wobble_lines m ON m.duckdb_line = e.line
            GROUP BY m.line ORDER BY m.line""")
    finally:
        con.unregister("wobble_lines")
    faults = dict(con.execute("""
        SELECT error, min(line) FROM (SELECT line, unnest(string_split(error, '; ')) AS error FROM rejects)
        GROUP BY error""").fetchall())
    if "INVALID ENCODING" in faults or "INVALID UNICODE" in faults:
        line = faults.get("INVALID ENCODING", faults.get("INVALID UNICODE"))
        raise WobbleError(
            f"line {line} is not {source.encoding} text; set encoding = \"cp1252\" (Windows, Excel) or "
            "\"latin-1\" in the source block"
        )
    if "LINE SIZE OVER MAXIMUM" in faults:
        line = faults["LINE SIZE OVER MAXIMUM"]
        # DuckDB keeps only the start of an over-long line, so measure it in the file itself
        size = longest_line(path) if path else 0
        raise WobbleError(
            f"line {line} is longer than the {source.max_line_bytes:,}-byte limit (the longest line is "
            f"{size / 1e6:.1f} MB): a field holding a whole document, or a quote "
            "never closed? Raise max_line_bytes in the source block if such fields are expected"
        )
    last = scalar(con, "SELECT max(line) FROM rejects")
    if "UNQUOTED VALUE" in faults:
        raise WobbleError(
            f"line {faults['UNQUOTED VALUE']} opens a quote that is never closed, so the rows after "
            "it cannot be read safely"
        )
    if not fp.ends_with_newline and last is not None and last >= fp.line_breaks + 1:
        raise WobbleError(
            f"the file ends part-way through a row (line {last}): it looks truncated; copy it again"
        )


def _line_steps(con, fp: Fingerprint, path: Path | None) -> pl.DataFrame:
    """Create `line_steps` (from_ord, plus): the row that parsed k-th is on line k + the `plus` of the
    last step with from_ord <= k (`open_csv`'s `line_sql`). Return each malformed record's line in
    the file (duckdb_line: DuckDB's number for it, which counts records and blank lines; line).

    Records are numbered from the header (1); a row's record is k + 1 + the malformed records before
    it, and its line is its record + the lines before it that start no record (inside a quoted
    field, or blank), found by `record_lines` only when the file has more lines than records. If
    that scan does not find the records DuckDB found, rows are numbered by record, as DuckDB does."""
    found = con.execute("SELECT line, min(line_byte_position) AS pos FROM rej_errors "
                        "GROUP BY line ORDER BY line").fetchnumpy()
    duckdb_line = found["line"].astype(np.int64)
    line = record = duckdb_line
    shift_r = shift_gap = np.zeros(0, np.int64)
    expected = 1 + int(scalar(con, "SELECT count(*) FROM staged")) + len(record)
    if path is not None and fp.line_breaks + (0 if fp.ends_with_newline else 1) != expected:
        records, r, at_line, at = record_lines(path, found["pos"].astype(np.int64))
        if records == expected:  # (positions ascend with DuckDB's lines, so `at` is in that order)
            shift_r, shift_gap, line = r, at_line - r, at
            record = line - np.concatenate(([0], shift_gap))[np.searchsorted(at_line, line, side="right")]
    a = record - np.arange(1, len(record) + 1)  # row k comes after malformed record i when a_i <= k
    k = np.unique(np.concatenate(([0], a, shift_r - 1 - np.searchsorted(record, shift_r))))
    rec = k + 1 + np.searchsorted(a, k, side="right")
    plus = rec - k + np.concatenate(([0], shift_gap))[np.searchsorted(shift_r, rec, side="right")]
    keep = np.concatenate(([True], plus[1:] != plus[:-1]))
    steps = pl.DataFrame({"from_ord": k[keep], "plus": plus[keep]})
    con.register("wobble_steps", steps)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE line_steps AS SELECT * FROM wobble_steps ORDER BY from_ord")
    finally:
        con.unregister("wobble_steps")
    return pl.DataFrame({"duckdb_line": duckdb_line, "line": line})


SCAN_BYTES = 1 << 22


def record_lines(path: Path, positions: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Where a CSV's records start, as DuckDB splits them (quote '"', doubled inside a field): a line
    starts a record when an even number of quotes comes before it and it is not blank (empty, or
    a lone CR). Read in chunks with numpy, no Python per line: the number of records (the header is
    record 1); (r, line) wherever the lines that start no record before record r change, record r
    being on that line; and the line of each byte position in `positions` (ascending).

    e.g. 'a,b\\n1,"x\\ny"\\n\\n2,z\\n': records on lines 1, 2 and 5, so (r, line) = (3, 5).
    """
    at = np.zeros(len(positions), dtype=np.int64)
    rs, lines = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    offset = newlines = quotes = records = extra = 0
    # the line still to be classified (its end not yet read): the newline before it, the quotes
    # before that newline, its line number; and the byte before the chunk
    carry_nl, carry_q, carry_line, last = -1, 0, 1, 0
    for chunk in text_chunks(path, SCAN_BYTES):
        buf = np.frombuffer(chunk, dtype=np.uint8)
        nl = np.flatnonzero(buf == 10)
        q = np.flatnonzero(buf == 34)
        here = (positions >= offset) & (positions < offset + len(buf))
        at[here] = newlines + np.searchsorted(nl, positions[here] - offset) + 1
        starts_nl = np.concatenate(([carry_nl], nl + offset))
        starts_q = np.concatenate(([carry_q], quotes + np.searchsorted(q, nl)))
        starts_line = carry_line + np.arange(len(starts_nl))
        length = nl + offset - starts_nl[:-1] - 1  # each classified line, without its newline
        before_end = np.where(nl > 0, buf[np.maximum(nl - 1, 0)], last)
        blank = (length == 0) | ((length == 1) & (before_end == 13))
        is_record = (starts_q[:-1] % 2 == 0) & ~blank
        records, extra = _shifts(starts_line[:-1][is_record], records, extra, rs, lines)
        carry_nl, carry_q, carry_line = int(starts_nl[-1]), int(starts_q[-1]), int(starts_line[-1])
        newlines, quotes, offset, last = newlines + len(nl), quotes + len(q), offset + len(buf), int(buf[-1])
    at[positions >= offset] = newlines + 1
    length = offset - carry_nl - 1  # the last line, ended by the end of the file
    if carry_q % 2 == 0 and length > 0 and not (length == 1 and last == 13):
        records, extra = _shifts(np.array([carry_line], np.int64), records, extra, rs, lines)
    return records, np.concatenate(rs), np.concatenate(lines), at


def _shifts(record_at: np.ndarray, records: int, extra: int, rs: list, lines: list) -> tuple[int, int]:
    """Number the records starting on lines `record_at` after `records`, and keep (r, line) where
    the lines between records (line − r) grow; return the records so far and that count."""
    r = records + 1 + np.arange(len(record_at))
    gap = record_at - r
    grew = gap != np.concatenate(([extra], gap[:-1]))
    rs.append(r[grew])
    lines.append(record_at[grew])
    return records + len(r), int(gap[-1]) if len(gap) else extra
