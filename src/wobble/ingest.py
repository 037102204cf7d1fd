"""Ingest: source extracts → the contract's `persons`, `contacts` and `tags`, or `quarantine`.

Reads every file named by the sources in `wobble.toml` (CSV, Parquet, FHIR R4 Bulk Data NDJSON;
persons first, so that activity can be matched to a registered person), validates each row,
pseudonymises identifiers and writes, per file, in one transaction:

- the rows that pass, to `persons` / `contacts` / `tags` (one row per person / contact / tag);
- every row that does not, to `quarantine` (one row per input row, with its line, a reason and
  the row with identifiers masked);
- one `load_ledger` row: the file's content hash and `rows_in = loaded + quarantined + duplicate`.

Then it writes a data-quality report (`wobble.quality`).

A file whose content hash is already in the ledger is skipped, so loading twice changes nothing.
A contact or tag already loaded under the same source system and record id is a duplicate when it
is identical, a correction (it replaces the old version) when it differs and is not older, and a
duplicate again when it is an older version than the one held.

Reasons, first match wins: malformed_line, missing_field, entered_in_error (FHIR), invalid_nhs_number,
impossible_date, unknown_code, person_not_found, opted_out (activity of people with a national
data opt-out is not kept: only the line and reason), then duplicate.

How it scales (docs/ingest.md): each file is read twice by DuckDB, in parallel. The first pass
collects the distinct identifiers and codes, so each NHS number (and staff code) is pseudonymised
once, in SQL, and unmapped codes are counted. The second pass parses and validates every row into
one compact staging table whose rowids follow the file's lines. Raw NHS numbers live only in this
run's temporary tables (in memory, or DuckDB's spill folder), never in the warehouse.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from wobble.config import Config, Source
from wobble.errors import WobbleError
from wobble.identifiers import (
    NHS_LIKE,
    NUMBER_REMOVED,
    install_sql_pseudonym,
    nhs_normalised_sql,
    nhs_valid_sql,
    without_numbers_sql,
)
from wobble.vocab import AUTHOR_ROLES, CONCERN_TAGS, ETHNICITY_GROUPS, MODES, SERVICES, SEXES, STATUSES, TAGS
from wobble.warehouse import connect, scalar, transaction

REASONS = (
    "malformed_line", "missing_field", "entered_in_error", "invalid_nhs_number", "impossible_date",
    "unknown_code", "person_not_found", "opted_out", "duplicate",
)
TABLE_ORDER = {"persons": 0, "contacts": 1, "tags": 2}
WAREHOUSE_TZ = "Europe/London"  # stored times are this zone's wall-clock time
MASK = "**********"
# Fields whose values are identifiers: masked or removed in quarantined rows.
_MASKED = {"nhs_number": MASK, "birth_date": "(removed)", "postcode": "(removed)",
           "professional": "(masked)", "alt_id": "(masked)", "patient_ref": "(masked)"}
# Coded fields: the vocabulary each maps into.
_VOCAB = {"service": SERVICES, "status": STATUSES, "mode": MODES, "tag": TAGS, "sex": SEXES,
          "ethnicity_group": ETHNICITY_GROUPS, "opted_out": ("true", "false"),
          "author_role": AUTHOR_ROLES}
# Coded fields whose unknown values reject the row; the others are counted and left empty.
_REJECTING = {"service", "status", "tag", "sex"}


@dataclass
class FileResult:
    """What happened to one file."""

    source: str
    file: str
    status: str  # loaded | skipped (already loaded) | failed | not_read (a FHIR type wobble ignores)
    table: str | None = None
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    rows_replaced: int = 0  # older versions a correction replaced
    rows_withdrawn: int = 0  # contacts and tags removed because their person opted out
    rows_retracted: int = 0  # records removed because the source marked them entered-in-error
    rows_out_of_scope: int = 0  # FHIR resources wobble does not read (e.g. vital-sign observations)
    reasons: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, dict[str, int]] = field(default_factory=dict)  # field → code → rows
    defaulted: dict[str, int] = field(default_factory=dict)  # field → rows given a default
    other_identifier: int = 0  # persons pseudonymised from an identifier other than an NHS number
    line_breaks_in_fields: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class IngestResult:
    """Totals over all files, and each file's own result."""

    files: list[FileResult]
    opted_out_persons: int = 0
    opt_out_list: dict[str, int] = field(default_factory=dict)
    report_md: Path | None = None
    report_html: Path | None = None
    started_at: datetime = field(default_factory=datetime.now)
    seconds: float = 0.0

    def total(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            for k, v in f.reasons.items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    def summary(self) -> dict:
        rows = self.total("rows_in")
        return {
            "rows_in": rows,
            "rows_loaded": self.total("rows_loaded"),
            "rows_quarantined": self.total("rows_quarantined"),
            "rows_duplicate": self.total("rows_duplicate"),
            "rows_replaced": self.total("rows_replaced"),
            "rows_withdrawn": self.total("rows_withdrawn") + self.opt_out_list.get("rows_withdrawn", 0),
            "rows_retracted": self.total("rows_retracted"),
            "files_loaded": sum(f.status == "loaded" for f in self.files),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_failed": len(self.failed),
            "files_not_read": sum(f.status == "not_read" for f in self.files),
            "quarantine_reasons": self.reasons(),
            "opted_out_persons": self.opted_out_persons,
            "opt_out_list": self.opt_out_list,
            "persons_from_other_identifier": self.total("other_identifier"),
            "errors": [f"{f.file}: {f.error}" for f in self.failed],
            "report": str(self.report_md) if self.report_md else None,
            "report_html": str(self.report_html) if self.report_html else None,
            "rows_per_second": round(rows / self.seconds) if self.seconds else None,
            "seconds": round(self.seconds, 2),
        }


def ingest(
    cfg: Config,
    *,
    key: bytes,
    progress: Callable[[str], None] | None = None,
    wait_seconds: float | None = None,
    only: list[str] | None = None,
    report: bool = True,
) -> IngestResult:
    """Load every configured source (or those named in `only`) into the warehouse.

    Files that cannot be read at all (wrong delimiter, missing columns, not text…) are reported
    as failed with a one-line reason; the other files still load. Returns counts per file, and
    the paths of the data-quality report.
    """
    t0 = time.perf_counter()
    names = list(cfg.sources) if only is None else only
    if not names:
        raise WobbleError("no sources in the config: add a [sources.<name>] block")
    unknown = [n for n in names if n not in cfg.sources]
    if unknown:
        raise WobbleError(f"no source named {unknown[0]!r} in the config")
    plan = _plan(cfg, names)
    result = IngestResult([])
    wait = cfg.ingest.wait_seconds if wait_seconds is None else wait_seconds
    with connect(cfg.warehouse, wait_seconds=wait) as con, ThreadPoolExecutor(1) as hasher:
        run = _Run(con, cfg, key)
        # Fingerprint files in the background, in load order, while earlier files load.
        prints = {f.path: hasher.submit(_fingerprint, f.path) for f in plan if f.path and not f.not_read}
        result.opt_out_list = run.apply_opt_out_list()
        for f in plan:
            if f.path is None:
                result.files.append(FileResult(f.name, f.source.path, "failed",
                                               error=f"no file matches {f.source.path}"))
                continue
            if f.not_read:
                result.files.append(FileResult(f.name, _display_path(cfg, f.path), "not_read",
                                               error=f"resource type {f.fhir_type or 'unknown'} is not read"))
                continue
            if progress:
                progress(f"{f.name}: {f.path.name}")
            fr = run.load_file(f.name, f.source, f.path, prints[f.path])
            result.files.append(fr)
            if fr.table == "persons" and fr.status == "loaded" and run.opt_outs:
                listed = run.apply_opt_out_list()  # newly registered people may be on the list
                for k in ("persons_flagged", "rows_withdrawn"):
                    listed[k] += result.opt_out_list[k]
                result.opt_out_list = listed
        result.opted_out_persons = int(scalar(con, "SELECT count(*) FROM persons WHERE opted_out"))
        result.seconds = time.perf_counter() - t0
        if report:
            from wobble.quality import write_report

            if progress:
                progress("data-quality report")
            result.report_md, result.report_html = write_report(con, cfg, result)
    result.seconds = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------
# The run: planning, fingerprints, the per-run identifier cache, lookups and the opt-out list
# ---------------------------------------------------------------------------------------------


@dataclass
class _Planned:
    """One file to load (or a source with no file: `path` None)."""

    name: str
    source: Source
    path: Path | None
    fhir_type: str = ""  # the FHIR resource type of an export file

    @property
    def not_read(self) -> bool:
        from wobble.fhir import TABLE_OF

        return self.source.kind == "fhir" and self.path is not None and self.fhir_type not in TABLE_OF


def _plan(cfg: Config, names: list[str]) -> list[_Planned]:
    """The files in load order: persons before contacts before tags, and last the FHIR files
    of resource types wobble does not read (reported, left alone)."""
    from wobble.fhir import fhir_files

    plan: list[tuple[int, _Planned]] = []
    for name in names:
        source = cfg.sources[name]
        if source.kind == "fhir":
            files = [_Planned(name, source, p, kind) for kind, p in fhir_files(cfg.path(source.path))]
            plan += [(3 if f.not_read else 0 if f.fhir_type == "Patient" else 1, f) for f in files]
        else:
            order = TABLE_ORDER[source.table]
            files = [_Planned(name, source, Path(p)) for p in sorted(glob.glob(str(cfg.path(source.path))))]
            plan += [(order, f) for f in files]
        if not files:
            plan.append((0, _Planned(name, source, None)))
    plan.sort(key=lambda t: t[0])  # stable: config order within a table
    return [f for _, f in plan]


@dataclass
class _Fingerprint:
    """A file's content hash, and what a byte scan says about its shape."""

    sha256: str
    size: int
    line_breaks: int
    ends_with_newline: bool


def _fingerprint(path: Path) -> _Fingerprint:
    h = hashlib.sha256()
    size = breaks = 0
    last = b""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
            breaks += chunk.count(b"\n")
            last = chunk[-1:]
    return _Fingerprint(h.hexdigest(), size, breaks, last == b"\n")


_PAUSE = os.environ.get("WOBBLE_INGEST_PAUSE", "")


def _pause_point(point: str, file: str) -> None:
    """Fault injection for the crash tests: with WOBBLE_INGEST_PAUSE=<point>:<file name>, say
    so on stderr and wait at that point (the test then kills the process)."""
    if _PAUSE and f"{point}:{file}" == _PAUSE:
        import sys

        sys.stderr.write(f"wobble-paused {point}:{file}\n")
        sys.stderr.flush()
        resume = os.environ.get("WOBBLE_INGEST_RESUME_FILE")
        while not (resume and os.path.exists(resume)):
            time.sleep(0.05)


class _Run:
    """One ingest run over one warehouse connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: Config, key: bytes):
        self.con, self.cfg = con, cfg
        con.execute(f"SET memory_limit = {_lit(cfg.ingest.memory_limit)}")
        if cfg.ingest.threads:
            con.execute(f"SET threads = {int(cfg.ingest.threads)}")
        install_sql_pseudonym(con, key)
        # NHS number (normalised) → pseudonym, for every number pseudonymised in this run.
        con.execute("CREATE OR REPLACE TEMP TABLE nhs_cache (nhs VARCHAR, person_id VARCHAR)")
        self._load_lookups()
        self.opt_outs = self._read_opt_out_list()

    # -- lookups ------------------------------------------------------------------------------

    def _load_lookups(self) -> None:
        lk = self.cfg.lookups
        specs = (("lsoa_imd", ("lsoa", "imd_decile")), ("practice_team", ("practice", "team_id")),
                 ("postcode_lsoa", ("postcode", "lsoa")))
        for name, cols in specs:
            path = getattr(lk, name)
            self.con.execute(f"DROP TABLE IF EXISTS lookup_{name}")
            if not path:
                continue
            full = self.cfg.path(path)
            if not full.exists():
                raise WobbleError(f"lookups.{name}: no file at {full}")
            key_expr = "upper(replace(column0, ' ', ''))" if name == "postcode_lsoa" else "trim(column0)"
            try:
                self.con.execute(
                    f"CREATE TEMP TABLE lookup_{name} AS SELECT DISTINCT ON (k) k AS {cols[0]}, "
                    f"trim(column1) AS {cols[1]} FROM (SELECT {key_expr} AS k, column1 FROM read_csv(?, "
                    "header = true, auto_detect = false, columns = {'column0': 'VARCHAR', "
                    "'column1': 'VARCHAR'}, null_padding = true)) WHERE k <> ''",
                    [str(full)],
                )
            except duckdb.Error as exc:
                raise WobbleError(f"lookups.{name}: cannot read {full} ({_first_line(exc)})") from None

    # -- the national data opt-out list --------------------------------------------------------

    def _read_opt_out_list(self) -> bool:
        path = self.cfg.lookups.opt_outs
        self.con.execute("CREATE OR REPLACE TEMP TABLE opt_out_ids (person_id VARCHAR)")
        self.opt_out_counts: dict[str, int] = {}
        if not path:
            return False
        full = self.cfg.path(path)
        if not full.exists():
            raise WobbleError(f"lookups.opt_outs: no file at {full}")
        try:
            cols = [r[0] for r in self.con.execute(
                "DESCRIBE SELECT * FROM read_csv(?, header = true, all_varchar = true)", [str(full)]
            ).fetchall()]
            col = "nhs_number" if "nhs_number" in cols else cols[0]
            self.con.execute(
                f"""CREATE OR REPLACE TEMP TABLE opt_out_raw AS
                SELECT {nhs_normalised_sql(_q(col))} AS nhs FROM read_csv(?, header = true, all_varchar = true)
                WHERE nullif(trim({_q(col)}), '') IS NOT NULL""",
                [str(full)],
            )
        except duckdb.Error as exc:
            raise WobbleError(f"lookups.opt_outs: cannot read {full} ({_first_line(exc)})") from None
        self._pseudonymise_into_cache("opt_out_raw", "nhs")
        self.con.execute("""
            INSERT INTO opt_out_ids SELECT DISTINCT c.person_id FROM opt_out_raw o
            JOIN nhs_cache c USING (nhs)""")
        entries = scalar(self.con, "SELECT count(*) FROM opt_out_raw")
        valid = scalar(self.con, "SELECT count(*) FROM opt_out_ids")
        invalid = scalar(self.con, f"SELECT count(*) FROM opt_out_raw WHERE NOT {nhs_valid_sql('nhs')}")
        self.con.execute("DROP TABLE opt_out_raw")
        self.opt_out_counts = {"entries": int(entries), "people": int(valid), "invalid": int(invalid)}
        return True

    def apply_opt_out_list(self) -> dict[str, int]:
        """Flag everyone on the opt-out list who is registered, and remove their activity."""
        if not self.opt_outs:
            return {}
        with transaction(self.con):
            self.con.execute("""
                CREATE OR REPLACE TEMP TABLE newly_out AS
                SELECT person_id FROM persons WHERE NOT opted_out
                  AND person_id IN (SELECT person_id FROM opt_out_ids)""")
            flagged = scalar(self.con, "SELECT count(*) FROM newly_out")
            withdrawn = self._withdraw("newly_out", "opt-out list") if flagged else 0
            if flagged:
                self.con.execute(f"""
                    UPDATE persons SET {_OPTED_OUT_BLANKS}, opted_out = true
                    WHERE person_id IN (SELECT person_id FROM newly_out)""")
        registered = scalar(self.con, """SELECT count(*) FROM persons
                                         WHERE person_id IN (SELECT person_id FROM opt_out_ids)""")
        return {**self.opt_out_counts, "registered": int(registered), "persons_flagged": int(flagged),
                "rows_withdrawn": int(withdrawn)}

    def _withdraw(self, people: str, why: str) -> int:
        """Delete the contacts and tags of the people in temp table `people` (inside the caller's
        transaction); one audit_log row says how many. Returns the number of rows removed."""
        removed = 0
        for table in ("contacts", "tags"):
            n = scalar(self.con, f"SELECT count(*) FROM {table} WHERE person_id IN (SELECT person_id FROM {people})")
            if n:
                self.con.execute(f"DELETE FROM {table} WHERE person_id IN (SELECT person_id FROM {people})")
            removed += int(n)
        if removed:
            people_n = scalar(self.con, f"SELECT count(*) FROM {people}")
            self.con.execute(
                "INSERT INTO audit_log VALUES (now()::TIMESTAMP, 'wobble ingest', NULL, NULL, "
                "'opt_out_applied', ?)",
                [f"{why}: removed {removed} contacts and tags of {people_n} people who opted out"],
            )
        return removed

    # -- pseudonyms ----------------------------------------------------------------------------

    def _pseudonymise_into_cache(self, table: str, column: str) -> None:
        """Add a pseudonym to the run's cache for each valid NHS number in `table.column` not yet
        there: each distinct number is hashed once per run."""
        self.con.execute(f"""
            INSERT INTO nhs_cache
            SELECT nhs, wobble_pseudonym(nhs) FROM (
                SELECT DISTINCT {column} AS nhs FROM {table}
                WHERE {column} IS NOT NULL AND {nhs_valid_sql(column)}
                  AND {column} NOT IN (SELECT nhs FROM nhs_cache))""")

    # -- one file ------------------------------------------------------------------------------

    def load_file(self, name: str, source: Source, path: Path, fp: Future) -> FileResult:
        t0 = time.perf_counter()
        rel = _display_path(self.cfg, path)
        try:
            fingerprint: _Fingerprint = fp.result()
        except OSError as exc:
            return FileResult(name, rel, "failed", error=f"cannot read the file ({exc.strerror})")
        seen = self.con.execute(
            "SELECT count(*) FROM load_ledger WHERE source = ? AND content_hash = ?",
            [name, fingerprint.sha256],
        ).fetchone()[0]
        if seen:
            return FileResult(name, rel, "skipped", seconds=time.perf_counter() - t0)
        batch = _Batch(name, source, rel, f"{name}-{fingerprint.sha256[:16]}", fingerprint.sha256)
        try:
            inp = _open_input(self.con, self.cfg, source, path, fingerprint)
            batch.table = inp.table
            load = _load_persons if inp.table == "persons" else _load_activity
            result = load(self, batch, inp)
        except WobbleError as exc:
            return FileResult(name, rel, "failed", table=batch.table, error=str(exc),
                              seconds=time.perf_counter() - t0)
        except duckdb.Error as exc:
            return FileResult(name, rel, "failed", table=batch.table, error=_first_line(exc),
                              seconds=time.perf_counter() - t0)
        finally:
            _drop_temp(self.con)
        result.seconds = time.perf_counter() - t0
        return result


@dataclass
class _Batch:
    name: str
    source: Source
    rel: str
    batch_id: str
    content_hash: str
    table: str | None = None


_TEMP_TABLES = ("staged", "staged_t", "ids", "ids0", "cand", "seen", "staff", "codes", "dups", "existing",
                "incoming", "bad", "newly_out", "rej_errors", "rej_scans", "rejects", "fhir_rows", "fhir_lines",
                "fhir_json")


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    for t in _TEMP_TABLES:
        con.execute(f"DROP {'VIEW' if t in views else 'TABLE'} IF EXISTS {t}")


# ---------------------------------------------------------------------------------------------
# Reading a file as contract fields
# ---------------------------------------------------------------------------------------------


@dataclass
class _Input:
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
    fingerprint: _Fingerprint | None = None
    required: tuple[str, ...] | None = None  # persons fields that must be present (None: sex)
    extra_unmapped: dict[str, dict[str, int]] = field(default_factory=dict)  # found by the reader


def _open_input(con, cfg: Config, source: Source, path: Path, fp: _Fingerprint) -> _Input:
    if source.kind == "fhir":
        from wobble.fhir import read_fhir

        return read_fhir(con, cfg, source, path, fp)
    if fp.size == 0:
        raise WobbleError("the file is empty")
    if source.kind == "parquet":
        return _open_parquet(con, source, path)
    return _open_csv(con, source, path, fp)


def _tabular(source: Source, rel_sql: str, first_sql: str, fields: dict[str, str], **kw) -> _Input:
    return _Input(
        kind=source.kind, table=source.table, relation=rel_sql, first_pass=first_sql, fields=fields,
        labels=dict(source.columns), values=source.values, defaults=source.defaults,
        timestamp_format=source.timestamp_format, date_format=source.date_format,
        timezone=source.timezone, **kw,
    )


_TYPED = ("TIMESTAMP", "DATE")  # column types read as they are; everything else becomes text


# Fields read as they come (blank → NULL), not trimmed: NHS numbers lose their separators when
# normalised, codes and dates are trimmed only when they do not match as they are (trimming
# every value of a 30-million-row file costs more than parsing its dates).
_UNTRIMMED = {"nhs_number", "occurred_at", "recorded_at", "birth_date", "died_on", "registered_on",
              "service", "status", "mode", "tag", "author_role", "sex", "ethnicity_group", "opted_out"}


def _select_fields(source: Source, types: dict[str, str] | None = None) -> str:
    """Each mapped column under its contract field's name: dates and timestamps as typed, other
    text with blanks as NULL (and trimmed, but for the fields in `_UNTRIMMED`)."""
    out = []
    for f, col in source.columns.items():
        typ = (types or {}).get(col, "VARCHAR").upper()
        if typ.startswith(_TYPED):
            expr = _q(col)
        elif f in _UNTRIMMED:
            expr = f"nullif({_q(col)}::VARCHAR, '')"
        else:
            expr = f"nullif(trim({_q(col)}::VARCHAR), '')"  # (spaces only: trimming tabs costs more)
        out.append(f"{expr} AS {f}")
    return ", ".join(out)


def _open_parquet(con, source: Source, path: Path) -> _Input:
    try:
        info = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        raise WobbleError(f"not a readable Parquet file: truncated or damaged? ({_first_line(exc)})") from None
    types = {r[0]: r[1] for r in info}
    _check_columns(source, list(types))
    scan = f"read_parquet({_lit(str(path))}, file_row_number = true)"
    rel = f"(SELECT file_row_number + 1 AS _ord, {_select_fields(source, types)} FROM {scan})"
    first = f"(SELECT {_select_fields(source, types)} FROM read_parquet({_lit(str(path))}))"
    fields = {f: types[col] if types[col].upper().startswith(_TYPED) else "VARCHAR"
              for f, col in source.columns.items()}
    return _tabular(source, rel, first, fields)


def _check_columns(source: Source, found: list[str]) -> None:
    missing = [c for c in source.columns.values() if c not in found]
    if missing:
        shown = ", ".join(found[:12]) + (" …" if len(found) > 12 else "")
        raise WobbleError(f"missing column(s) {', '.join(missing)} (found: {shown})")


def _csv_header(path: Path, source: Source) -> list[str]:
    """The header's column names; a clear error when the file is not the text we expect."""
    import csv
    import io

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


def _open_csv(con, source: Source, path: Path, fp: _Fingerprint) -> _Input:
    names = _csv_header(path, source)
    if len(names) < 2:
        raise WobbleError(
            f"only one column found with delimiter {source.delimiter!r}: is the delimiter right?"
        )
    if len(set(names)) != len(names):
        raise WobbleError("the header names a column twice")
    _check_columns(source, names)
    columns = "{" + ", ".join(f"{_lit(n)}: 'VARCHAR'" for n in names) + "}"
    opts = (
        f"delim = {_lit(source.delimiter)}, quote = '\"', escape = '\"', header = true, "
        f"auto_detect = false, columns = {columns}, encoding = {_lit(source.encoding)}, "
        f"max_line_size = {source.max_line_bytes}"
    )
    scan = (f"read_csv({_lit(str(path))}, {opts}, store_rejects = true, rejects_table = 'rej_errors', "
            "rejects_scan = 'rej_scans')")
    rel = f"(SELECT row_number() OVER () AS _ord, {_select_fields(source)} FROM {scan})"
    first = f"(SELECT {_select_fields(source)} FROM read_csv({_lit(str(path))}, {opts}, ignore_errors = true))"
    inp = _tabular(source, rel, first, dict.fromkeys(source.columns, "VARCHAR"))
    inp.parallel = f"(SELECT {_select_fields(source)} FROM {scan})"
    # Line numbers: the k-th row that parsed sits on line k + 1 (header) + the malformed lines
    # before it. With malformed lines r_1 < r_2 < …, that count is #{i : r_i − i < k + 1}.
    inp.line_sql = ("(_ord + 1 + coalesce((SELECT max(n) FROM rejects WHERE rejects.a < _ord + 1), 0))")
    inp.rejects = "rejects"
    inp.fingerprint = fp
    return inp


def _csv_rejects(con, source: Source, fp: _Fingerprint) -> None:
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
        size = scalar(con, "SELECT max(octet_length(encode(csv_line))) FROM rejects WHERE line = ?", [line])
        raise WobbleError(
            f"line {line} is longer than the {source.max_line_bytes:,}-byte limit (about "
            f"{(size or 0) / 1e6:.1f} MB or more): a field holding a whole document, or a quote "
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


# ---------------------------------------------------------------------------------------------
# SQL building blocks
# ---------------------------------------------------------------------------------------------


def _q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _display_path(cfg: Config, path: Path) -> str:
    """The file as the config names it: relative to the config's folder when it is inside it."""
    for p in (Path(os.path.abspath(path)), path.resolve()):
        try:
            return str(p.relative_to(cfg.root))
        except ValueError:
            continue
    return str(path)


def _text(f: str, inp: _Input) -> str:
    """The field as text (readers trim it, and give NULL when blank), NULL when not mapped."""
    if f not in inp.fields:
        return "NULL::VARCHAR"
    return f"r.{f}" if inp.fields[f] == "VARCHAR" else f"r.{f}::VARCHAR"


def _ts(f: str, inp: _Input, fmt: str | None) -> str:
    """The field as a naive TIMESTAMP in the warehouse's time zone; NULL when unparseable."""
    if f not in inp.fields:
        return "NULL::TIMESTAMP"
    typ = inp.fields[f].upper()
    col = f"r.{f}"
    if typ.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone({_lit(WAREHOUSE_TZ)}, {col})"
    if typ.startswith("TIMESTAMP") or typ == "DATE":
        ts = f"{col}::TIMESTAMP"
    elif fmt:  # (coalesce tries the second only where the first failed)
        text = _text(f, inp)
        ts = f"coalesce(try_strptime({text}, {_lit(fmt)}), try_strptime({_trim(text)}, {_lit(fmt)}))"
    else:
        text = _text(f, inp)
        ts = f"coalesce(try_cast({text} AS TIMESTAMP), try_cast({_trim(text)} AS TIMESTAMP))"
    if inp.timezone != WAREHOUSE_TZ:
        ts = f"timezone({_lit(WAREHOUSE_TZ)}, timezone({_lit(inp.timezone)}, {ts}))"
    return ts


def _code_map(inp: _Input, f: str) -> dict[str, int]:
    """Source code → 1-based index into the field's vocabulary (0: known to mean 'no value')."""
    vocab = _VOCAB[f]
    out = {v: i + 1 for i, v in enumerate(vocab)}
    for src, dst in inp.values.get(f, {}).items():
        out[src] = 0 if dst == "" else vocab.index(dst) + 1
    return out


def _coded(f: str, inp: _Input) -> tuple[str, str]:
    """SQL for a coded field: (vocabulary index or NULL, is-unknown check written over `@f`)."""
    default = inp.defaults.get(f)
    dflt = str(_VOCAB[f].index(default) + 1) if default else "NULL"
    if f not in inp.fields:
        return f"{dflt}::UTINYINT", "false"
    text = _text(f, inp)
    arms = " ".join(f"WHEN {_lit(k)} THEN {v}" for k, v in _code_map(inp, f).items())
    # As it comes; else trimmed (" DNA" is DNA; blank is no value).
    idx = (f"(CASE WHEN {text} IS NULL THEN {dflt} ELSE (CASE {text} {arms} ELSE "
           f"(CASE {_trim(text)} {arms} WHEN '' THEN {dflt} END) END) END)::UTINYINT")
    return idx, f"(CASE WHEN @{f} IS NOT NULL OR NOT {_present(f, inp)} THEN false ELSE true END)"


def _vocab_value(f: str, idx: str) -> str:
    """SQL: the vocabulary value for an index from `_coded` (NULL for 0 or NULL)."""
    values = "[" + ", ".join(_lit(v) for v in _VOCAB[f]) + "]"
    return f"CASE WHEN {idx} > 0 THEN {values}[{idx}] END"


def _present(f: str, inp: _Input) -> str:
    """SQL: the field has a value that is not just blanks (trimming only what starts blank)."""
    if f not in inp.fields:
        return "false"
    text = _text(f, inp)
    if inp.fields[f] != "VARCHAR":
        return f"({text} IS NOT NULL)"
    return f"({text} IS NOT NULL AND (CASE WHEN ascii({text}) > 32 THEN true ELSE {_trim(text)} <> '' END))"


_BLANKS = " \t\r\n"  # what trimming removes, in SQL (`_trim`) and in Python alike


def _trim(sql: str) -> str:
    """SQL: the text without leading and trailing spaces, tabs and line breaks."""
    return f"trim({sql}, ' ' || chr(9) || chr(13) || chr(10))"


def _masked_raw(inp: _Input) -> str:
    """The row as `column=value` pairs over the mapped columns only, identifiers masked, and
    long digit runs (anything shaped like an NHS number) removed from the other values.

    Columns the config does not map (names, addresses, free text) are never read into it.
    """
    parts = []
    for f, label in inp.labels.items():
        if f not in inp.fields:
            continue
        if f in _MASKED:
            val = f"CASE WHEN {_text(f, inp)} IS NULL THEN '' ELSE {_lit(_MASKED[f])} END"
        else:
            val = without_numbers_sql(f"left(coalesce(r.{f}::VARCHAR, ''), 200)")
        parts.append(f"{_lit(label + '=')} || {val}")
    return " || '; ' || ".join(parts) if parts else "''"


# ---------------------------------------------------------------------------------------------
# First pass: identifiers and codes
# ---------------------------------------------------------------------------------------------


def _first_pass(run: _Run, inp: _Input, coded: list[str], staff_system: str | None) -> dict[str, dict[str, int]]:
    """Build `ids` (each distinct person identifier → idx, person_id, status) and, for contacts,
    `staff` (each distinct staff code → idx, pseudonym); return unmapped codes with row counts."""
    con = run.con
    staff = staff_system is not None
    keys = _id_keys(inp)
    groups = ["(" + ", ".join(keys) + ")"] + (["(professional)"] if staff else []) + [f"({c})" for c in coded]
    cols = list(dict.fromkeys(keys + (["professional"] if staff else []) + coded))
    sel = ", ".join(f"{c}::VARCHAR AS {c}" for c in cols)
    gid = ", ".join(cols)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE codes AS
        SELECT {gid}, grouping({gid}) AS g, count(*) AS n
        FROM (SELECT {sel} FROM {inp.first_pass})
        GROUP BY GROUPING SETS ({', '.join(groups)})""")
    # grouping() sets bit k for column k (from the left) when it is NOT in the grouping set.
    width = len(cols)

    def mask_for(included: list[str]) -> int:
        return sum(1 << (width - 1 - i) for i, c in enumerate(cols) if c not in included)

    _build_ids(run, inp, keys, f"(SELECT * FROM codes WHERE g = {mask_for(keys)})")
    if staff:
        prefix = _lit(f"staff:{staff_system}:")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE staff AS
            SELECT professional AS raw, row_number() OVER ()::INTEGER AS idx,
                   wobble_pseudonym({prefix} || professional) AS pseudonym
            FROM codes WHERE g = {mask_for(['professional'])} AND professional IS NOT NULL""")
    unmapped: dict[str, dict[str, int]] = {}
    for c in coded:
        mapping = _code_map(inp, c)
        rows = con.execute(
            f"SELECT {c}, n FROM codes WHERE g = {mask_for([c])} AND {c} IS NOT NULL ORDER BY n DESC"
        ).fetchall()
        found = {_safe_code(code): int(n) for code, n in rows
                 if code not in mapping and code.strip(_BLANKS) not in mapping and code.strip(_BLANKS)}
        if found:
            unmapped[c] = found
    return unmapped


def _safe_code(code: str) -> str:
    """A code as reported: at most 60 characters; anything shaped like an NHS number (ten
    digits, maybe spaced) removed, since a code column can hold the wrong thing."""
    return NHS_LIKE.sub(NUMBER_REMOVED, str(code))[:60]


def _build_ids(run: _Run, inp: _Input, keys: list[str], distinct_sql: str) -> None:
    """`ids`: one row per distinct identifier (combination) in the file, with its person.

    status: 0 a person we can load or match, 1 invalid NHS number, 2 not registered, 3 opted
    out, 4 no identifier at all. In a persons file `person_id` is the pseudonym to load under,
    and `other_id` says it came from an identifier other than an NHS number (FHIR patients
    without one: HMAC of 'id:' + system|value).
    """
    con = run.con
    nhs = "nhs_number" if "nhs_number" in keys else "NULL::VARCHAR"
    alt = "wobble_pseudonym('id:' || alt_id)" if "alt_id" in keys else "NULL::VARCHAR"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ids0 AS
        SELECT row_number() OVER ()::INTEGER AS idx, {', '.join(keys)}, nullif({nhs_normalised_sql(nhs)}, '') AS nhs,
               {alt} AS alt_pid
        FROM {distinct_sql}""")
    run._pseudonymise_into_cache("ids0", "nhs")
    valid = nhs_valid_sql("i.nhs")
    alt = "i.alt_pid"
    if inp.table == "persons":
        status = f"CASE WHEN i.nhs IS NOT NULL THEN (CASE WHEN {valid} THEN 0 ELSE 1 END) " \
                 f"WHEN {alt} IS NOT NULL THEN 0 ELSE 4 END"
        person, joins = f"coalesce(c.person_id, {alt})", ""
    else:
        ref = "NULL::VARCHAR"
        joins = ""
        if "patient_ref" in keys:
            ref = "pl.person_id"
            joins = ("LEFT JOIN person_links pl "
                     f"ON pl.link_id = wobble_pseudonym({_lit(inp.system_prefix)} || i.patient_ref)")
        no_ref = "i.patient_ref IS NULL" if "patient_ref" in keys else "true"
        status = (f"CASE WHEN i.nhs IS NOT NULL AND NOT {valid} THEN 1 WHEN i.nhs IS NULL AND {no_ref} THEN 4 "
                  "WHEN p.person_id IS NULL THEN 2 WHEN p.opted_out THEN 3 ELSE 0 END")
        person = "p.person_id"
        joins += f" LEFT JOIN persons p ON p.person_id = coalesce(c.person_id, {ref})"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ids AS
        SELECT i.*, ({status})::UTINYINT AS status, {person} AS person_id,
               (i.nhs IS NULL AND {alt} IS NOT NULL) AS other_id
        FROM ids0 i LEFT JOIN nhs_cache c ON c.nhs = i.nhs {joins}""")
    con.execute("DROP TABLE ids0")


