"""Tabular extracts: CSV and Parquet files read through a source's column mapping.

A CSV is read twice by DuckDB in parallel (codes and identifiers first, then every field), with
malformed lines kept aside with their line numbers; faults that make a whole file untrustworthy
(the wrong encoding, a field of megabytes, an unclosed quote, a truncated last line) fail the file
with one line.
"""

from __future__ import annotations

import csv
import io
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


def _csv_header(path: Path, source: Source) -> list[str]:
    """The header's column names; a clear error when the file is not the text we expect."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if not head.strip():
        raise WobbleError("the file is empty")
    if b"\x00" in head:
        raise WobbleError("the file is binary, not CSV text")
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode(source.encoding)
    except UnicodeDecodeError:
        raise WobbleError(
            f"the header is not {source.encoding} text; set encoding in the source block"
        ) from None
    names = next(csv.reader(io.StringIO(text), delimiter=source.delimiter), [])
    return [n.strip().lstrip("\ufeff") for n in names]


def open_csv(con, source: Source, path: Path, fp: Fingerprint) -> Input:
    names = _csv_header(path, source)
    if len(names) < 2:
        raise WobbleError(
            f"only one column found with delimiter {source.delimiter!r}: is the delimiter right?"
        )
    if len(set(names)) != len(names):
        raise WobbleError("the header names a column twice")
    _check_columns(source, names)
    columns = "{" + ", ".join(f"{literal(n)}: 'VARCHAR'" for n in names) + "}"
    opts = (
        f"delim = {literal(source.delimiter)}, quote = '\"', escape = '\"', header = true, "
        f"auto_detect = false, columns = {columns}, encoding = {literal(source.encoding)}, "
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
            f"line {line} is not {source.encoding} text; set encoding = \"latin-1\" in the source "
            "block if the system writes Windows/Latin-1 files"
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


