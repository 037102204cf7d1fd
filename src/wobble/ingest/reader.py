"""Reading a file as rows of contract fields: the `Input` every reader returns, and the SQL that
turns a field's text into a value (timestamps in the warehouse's zone, codes into the vocabulary,
identifiers masked in quarantined rows).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wobble.core.clock import WAREHOUSE_TZ
from wobble.core.config import CODE_SPACES, Source, code_key
from wobble.core.sql import identifier, literal
from wobble.core.vocab import CONTRACT_VALUES
from wobble.core.warehouse import scalar
from wobble.ingest.identifiers import (
    without_numbers_sql,
)

MASK = "**********"
# Fields whose values are identifiers: masked or removed in quarantined rows.
MASKED = {"nhs_number": MASK, "birth_date": "(removed)", "postcode": "(removed)",
           "forename": "(removed)", "surname": "(removed)",
           "professional": "(masked)", "alt_id": "(masked)", "patient_ref": "(masked)"}
NOT_SHOWN = "(not shown)"  # a value of a field in `Input.hidden`
# Coded fields: the vocabulary each maps into.
VOCAB = CONTRACT_VALUES
# Coded fields whose unknown values reject the row; the others are counted and left empty (sex:
# kept as "not_known", so nobody is dropped for it).
REJECTING = {"service", "status", "tag"}
# Codes every source understands without a `values` block: sex "not known", "not specified" and
# "indeterminate" as the NHS Data Dictionary (person stated gender: 0, 9, X) and HL7 v2 (U) write them.
BUILT_IN = {"sex": dict.fromkeys(("U", "u", "X", "x", "0", "9", "I", "unknown", "not known", "not specified",
                                  "indeterminate", "Unknown", "Not known", "Not specified", "Indeterminate"),
                                 "not_known")}


@dataclass
class Fingerprint:
    """A file's content hash, and what a byte scan says about its shape."""

    sha256: str
    size: int
    line_breaks: int
    ends_with_newline: bool


# A file changed less than this before it was hashed may change again within its file system's
# timestamp resolution (whole seconds, or two, on some) without its times showing it: hash it again.
SETTLED_NS = 2_000_000_000