def _id_keys(inp: _Input) -> list[str]:
    return [f for f in ("nhs_number", "alt_id", "patient_ref") if f in inp.fields]


def _ids_match(inp: _Input, ids: str = "ids", row: str = "r") -> str:
    """SQL: the row's identifier is this `ids` row's."""
    keys = _id_keys(inp)
    if keys == ["nhs_number"]:
        return f"{ids}.nhs_number = {row}.nhs_number"
    return " AND ".join(f"{ids}.{k} IS NOT DISTINCT FROM {row}.{k}" for k in keys)


def _ids_join(inp: _Input) -> str:
    """Join each row to its identifier's `ids` row (none when it has no identifier at all)."""
    return f"LEFT JOIN ids ON {_ids_match(inp)}"


# ---------------------------------------------------------------------------------------------
# Second pass: validate every row into `staged`
# ---------------------------------------------------------------------------------------------


_REASON_INDEX = {r: i for i, r in enumerate(REASONS)}


def _reason_sql(checks: list[tuple[str, str]]) -> str:
    arms = " ".join(f"WHEN {cond} THEN {_REASON_INDEX[reason]}" for reason, cond in checks)
    return f"(CASE {arms} END)::UTINYINT"


def _stage(con, inp: _Input, columns: dict[str, str], checks: list[tuple[str, str]], joins: str) -> None:
    """Create `staged`: one row per row that parsed, with `columns`, the first failing reason
    (index into REASONS, NULL when the row passes) and, for failing rows only, the masked row.

    `columns` are SQL over the file's fields (`r.<field>`) and the joined tables; `checks` are
    SQL over those fields and over the computed columns, written `@<column>`.
    """
    computed = ", ".join(f"{expr} AS _c_{name}" for name, expr in columns.items())
    reason = _reason_sql(checks).replace("@", "_c_")
    keep = ", ".join(f"_c_{name} AS {name}" for name in columns)
    # The file's rows stream through; the joined tables are small and must be the hash join's
    # build side, whatever DuckDB estimates the file's size to be.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        SELECT _ord, {keep}, _reason AS reason,
               CASE WHEN _reason IS NOT NULL AND _reason <> {_REASON_INDEX['opted_out']}
                    THEN {_masked_raw(inp)} END AS raw
        FROM (SELECT *, {reason} AS _reason
              FROM (SELECT r.*, {computed} FROM {inp.relation} r {joins}) r) r""")
    con.execute("RESET disabled_optimizers")


SUSPECT_BITS = 1 << 23  # the suspects filter: 1 MB, about one false alarm in 250 per 30,000 suspects


def _stage_parallel(con, inp: _Input, columns: dict[str, str], checks: list[tuple[str, str]]) -> None:
    """Create `staged` for a contacts or tags file in one parallel pass, without joins.

    Like `_stage`, but the reasons that depend on who the row is about (invalid NHS number, not
    registered, opted out) come after, from `ids` (`_settle_identity`). The masked row is kept
    for rows with a reason already, and for rows whose identifier is in the suspects filter (a
    Bloom filter of the identifiers `ids` found invalid or not registered), so every row that
    will need it has it. Keeps the identifier and staff code as read, to join on later.
    """
    keys = _id_keys(inp)
    keep = [k for k in (*keys, "professional") if k in inp.fields]
    computed = ", ".join(f"{expr} AS _c_{name}" for name, expr in columns.items())
    reason = _reason_sql(checks).replace("@", "_c_")
    cols = ", ".join([*(f"_c_{name} AS {name}" for name in columns), *keep])
    hashed = f"hash({', '.join('r.' + k for k in keys)})"
    suspect = f"coalesce(get_bit(getvariable('wobble_suspects'), ({hashed} % {SUSPECT_BITS})::INTEGER) = 1, false)"
    ordered = inp.parallel is not None
    source = inp.parallel if ordered else inp.relation
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged_t AS
        SELECT {'' if ordered else '_ord, '}{cols}, _reason AS reason,
               CASE WHEN _reason IS NOT NULL OR {suspect} THEN {_masked_raw(inp)} END AS raw
        FROM (SELECT *, {reason} AS _reason
              FROM (SELECT r.*, {computed} FROM {source} r) r) r""")
    con.execute(f"CREATE OR REPLACE TEMP VIEW staged AS SELECT {'rowid + 1 AS _ord, ' if ordered else ''}* "
                "FROM staged_t")


