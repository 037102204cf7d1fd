"""Tabular extracts: CSV and Parquet files read through a source's column mapping.

A CSV is read twice by DuckDB in parallel (codes and identifiers first, then every field), with
malformed lines kept aside with their line numbers; faults that make a whole file untrustworthy
(the wrong encoding, a field of megabytes, an unclosed quote, a truncated last line) fail the file
with one line.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import os
import tempfile
from pathlib import Path

import duckdb

from wobble.core.config import Source
from wobble.core.errors import WobbleError, first_line
from wobble.core.sql import literal
from wobble.core.warehouse import scalar
from wobble.ingest.reader import TYPED, Fingerprint, Input, select_fields, tabular_input


def open_parquet(con, source: Source, path: Path) -> Input:
    try:
        info = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        raise WobbleError(f"not a readable Parquet file: truncated or damaged? ({first_line(exc)})") from None
    types = {r[0]: r[1] for r in info}
    _check_columns(source, list(types))
    if not scalar(con, "SELECT sum(num_rows) FROM parquet_file_metadata(?)", [str(path)]):
        raise WobbleError("no rows: the file is empty")
    scan = f"read_parquet({literal(str(path))}, file_row_number = true)"
    rel = f"(SELECT file_row_number + 1 AS _ord, {select_fields(source, types)} FROM {scan})"
    first = f"(SELECT {select_fields(source, types)} FROM read_parquet({literal(str(path))}))"
    fields = {f: types[col] if types[col].upper().startswith(TYPED) else "VARCHAR"
              for f, col in source.columns.items()}
    return tabular_input(source, rel, first, fields)


def _check_columns(source: Source, found: list[str]) -> None:
    missing = [c for c in source.columns.values() if c not in found]
    if missing:
        shown = ", ".join(found[:12]) + (" …" if len(found) > 12 else "")
        raise WobbleError(f"missing column(s) {', '.join(missing)} (found: {shown})")


def _csv_header(path: Path, source: Source, size: int) -> list[str]:
    """The header's column names; a clear error when the file is not the text we expect."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        raise WobbleError("the file is empty")
    if b"\x00" in head:
        raise WobbleError("the file is binary, not CSV text")
    line, _, rest = head.partition(b"\n")
    line = line.rstrip(b"\r")
    if b"\r" in line:
        raise WobbleError("lines end in CR only (old Mac format): save it as CSV with CRLF or LF line endings")
    if len(head) == size and not rest.strip():
        raise WobbleError("no rows after the header: the file is empty")
    try:
        text = line.decode(source.encoding)
    except UnicodeDecodeError:
        raise WobbleError(
            f"the header is not {source.encoding} text; set encoding in the source block (utf-8, "
            "cp1252 for Windows and Excel, or latin-1)"
        ) from None
    text = text.removeprefix("\ufeff")  # a byte-order mark before the first name (even a quoted one)
    try:
        names = next(csv.reader(io.StringIO(text), delimiter=source.delimiter), [])
    except csv.Error as exc:
        raise WobbleError(f"the header cannot be read as CSV ({exc})") from None
    return [n.strip() for n in names]


# Encodings DuckDB does not read itself: the file is read through a UTF-8 copy (`transcoded`).
TRANSCODED = {"cp1252": "cp1252", "windows-1252": "cp1252"}
SCRATCH_SUFFIX = ".transcoded"  # beside the warehouse: <warehouse>.transcoded/


def scratch_dir(con) -> Path:
    """The folder for this connection's transcoded copies: beside the warehouse (else the temp folder)."""
    db = scalar(con, "SELECT path FROM duckdb_databases() WHERE database_name = current_database()")
    return Path((db or os.path.join(tempfile.gettempdir(), f"wobble-{os.getpid()}")) + SCRATCH_SUFFIX)