def known_hash(con, path: Path) -> str | None:
    """The content hash recorded for `path` (`remember_hash`) when the file has the same size,
    inode, modification and change times as then, and had settled before it was hashed; else None.

    As git's index trusts a file's stat data: any write changes its change time (which no tool
    sets back), and a file replaced by another has a new inode, so an unchanged file need not be
    read again to know it is one already loaded."""
    try:
        st = path.stat()
    except OSError:
        return None
    return scalar(con, """
        SELECT content_hash FROM file_hashes
        WHERE path = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ? AND inode = ? AND device = ?
          AND hashed_at_ns - greatest(mtime_ns, ctime_ns) >= ?""",
        [_path_key(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, SETTLED_NS])


def _path_key(path: Path) -> str:
    """`file_hashes.path`: the SHA-256 of the file's resolved path, not the path, which may name a
    person (a FHIR file of one person's records: `wobble.ingest.plan.personal_name`)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()


def stat_and_fingerprint(path: Path) -> tuple[Fingerprint, os.stat_result, int]:
    """`fingerprint(path)`, with the file's stat data and the clock (ns) taken before it was read:
    what `remember_hash` records (a file written while it was read then no longer matches)."""
    st = path.stat()
    started = time.time_ns()
    return fingerprint(path), st, started


def remember_hash(con, path: Path, st: os.stat_result, started_ns: int, sha256: str) -> None:
    """Record `path`'s hash with its stat data, for `known_hash`."""
    key = _path_key(path)
    con.execute("DELETE FROM file_hashes WHERE path = ?", [key])
    con.execute("INSERT INTO file_hashes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [key, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, sha256, started_ns])


def fingerprint(path: Path) -> Fingerprint:
    """The file's content hash (of its bytes as they are) and its line breaks, counted in the text
    DuckDB reads (`text_chunks`: a gzip file's content, UTF-16 text as UTF-8)."""
    h = hashlib.sha256()
    size = breaks = 0
    last = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
            breaks += chunk.count(b"\n")
            last = chunk[-1:]
    if any(file_layers(path)):
        try:
            breaks, last = 0, b""
            for chunk in text_chunks(path):
                breaks += chunk.count(b"\n")
                last = chunk[-1:] or last
        except (OSError, EOFError, ValueError, zlib.error):
            pass  # damaged: the reader fails the file with one line, so the counts never matter
    return Fingerprint(h.hexdigest(), size, breaks, last == b"\n")


GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # Excel's "Unicode text" starts with one


def file_layers(path: Path) -> tuple[bool, bool]:
    """(gzip-compressed, UTF-16 text with a byte-order mark), from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(2)
        if head != GZIP_MAGIC:
            return False, head in UTF16_BOMS
        f.seek(0)
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as z:
                return True, z.read(2) in UTF16_BOMS
        except (OSError, EOFError, zlib.error):
            return True, False


def text_chunks(path: Path, size: int = 1 << 22) -> Iterator[bytes]:
    """The file's bytes as DuckDB is given them, in chunks: a gzip file decompressed, and UTF-16
    text (byte-order mark first) as UTF-8 without the mark; any other file as it is."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        chunk = f.read(size)
        decoder = codecs.getincrementaldecoder("utf-16")() if chunk[:2] in UTF16_BOMS else None
        while chunk:
            yield decoder.decode(chunk).encode("utf-8") if decoder else chunk
            chunk = f.read(size)
        if decoder:
            yield decoder.decode(b"", final=True).encode("utf-8")


@dataclass
class Input:
    """One file, read as rows of contract fields.

    `relation` is SQL for the rows that parsed: `_ord` (position among them) and one column per
    field; `first_pass` is the same rows' identifier and code columns only. `line_sql` turns
    `_ord` into a line number in the file. `rejects` names a temp table of malformed lines.
    """

    kind: str  # csv | parquet | fhir
    table: str
    relation: str
    first_pass: str
    fields: dict[str, str]  # field → DuckDB type of its column in `relation`
    labels: dict[str, str]  # field → the source's own column name (for quarantined rows)
    values: dict[str, dict[str, str]]
    defaults: dict[str, str]
    timestamp_format: str | None
    date_format: str | None
    timezone: str
    line_sql: str = "_ord"
    # The same rows as `relation` without `_ord`, for a CSV: DuckDB numbers rows only in one
    # thread, but keeps the file's order in a join-free parallel CREATE TABLE AS, so there a
    # row's position is its rowid.
    parallel: str | None = None
    rejects: str | None = None
    out_of_scope: int = 0
    system_prefix: str = ""  # FHIR: the pseudonym namespace of patient references
    fingerprint: Fingerprint | None = None
    path: Path | None = None  # the file (a CSV), for messages that must measure it
    required: tuple[str, ...] | None = None  # persons fields that must be present, beyond the identifier
    extra_unmapped: dict[str, dict[str, int]] = field(default_factory=dict)  # found by the reader
    formats: dict[str, str] = field(default_factory=dict)  # field → its own strptime format
    # coded fields with too many unmapped values to be a code list (a wrong column, perhaps of
    # names): their values are not shown in quarantined rows either (set by the first pass)
    hidden: set[str] = field(default_factory=set)


def tabular_input(source: Source, rel_sql: str, first_sql: str, fields: dict[str, str], **kw) -> Input:
    return Input(
        kind=source.kind, table=source.table, relation=rel_sql, first_pass=first_sql, fields=fields,
        labels=dict(source.columns), values=source.values, defaults=source.defaults,
        timestamp_format=source.timestamp_format, date_format=source.date_format,
        timezone=source.timezone, formats=dict(source.formats), **kw,
    )


TYPED = ("TIMESTAMP", "DATE")  # column types read as they are; everything else becomes text


# Fields read as they come (blank → NULL), not trimmed: NHS numbers lose their separators when
# normalised, codes and dates are trimmed only when they do not match as they are (trimming
# every value of a 30-million-row file costs more than parsing its dates).
UNTRIMMED = {"nhs_number", "occurred_at", "recorded_at", "birth_date", "died_on", "registered_on",
              "service", "status", "mode", "tag", "author_role", "sex", "ethnicity_group", "opted_out"}


def select_fields(source: Source, types: dict[str, str] | None = None) -> str:
    """Each mapped column under its contract field's name: dates and timestamps as typed, other
    text with blanks as NULL (and trimmed, but for the fields in `UNTRIMMED`)."""
    out = []
    for f, col in source.columns.items():
        typ = (types or {}).get(col, "VARCHAR").upper()
        if typ.startswith(TYPED):
            expr = identifier(col)
        elif f in UNTRIMMED:
            expr = f"nullif({identifier(col)}::VARCHAR, '')"
        else:
            expr = f"nullif(trim({identifier(col)}::VARCHAR), '')"  # (spaces only: trimming tabs costs more)
        out.append(f"{expr} AS {f}")
    return ", ".join(out)


def field_text(f: str, inp: Input) -> str:
    """The field as text (readers trim it, and give NULL when blank), NULL when not mapped."""
    if f not in inp.fields:
        return "NULL::VARCHAR"
    return f"r.{f}" if inp.fields[f] == "VARCHAR" else f"r.{f}::VARCHAR"


# Text ending in a UTC offset (Z, +01:00, -0500, +01) or UTC/GMT after a time: an instant, not a
# wall-clock time.
OFFSET_RE = r"[0-9]:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)? *(Z|z|UTC|GMT|[+-][0-9]{2}(:?[0-9]{2})?)[ \t\r\n]*$"


def field_timestamp(f: str, inp: Input, fmt: str | None) -> str:
    """The field as a naive TIMESTAMP in the warehouse's time zone; NULL when unparseable.
    `fmt` is the source's default format; the field's own (`formats`) wins.

    A time that names its offset (a TIMESTAMP WITH TIME ZONE column; text ending in 'Z' or
    '+01:00'; a format with %z) is an instant, converted to London wall-clock time whatever the
    session's or host's time zone, and the source's `timezone` does not apply to it; a naive time
    is read in the source's `timezone`."""
    if f not in inp.fields:
        return "NULL::TIMESTAMP"
    fmt = inp.formats.get(f, fmt)
    typ = inp.fields[f].upper()
    col = f"r.{f}"
    london = literal(WAREHOUSE_TZ)
    if typ.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone({london}, {col})"
    text = field_text(f, inp)
    aware = None
    if typ.startswith("TIMESTAMP") or typ == "DATE":
        ts = f"{col}::TIMESTAMP"
    elif fmt and ("%z" in fmt or "%Z" in fmt):  # strptime gives a TIMESTAMP WITH TIME ZONE
        return (f"timezone({london}, coalesce(try_strptime({text}, {literal(fmt)}), "
                f"try_strptime({trim_sql(text)}, {literal(fmt)})))")
    elif fmt:  # (coalesce tries the second only where the first failed)
        ts = f"coalesce(try_strptime({text}, {literal(fmt)}), try_strptime({trim_sql(text)}, {literal(fmt)}))"
    else:
        ts = f"coalesce(try_cast({text} AS TIMESTAMP), try_cast({trim_sql(text)} AS TIMESTAMP))"
        aware = (f"timezone({london}, coalesce(try_cast({text} AS TIMESTAMPTZ), "
                 f"try_cast({trim_sql(text)} AS TIMESTAMPTZ)))")
    if inp.timezone != WAREHOUSE_TZ:
        ts = f"timezone({london}, timezone({literal(inp.timezone)}, {ts}))"
    if aware:
        ts = f"(CASE WHEN regexp_matches({text}, {literal(OFFSET_RE)}) THEN {aware} ELSE {ts} END)"
    return ts


def code_map(inp: Input, f: str) -> dict[str, int]:
    """Source code → 1-based index into the field's vocabulary (0: known to mean 'no value')."""
    vocab = VOCAB[f]
    out = {v: i + 1 for i, v in enumerate(vocab)}
    for src, dst in [*BUILT_IN.get(f, {}).items(), *inp.values.get(f, {}).items()]:
        out[src] = 0 if dst == "" else vocab.index(dst) + 1
    return out


def code_index_sql(f: str, inp: Input, text: str, dflt: str) -> str:
    """SQL: the vocabulary index (`code_map`) of the code `text`; `dflt` when it is blank; NULL
    when no mapping knows it. The code as it comes first (nearly every row, so the cheap test);
    else without surrounding white space of any kind and ignoring case (`code_key`: " DNA",
    "Seen\u00a0", "seen"), the source's own keys before the built-in ones (the config refuses
    two keys of a source that differ only so, `Source.check`)."""
    exact = code_map(inp, f)
    loose: dict[str, int] = {}
    for k in [*inp.values.get(f, {}), *exact]:  # the source's own keys first
        loose.setdefault(code_key(k), exact[k])
    arms = " ".join(f"WHEN {literal(k)} THEN {v}" for k, v in exact.items())
    loose_arms = " ".join(f"WHEN {literal(k)} THEN {v}" for k, v in loose.items() if k)
    return (f"(CASE WHEN {text} IS NULL THEN {dflt} ELSE (CASE {text} {arms} ELSE "
            f"(CASE lower({spaces_trimmed_sql(text)}) {loose_arms} WHEN '' THEN {dflt} END) END) END)")


def coded_field(f: str, inp: Input) -> tuple[str, str]:
    """SQL for a coded field: (vocabulary index or NULL, is-unknown check written over `@f`)."""
    default = inp.defaults.get(f)
    dflt = str(VOCAB[f].index(default) + 1) if default else "NULL"
    if f not in inp.fields:
        return f"{dflt}::UTINYINT", "false"
    idx = f"{code_index_sql(f, inp, field_text(f, inp), dflt)}::UTINYINT"
    return idx, f"(CASE WHEN @{f} IS NOT NULL OR NOT {present_sql(f, inp)} THEN false ELSE true END)"


def vocab_value(f: str, idx: str) -> str:
    """SQL: the vocabulary value for an index from `coded_field` (NULL for 0 or NULL)."""
    values = "[" + ", ".join(literal(v) for v in VOCAB[f]) + "]"
    return f"CASE WHEN {idx} > 0 THEN {values}[{idx}] END"


def present_sql(f: str, inp: Input) -> str:
    """SQL: the field has a value that is not just blanks (trimming only what starts blank)."""
    if f not in inp.fields:
        return "false"
    text = field_text(f, inp)
    if inp.fields[f] != "VARCHAR":
        return f"({text} IS NOT NULL)"
    # (a value starting with a printable ASCII character is present; only others are trimmed)
    return (f"({text} IS NOT NULL AND (CASE WHEN ascii({text}) BETWEEN 33 AND 126 THEN true "
            f"ELSE {spaces_trimmed_sql(text)} <> '' END))")


def trim_sql(sql: str) -> str:
    """SQL: the text without leading and trailing spaces, tabs and line breaks."""
    return f"trim({sql}, ' ' || chr(9) || chr(13) || chr(10))"


def spaces_trimmed_sql(sql: str) -> str:
    """SQL: the text without leading and trailing white space of any kind (`CODE_SPACES`). Text that
    starts and ends with a printable ASCII character has none: DuckDB's trim with a set of
    characters costs ten times the test."""
    return (f"(CASE WHEN ascii({sql}) BETWEEN 33 AND 126 AND ascii(({sql})[-1:]) BETWEEN 33 AND 126 THEN {sql} "
            f"ELSE trim({sql}, {literal(CODE_SPACES)}) END)")


def masked_raw_sql(inp: Input) -> str:
    """The row as `column=value` pairs over the mapped columns only, identifiers masked, and
    long digit runs (anything shaped like an NHS number) removed from the other values.

    Columns the config does not map (names, addresses, free text) are never read into it.
    """
    parts = []
    for f, label in inp.labels.items():
        if f not in inp.fields:
            continue
        if stand_in := _stand_in(inp, f):
            val = f"CASE WHEN {field_text(f, inp)} IS NULL THEN '' ELSE {literal(stand_in)} END"
        else:
            val = without_numbers_sql(f"left(coalesce(r.{f}::VARCHAR, ''), 200)")
        parts.append(f"{literal(label + '=')} || {val}")
    return " || '; ' || ".join(parts) if parts else "''"




def _stand_in(inp: Input, f: str) -> str | None:
    """What a quarantined row shows for field `f` instead of its value (an identifier's mask, or
    `NOT_SHOWN` for a field in `inp.hidden`); None when the value itself is shown."""
    return MASKED.get(f) or (NOT_SHOWN if f in inp.hidden else None)


def detail_value_sql(inp: Input, f: str) -> str:
    """SQL: `field: 'value'` for a quarantined row's detail, the value masked as in `raw`
    (identifiers never shown, long digit runs removed) and '(blank)' when there is none."""
    name = literal(f + ": ")
    if f not in inp.fields:
        return literal(f + ": (blank)")
    text = f"r.{f}::VARCHAR"
    if stand_in := _stand_in(inp, f):
        return f"{name} || CASE WHEN {text} IS NULL THEN '(blank)' ELSE {literal(stand_in)} END"
    shown = without_numbers_sql(f"left({spaces_trimmed_sql(text)}, 60)")
    return (f"{name} || CASE WHEN coalesce({spaces_trimmed_sql(text)}, '') = '' THEN '(blank)' "
            f"ELSE '''' || {shown} || '''' END")