def _suspects(con, inp: _Input) -> None:
    """Set `wobble_suspects`: a bit per identifier `ids` found invalid or not registered."""
    keys = ", ".join(_id_keys(inp))
    con.execute(f"""
        SET VARIABLE wobble_suspects = (
            SELECT bitstring_agg((hash({keys}) % {SUSPECT_BITS})::BIGINT, 0, {SUSPECT_BITS - 1})
            FROM ids WHERE status IN (1, 2))""")


def _settle_identity(con, inp: _Input) -> None:
    """Give rows whose identifier is not a registered person's their reason (first match wins,
    as in REASONS); opted-out people's rows keep no masked row."""
    r = _REASON_INDEX
    first = f"({r['missing_field']}, {r['entered_in_error']})"
    con.execute(f"""
        UPDATE staged_t SET
            reason = CASE WHEN staged_t.reason IN {first} THEN staged_t.reason
                          WHEN ids.status = 1 THEN {r['invalid_nhs_number']}
                          WHEN staged_t.reason IS NOT NULL THEN staged_t.reason
                          WHEN ids.status = 2 THEN {r['person_not_found']}
                          WHEN ids.status = 3 THEN {r['opted_out']}
                          ELSE {r['missing_field']} END,
            raw = CASE WHEN staged_t.reason IS NULL AND ids.status = 3 THEN NULL ELSE staged_t.raw END
        FROM ids WHERE {_ids_match(inp, 'ids', 'staged_t')} AND ids.status <> 0""")
    lost = scalar(con, f"""SELECT count(*) FROM staged_t WHERE raw IS NULL AND reason IS NOT NULL
                           AND reason <> {r['opted_out']}""")
    if lost:  # the suspects filter cannot miss; if it ever did, say so rather than hide rows
        raise RuntimeError(f"{lost} quarantined rows lost their masked row")