def transcoded(con, path: Path, encoding: str) -> Path:
    """A UTF-8 copy of a file in `encoding`, written in chunks (bounded memory) to a private
    folder beside the warehouse, which `drop_temp` removes once the file is loaded (the copy
    holds what the file holds, identifiers included, for no longer than the file's load).
    A byte the encoding does not define fails the file, naming its line."""
    folder = scratch_dir(con)
    folder.mkdir(mode=0o700, exist_ok=True)
    out = folder / f"{path.stem}.csv"
    decoder = codecs.getincrementaldecoder(TRANSCODED[encoding])()
    lines = 1
    with open(path, "rb") as src, open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as dst:
        while chunk := src.read(1 << 22):
            try:
                dst.write(decoder.decode(chunk).encode("utf-8"))
            except UnicodeDecodeError as exc:
                line = lines + chunk.count(b"\n", 0, exc.start)
                raise WobbleError(f"line {line} is not {encoding} text (byte 0x{chunk[exc.start]:02X}): "
                                  "is it UTF-8 or latin-1? Set encoding in the source block") from None
            lines += chunk.count(b"\n")
        dst.write(decoder.decode(b"", final=True).encode("utf-8"))
    return out


def open_csv(con, source: Source, path: Path, fp: Fingerprint) -> Input:
    names = _csv_header(path, source, fp.size)
    if len(names) < 2:
        raise WobbleError(
            f"only one column found with delimiter {source.delimiter!r}: is the delimiter right?"
        )
    named = [n for n in names if n]
    if len(set(named)) != len(named):
        twice = next(n for n in named if named.count(n) > 1)
        raise WobbleError(f"the header names a column twice ({twice})")
    _check_columns(source, names)
    names = _without_trailing_blanks(path, source, names)
    # A blank name (a trailing delimiter, an unnamed column) is a column no mapping can name.
    columns = "{" + ", ".join(f"{literal(n or _blank_name(i, names))}: 'VARCHAR'" for i, n in enumerate(names)) + "}"
    encoding = source.encoding
    if encoding in TRANSCODED:
        path, encoding = transcoded(con, path, encoding), "utf-8"
    opts = (
        f"delim = {literal(source.delimiter)}, quote = '\"', escape = '\"', header = true, "
        f"auto_detect = false, columns = {columns}, encoding = {literal(encoding)}, "
        f"max_line_size = {source.max_line_bytes}"
    )
    scan = (f"read_csv({literal(str(path))}, {opts}, store_rejects = true, rejects_table = 'rej_errors', "
            "rejects_scan = 'rej_scans')")
    rel = f"(SELECT row_number() OVER () AS _ord, {select_fields(source)} FROM {scan})"
    first = f"(SELECT {select_fields(source)} FROM read_csv({literal(str(path))}, {opts}, ignore_errors = true))"
    inp = tabular_input(source, rel, first, dict.fromkeys(source.columns, "VARCHAR"))
    inp.parallel = f"(SELECT {select_fields(source)} FROM {scan})"
    # Line numbers: the k-th row that parsed sits on line k + 1 (header) + the malformed lines
    # before it. With malformed lines r_1 < r_2 < …, that count is #{i : r_i − i < k + 1}.
    inp.line_sql = ("(_ord + 1 + coalesce((SELECT max(n) FROM rejects WHERE rejects.a < _ord + 1), 0))")
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


def _without_trailing_blanks(path: Path, source: Source, names: list[str]) -> list[str]:
    """The header's names, less trailing blank ones (a header ending in a delimiter) when the first
    row does not have those fields too: the rows then match the header without them."""
    blanks = len(names) - len(list(itertools.dropwhile(lambda n: not n, reversed(names))))
    if not blanks:
        return names
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode(source.encoding, errors="replace")
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
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            parts = chunk.split(b"\n")
            for part in parts[:-1]:
                longest, current = max(longest, current + len(part)), 0
            current += len(parts[-1])
    return max(longest, current)


def csv_rejects(con, source: Source, fp: Fingerprint, path: Path | None = None) -> None:
    """Turn DuckDB's reject tables into `rejects` (one row per malformed line); raise for the
    faults that make the whole file untrustworthy."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE rejects AS
        SELECT line, any_value(csv_line) AS csv_line, string_agg(DISTINCT error_type, '; ') AS error,
               line - row_number() OVER (ORDER BY line) AS a, row_number() OVER (ORDER BY line) AS n
        FROM rej_errors GROUP BY line ORDER BY line""")
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