def _bad_rows(con, inp: _Input) -> None:
    """`bad`: quarantined rows (reason, line, masked row) from `staged` and the malformed lines."""
    reasons = "[" + ", ".join(_lit(r) for r in REASONS) + "]"
    rejects = ""
    if inp.rejects:
        rejects = f"""UNION ALL
            SELECT line, 'malformed_line', lower(error),
                   {without_numbers_sql("left(csv_line, 500)")}
            FROM {inp.rejects}"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE bad AS
        SELECT {inp.line_sql} AS line, {reasons}[reason + 1] AS reason, NULL::VARCHAR AS detail, raw
        FROM staged WHERE reason IS NOT NULL
        {rejects}""")


def _counts(con, inp: _Input) -> tuple[int, int]:
    """(rows parsed, malformed lines)."""
    parsed = scalar(con, "SELECT count(*) FROM staged")
    malformed = scalar(con, f"SELECT count(*) FROM {inp.rejects}") if inp.rejects else 0
    return int(parsed), int(malformed)


def _finish(run: _Run, batch: _Batch, inp: _Input, rows_in: int, loaded: int, duplicate: int,
            unmapped: dict[str, dict[str, int]]) -> dict[str, int]:
    """Inside the file's transaction: write `bad` and duplicates to quarantine, the unmapped
    codes and the ledger row; refuse to commit when the counts do not reconcile."""
    con = run.con
    con.execute(
        "INSERT INTO quarantine SELECT ?, ?, ?, line, reason, detail, raw FROM bad",
        [batch.batch_id, batch.name, batch.rel],
    )
    reasons = dict(con.sql("SELECT reason, count(*) FROM bad GROUP BY reason").fetchall())
    dup_rows = reasons.get("duplicate", 0)
    quarantined = sum(reasons.values()) - dup_rows
    if rows_in != loaded + quarantined + duplicate or dup_rows != duplicate:
        raise RuntimeError(  # a bug, not a data problem: refuse to commit
            f"{batch.rel}: counts do not reconcile: in {rows_in} != loaded {loaded} + "
            f"quarantined {quarantined} + duplicate {duplicate} ({dup_rows} in quarantine)"
        )
    rows = [(batch.batch_id, batch.name, f, code, n) for f, codes in unmapped.items() for code, n in codes.items()]
    if rows:
        con.executemany("INSERT INTO ingest_unmapped VALUES (?, ?, ?, ?, ?)", rows)
    _pause_point("ledger", Path(batch.rel).name)
    con.execute(
        "INSERT INTO load_ledger VALUES (?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?)",
        [batch.batch_id, batch.name, batch.rel, batch.content_hash, rows_in, loaded, quarantined, duplicate],
    )
    _pause_point("committing", Path(batch.rel).name)
    return {k: int(v) for k, v in sorted(reasons.items())}


# ---------------------------------------------------------------------------------------------
# Persons
# ---------------------------------------------------------------------------------------------

# Opted-out people keep only their pseudonym, team, practice and the flag.
_OPTED_OUT_BLANKS = ("birth_year = NULL, sex = NULL, ethnicity_group = NULL, imd_decile = NULL, "
                     "died_on = NULL, registered_on = NULL")
_PERSON_COLS = ("birth_year", "sex", "ethnicity_group", "imd_decile", "team_id", "practice_id",
                "opted_out", "died_on", "registered_on")


def _load_persons(run: _Run, batch: _Batch, inp: _Input) -> FileResult:
    con, lk = run.con, run.cfg.lookups
    coded = [f for f in ("sex", "ethnicity_group", "opted_out") if f in inp.fields]
    unmapped = _first_pass(run, inp, coded, None)

    def dt(f: str) -> str:
        return f"({_ts(f, inp, inp.date_format)})::DATE" if f in inp.fields else "NULL::DATE"

    sex, sex_unknown = _coded("sex", inp)
    eth, _ = _coded("ethnicity_group", inp)
    opt, opt_unknown = _coded("opted_out", inp)
    joins = [_ids_join(inp)]
    lsoa = _text("lsoa", inp)
    if "postcode" in inp.fields and lk.postcode_lsoa:
        joins.append("LEFT JOIN lookup_postcode_lsoa lpc "
                     f"ON lpc.postcode = upper(replace({_text('postcode', inp)}, ' ', ''))")
        lsoa = f"coalesce({lsoa}, lpc.lsoa)"
    if lk.lsoa_imd and ("lsoa" in inp.fields or "postcode" in inp.fields):
        joins.append(f"LEFT JOIN lookup_lsoa_imd li ON li.lsoa = {lsoa}")
        imd = "try_cast(li.imd_decile AS TINYINT)"
    else:
        imd = f"try_cast({_text('imd_decile', inp)} AS TINYINT)"
    practice = _text("practice_id", inp)
    if "practice_id" in inp.fields and lk.practice_team:
        joins.append(f"LEFT JOIN lookup_practice_team lp ON lp.practice = {practice}")
        team = "lp.team_id"
    elif "team_id" in inp.fields:
        team = _text("team_id", inp)
    else:
        team = practice  # without a practice → team lookup, each practice is its own team
    columns = {
        "idx": "ids.idx", "who": "ids.status",
        "birth_year": f"year({dt('birth_date')})" if "birth_date" in inp.fields
        else f"try_cast({_text('birth_year', inp)} AS SMALLINT)",
        "sex": sex, "ethnicity_group": eth, "imd_decile": imd, "team_id": team,
        "practice_id": practice, "opted_out": opt, "died_on": dt("died_on"),
        "registered_on": dt("registered_on"),
    }
    unparsed = [f"({_present(f, inp)} AND {dt(f)} IS NULL)" for f in ("birth_date", "died_on", "registered_on")
                if f in inp.fields]
    must = ("sex",) if inp.required is None else inp.required
    required = [f"NOT {_present(f, inp)}" for f in must if f in inp.fields and f not in inp.defaults]
    checks = [
        ("missing_field", " OR ".join(["coalesce(@who, 4) = 4", *required])),
        ("invalid_nhs_number", "@who = 1"),
        ("impossible_date", " OR ".join([
            *unparsed, "coalesce(@birth_year NOT BETWEEN 1890 AND year(current_date), false)",
            "coalesce(@died_on > current_date OR @died_on < make_date(@birth_year, 1, 1), false)",
        ])),
        ("unknown_code", f"{sex_unknown} OR {opt_unknown} OR @team_id IS NULL"),
    ]
    _stage(con, inp, columns, checks, " ".join(joins))
    if inp.kind == "csv":
        _csv_rejects(con, batch.source, inp.fingerprint)
    rows_in = sum(_counts(con, inp))
    _bad_rows(con, inp)
    opted = f"coalesce({_vocab_value('opted_out', 's.opted_out')} = 'true', false)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand AS
        SELECT i.person_id, s._ord, s.birth_year, {_vocab_value('sex', 's.sex')} AS sex,
               coalesce({_vocab_value('ethnicity_group', 's.ethnicity_group')}, 'Not stated') AS ethnicity_group,
               s.imd_decile, s.team_id, s.practice_id, {opted} AS opted_out, s.died_on,
               s.registered_on, i.other_id
        FROM staged s JOIN ids i USING (idx) WHERE s.reason IS NULL""")
    # Within the file the last line for a person wins; the earlier ones are duplicates.
    con.execute(f"""
        INSERT INTO bad
        SELECT {inp.line_sql}, 'duplicate', 'a later line in this file has the same person', NULL
        FROM cand QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY _ord DESC) > 1""")
    kept = ", ".join(c if c in ("team_id", "practice_id", "opted_out")
                     else f"CASE WHEN opted_out THEN NULL ELSE {c} END AS {c}" for c in _PERSON_COLS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE incoming AS
        SELECT person_id, {kept}, other_id, _ord FROM cand
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY _ord DESC) = 1""")
    same = " AND ".join(f"p.{c} IS NOT DISTINCT FROM i.{c}" for c in _PERSON_COLS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE existing AS
        SELECT i.person_id, i._ord, ({same}) AS same, p.batch_id, p.opted_out AS was_out,
               i.opted_out AS now_out
        FROM incoming i JOIN persons p USING (person_id)""")
    con.execute(f"""
        INSERT INTO bad SELECT {inp.line_sql}, 'duplicate', 'already loaded, unchanged (batch ' || batch_id || ')', NULL
        FROM existing WHERE same""")
    replaced = int(scalar(con, "SELECT count(*) FROM existing WHERE NOT same"))
    duplicate = int(scalar(con, "SELECT count(*) FROM bad WHERE reason = 'duplicate'"))
    other = int(scalar(con, "SELECT count(*) FROM incoming WHERE other_id"))
    _pause_point("staged", Path(batch.rel).name)
    with transaction(con):
        con.execute("CREATE OR REPLACE TEMP TABLE newly_out AS "
                    "SELECT person_id FROM existing WHERE now_out AND NOT was_out")
        withdrawn = run._withdraw("newly_out", batch.rel)
        if replaced:
            con.execute("DELETE FROM persons WHERE person_id IN (SELECT person_id FROM existing WHERE NOT same)")
        loaded = con.execute(f"""
            INSERT INTO persons SELECT person_id, {', '.join(_PERSON_COLS)}, ?, ?
            FROM incoming WHERE person_id NOT IN (SELECT person_id FROM existing WHERE same)""",
                             [batch.source.system, batch.batch_id]).fetchone()[0]
        if "patient_ref" in inp.fields:
            _write_links(con, inp, batch)
        _pause_point("inserted", Path(batch.rel).name)
        reasons = _finish(run, batch, inp, rows_in, int(loaded), duplicate, unmapped)
    return FileResult(
        batch.name, batch.rel, "loaded", table="persons", rows_in=rows_in, rows_loaded=int(loaded),
        rows_quarantined=rows_in - int(loaded) - duplicate, rows_duplicate=duplicate,
        rows_replaced=replaced, rows_withdrawn=withdrawn, rows_out_of_scope=inp.out_of_scope,
        reasons=reasons, unmapped=unmapped, other_identifier=other,
        line_breaks_in_fields=_line_breaks(inp, rows_in),
    )


def _write_links(con, inp: _Input, batch: _Batch) -> None:
    """FHIR: remember each patient reference's person, so Encounters and Flags can find them."""
    prefix = _lit(inp.system_prefix)
    con.execute(f"""
        DELETE FROM person_links WHERE link_id IN (
            SELECT wobble_pseudonym({prefix} || patient_ref) FROM ids WHERE patient_ref IS NOT NULL)""")
    con.execute(f"""
        INSERT INTO person_links
        SELECT DISTINCT wobble_pseudonym({prefix} || ids.patient_ref), i.person_id, ?, ?
        FROM incoming i JOIN staged s USING (_ord) JOIN ids USING (idx)
        WHERE ids.patient_ref IS NOT NULL""", [batch.source.system, batch.batch_id])


def _line_breaks(inp: _Input, rows_in: int) -> int:
    """Line breaks inside quoted fields (or blank lines): physical lines not accounted for by
    rows. Worth a look, since a quote out of place can hide rows inside one field."""
    if inp.kind != "csv" or inp.fingerprint is None:
        return 0
    lines = inp.fingerprint.line_breaks + (0 if inp.fingerprint.ends_with_newline else 1)
    return max(0, lines - 1 - rows_in)


# ---------------------------------------------------------------------------------------------
# Contacts and tags
# ---------------------------------------------------------------------------------------------


def _load_activity(run: _Run, batch: _Batch, inp: _Input) -> FileResult:
    con, source = run.con, batch.source
    is_contacts = inp.table == "contacts"
    coded_fields = ("service", "status", "mode") if is_contacts else ("tag", "author_role")
    staff = is_contacts and "professional" in inp.fields
    unmapped = _first_pass(run, inp, [f for f in coded_fields if f in inp.fields],
                           source.system if staff else None)
    for f, codes in inp.extra_unmapped.items():
        for code, n in codes.items():
            unmapped.setdefault(f, {})[_safe_code(code)] = unmapped.get(f, {}).get(code, 0) + n
    fmt = inp.timestamp_format
    columns = {"record_id": _text("record_id", inp),
               "occurred_at": _ts("occurred_at" if is_contacts else "recorded_at", inp, fmt),
               "recorded_at": _ts("recorded_at", inp, fmt)}
    unknown = []
    for f in coded_fields:
        columns[f], is_unknown = _coded(f, inp)
        if f in _REJECTING:
            unknown.append(is_unknown)
    if "retracted" in inp.fields:
        columns["retracted"] = "coalesce(r.retracted, false)"
    required = ("record_id", "occurred_at", "service") if is_contacts else ("record_id", "recorded_at", "tag")
    dates = [f for f in ("occurred_at", "recorded_at") if f in inp.fields]
    bad_date = [f"({_present(f, inp)} AND @{f} IS NULL)" for f in dates]
    bad_date += [f"coalesce(@{f} NOT BETWEEN TIMESTAMP '1900-01-01' AND now()::TIMESTAMP, false)" for f in dates]
    if is_contacts and "recorded_at" in inp.fields:  # recorded more than a day before it happened
        bad_date.append("coalesce(@recorded_at < @occurred_at - INTERVAL 1 DAY, false)")
    no_identifier = "(" + " AND ".join(f"NOT {_present(k, inp)}" for k in _id_keys(inp)) + ")"
    checks = [
        ("missing_field", " OR ".join([no_identifier, *(f"NOT {_present(f, inp)}" for f in required
                                                        if f not in inp.defaults)])),
        ("entered_in_error", "@retracted" if "retracted" in inp.fields else "false"),
        ("impossible_date", " OR ".join(bad_date) or "false"),
        ("unknown_code", " OR ".join(unknown) or "false"),
    ]
    _suspects(con, inp)
    _stage_parallel(con, inp, columns, checks)
    if inp.kind == "csv":
        _csv_rejects(con, source, inp.fingerprint)
    _settle_identity(con, inp)
    rows_in = sum(_counts(con, inp))
    defaulted = {}
    if is_contacts:
        no_recorded, no_status = con.execute("""
            SELECT count(*) FILTER (WHERE recorded_at IS NULL), count(*) FILTER (WHERE status IS NULL)
            FROM staged WHERE reason IS NULL""").fetchone()
        defaulted = {k: int(v) for k, v in (("recorded_at (occurred_at used)", no_recorded),
                                             ("status (attended assumed)", no_status)) if v}
    _bad_rows(con, inp)
    target, id_col = ("contacts", "contact_id") if is_contacts else ("tags", "tag_id")
    system = _lit(source.system)
    # Within a file the last line for a record id wins; the earlier lines are duplicates.
    # (A 64-bit hash per id finds out cheaply whether there are any; the exact work is rare.)
    con.execute("CREATE OR REPLACE TEMP TABLE dups (_ord BIGINT, detail VARCHAR)")
    if scalar(con, "SELECT count(*) - count(DISTINCT hash(record_id)) FROM staged WHERE reason IS NULL"):
        con.execute("""
            INSERT INTO dups SELECT _ord, 'a later line in this file has the same record id'
            FROM staged WHERE reason IS NULL
            QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY _ord DESC) > 1""")
    if is_contacts:
        incoming = f"""
            SELECT s.record_id AS contact_id, i.person_id, s.occurred_at,
                   coalesce(s.recorded_at, s.occurred_at) AS recorded_at,
                   {_vocab_value('service', 's.service')} AS service,
                   coalesce({_vocab_value('status', 's.status')}, 'attended') AS status,
                   {_vocab_value('mode', 's.mode')} AS mode,
                   {'st.pseudonym' if staff else 'NULL::VARCHAR'} AS professional_id,
                   {system} AS source_system, {_lit(batch.batch_id)} AS batch_id, s._ord
            FROM staged s JOIN ids i ON {_ids_match(inp, 'i', 's')}
            {'LEFT JOIN staff st ON st.raw = s.professional' if staff else ''}
            WHERE s.reason IS NULL"""
        same_cols = ("person_id", "occurred_at", "recorded_at", "service", "status", "mode", "professional_id")
    else:
        tag = _vocab_value("tag", "s.tag")
        incoming = f"""
            SELECT s.record_id AS tag_id, i.person_id, s.recorded_at, {tag} AS tag,
                   CASE WHEN {tag} IN {_sql_list(CONCERN_TAGS)} THEN 'concern' ELSE 'strength' END AS polarity,
                   {_vocab_value('author_role', 's.author_role')} AS author_role,
                   {system} AS source_system, {_lit(batch.batch_id)} AS batch_id, s._ord
            FROM staged s JOIN ids i ON {_ids_match(inp, 'i', 's')}
            WHERE s.reason IS NULL"""
        same_cols = ("person_id", "recorded_at", "tag", "author_role")
    # Records this system sent before: identical ones are duplicates, older versions too, and
    # corrections replace what is held. (Skipped when the system has sent nothing yet.)
    con.execute(f"CREATE OR REPLACE TEMP TABLE existing (_ord BIGINT, {id_col} VARCHAR, verdict VARCHAR, "
                "batch_id VARCHAR)")
    retract = f"(SELECT record_id FROM staged WHERE reason = {_REASON_INDEX['entered_in_error']})"
    retracted = 0
    if scalar(con, f"SELECT EXISTS (SELECT 1 FROM {target} WHERE source_system = {system})"):
        # First the ids alone (a narrow semi-join), then the full comparison for those only.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE seen AS
            SELECT _ord FROM staged WHERE reason IS NULL AND _ord NOT IN (SELECT _ord FROM dups)
              AND record_id IN (SELECT {id_col} FROM {target} WHERE source_system = {system})""")
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM i.{k}" for k in same_cols)
        con.execute(f"""
            INSERT INTO existing
            SELECT i._ord, i.{id_col},
                   CASE WHEN {match} THEN 'same' WHEN i.recorded_at < t.recorded_at THEN 'older'
                        ELSE 'newer' END, t.batch_id
            FROM ({incoming} AND s._ord IN (SELECT _ord FROM seen)) i
            JOIN {target} t ON t.source_system = {system} AND t.{id_col} = i.{id_col}""")
        if "retracted" in inp.fields:
            retracted = int(scalar(con, f"SELECT count(*) FROM {target} WHERE source_system = {system} "
                                        f"AND {id_col} IN {retract}"))
    con.execute("""
        INSERT INTO dups SELECT _ord, CASE verdict
            WHEN 'same' THEN 'already loaded, unchanged (batch ' || batch_id || ')'
            ELSE 'an older version of a record already loaded (batch ' || batch_id || ')' END
        FROM existing WHERE verdict <> 'newer'""")
    con.execute(f"INSERT INTO bad SELECT {inp.line_sql}, 'duplicate', detail, NULL FROM dups")
    replaced = int(scalar(con, "SELECT count(*) FROM existing WHERE verdict = 'newer'"))
    duplicate = int(scalar(con, "SELECT count(*) FROM dups"))
    _pause_point("staged", Path(batch.rel).name)
    with transaction(con):
        if replaced:
            con.execute(f"""DELETE FROM {target} WHERE source_system = {system}
                            AND {id_col} IN (SELECT {id_col} FROM existing WHERE verdict = 'newer')""")
        if retracted:
            con.execute(f"DELETE FROM {target} WHERE source_system = {system} AND {id_col} IN {retract}")
        keep = "WHERE _ord NOT IN (SELECT _ord FROM dups)" if duplicate else ""
        loaded = int(con.execute(f"INSERT INTO {target} SELECT * EXCLUDE (_ord) FROM ({incoming}) {keep}")
                     .fetchone()[0])
        _pause_point("inserted", Path(batch.rel).name)
        reasons = _finish(run, batch, inp, rows_in, loaded, duplicate, unmapped)
    return FileResult(
        batch.name, batch.rel, "loaded", table=inp.table, rows_in=rows_in, rows_loaded=loaded,
        rows_quarantined=rows_in - loaded - duplicate, rows_duplicate=duplicate, rows_replaced=replaced,
        rows_retracted=retracted, rows_out_of_scope=inp.out_of_scope, reasons=reasons,
        unmapped=unmapped, defaulted=defaulted, line_breaks_in_fields=_line_breaks(inp, rows_in),
    )


def _sql_list(values) -> str:
    return "(" + ", ".join(_lit(v) for v in values) + ")"
