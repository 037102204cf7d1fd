"""Ingest: source extracts → the contract's `persons`, `contacts` and `tags`, or `quarantine`.

Reads every file named by the sources in `wobble.toml` (persons first, so that activity can be
matched to a registered person), validates each row, pseudonymises identifiers and writes, per
file, in one transaction:

- the rows that pass, to `persons` / `contacts` / `tags` (one row per person / contact / tag);
- the rows that fail, to `quarantine`, one row each with a reason and the row with identifiers
  masked;
- one `load_ledger` row: the file's content hash and `rows_in = loaded + quarantined + duplicate`.

A file whose content hash is already in the ledger is skipped, so loading twice changes nothing.
A contact or tag already loaded under the same source system and record id is a duplicate when it
is identical and a correction (it replaces the old version) when it is not.

Reasons, first match wins: malformed_line, missing_field, invalid_nhs_number, impossible_date,
unknown_code, person_not_found, opted_out (activity of people with a national data opt-out is not
kept: only the count).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from wobble.config import Config, Source
from wobble.errors import WobbleError
from wobble.identifiers import pseudonymise_many
from wobble.vocab import CONCERN_TAGS, MODES, SERVICES, STATUSES, STRENGTH_TAGS, TAGS, sql_list
from wobble.warehouse import connect, scalar, transaction

REASONS = (
    "malformed_line", "missing_field", "invalid_nhs_number", "impossible_date", "unknown_code",
    "person_not_found", "opted_out",
)
TABLE_ORDER = {"persons": 0, "contacts": 1, "tags": 2}
MASK = "**********"


@dataclass
class FileResult:
    """What happened to one file."""

    source: str
    file: str
    status: str  # loaded | skipped (already loaded) | failed
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    rows_replaced: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class IngestResult:
    """Totals over all files, and each file's own result."""

    files: list[FileResult]
    opted_out_persons: int = 0
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
        return {
            "rows_in": self.total("rows_in"),
            "rows_loaded": self.total("rows_loaded"),
            "rows_quarantined": self.total("rows_quarantined"),
            "rows_duplicate": self.total("rows_duplicate"),
            "rows_replaced": self.total("rows_replaced"),
            "files_loaded": sum(f.status == "loaded" for f in self.files),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_failed": len(self.failed),
            "quarantine_reasons": self.reasons(),
            "opted_out_persons": self.opted_out_persons,
            "errors": [f"{f.file}: {f.error}" for f in self.failed],
            "seconds": round(self.seconds, 2),
        }


def ingest(
    cfg: Config,
    *,
    key: bytes,
    progress: Callable[[str], None] | None = None,
    wait_seconds: float = 0.0,
) -> IngestResult:
    """Load every configured source into the warehouse; return counts per file.

    Files that cannot be read at all (wrong delimiter, missing columns, not text…) are reported
    as failed with a one-line reason; the other files still load.
    """
    t0 = time.perf_counter()
    if not cfg.sources:
        raise WobbleError("no sources in the config: add a [sources.<name>] block")
    results: list[FileResult] = []
    with connect(cfg.warehouse, wait_seconds=wait_seconds) as con:
        _load_lookups(con, cfg)
        ordered = sorted(cfg.sources.items(), key=lambda kv: TABLE_ORDER[kv[1].table])
        for name, source in ordered:
            files = sorted(glob.glob(str(cfg.path(source.path))))
            if not files:
                results.append(FileResult(name, source.path, "failed",
                                          error=f"no file matches {source.path}"))
                continue
            for path in files:
                if progress:
                    progress(f"{name}: {Path(path).name}")
                results.append(_ingest_file(con, cfg, name, source, Path(path), key))
        opted = scalar(con, "SELECT count(*) FROM persons WHERE opted_out")
    return IngestResult(results, opted_out_persons=int(opted), seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------


def _q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _load_lookups(con: duckdb.DuckDBPyConnection, cfg: Config) -> None:
    for name, cols in (("lsoa_imd", ("lsoa", "imd_decile")), ("practice_team", ("practice", "team_id"))):
        path = getattr(cfg.lookups, name)
        con.execute(f"DROP TABLE IF EXISTS lookup_{name}")
        if not path:
            continue
        full = cfg.path(path)
        if not full.exists():
            raise WobbleError(f"lookups.{name}: no file at {full}")
        con.execute(
            f"CREATE TEMP TABLE lookup_{name} AS SELECT column0::VARCHAR AS {cols[0]}, "
            f"column1::VARCHAR AS {cols[1]} FROM read_csv(?, header=true, all_varchar=true, "
            "columns={'column0': 'VARCHAR', 'column1': 'VARCHAR'}, auto_detect=false)",
            [str(full)],
        )


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
    names = next(csv.reader(io.StringIO(text), delimiter=source.delimiter))
    return [n.strip().lstrip("\ufeff") for n in names]


def _stage_raw(con: duckdb.DuckDBPyConnection, source: Source, path: Path) -> tuple[list[str], dict[str, str]]:
    """Create temp table `raw` (_line + the file's columns) and `rejects` (malformed lines).

    Returns the file's column names and their DuckDB types.
    """
    con.execute("DROP TABLE IF EXISTS raw; DROP TABLE IF EXISTS rejects")
    if source.kind == "parquet":
        try:
            con.execute(
                "CREATE TEMP TABLE raw AS SELECT file_row_number + 1 AS _line, * EXCLUDE "
                "(file_row_number) FROM read_parquet(?, file_row_number = true)",
                [str(path)],
            )
        except duckdb.Error as exc:
            raise WobbleError(f"not a readable Parquet file ({_first_line(exc)})") from None
        con.execute("CREATE TEMP TABLE rejects (line BIGINT, csv_line VARCHAR, error VARCHAR)")
    else:
        names = _csv_header(path, source)
        if len(names) < 2:
            raise WobbleError(
                f"only one column found with delimiter {source.delimiter!r}: is the delimiter right?"
            )
        if len(set(names)) != len(names):
            raise WobbleError("the header names a column twice")
        columns = "{" + ", ".join(f"{_lit(n)}: 'VARCHAR'" for n in names) + "}"
        con.execute("DROP TABLE IF EXISTS rej_errors; DROP TABLE IF EXISTS rej_scans")
        try:
            con.execute(
                f"""CREATE TEMP TABLE raw0 AS SELECT row_number() OVER () AS _ord, *
                FROM read_csv(?, delim = ?, quote = '"', escape = '"', header = true,
                    auto_detect = false, columns = {columns}, encoding = ?,
                    store_rejects = true, rejects_table = 'rej_errors',
                    rejects_scan = 'rej_scans', max_line_size = 20000000)""",
                [str(path), source.delimiter, source.encoding],
            )
        except duckdb.Error as exc:
            raise WobbleError(f"cannot read as CSV ({_first_line(exc)})") from None
        # Line numbers: the k-th good row sits on line k + 1 (header) + the rejected lines
        # before it. With rejected lines r_1 < r_2 < …, that count is #{i : r_i − i < k + 1}.
        con.execute(
            """CREATE TEMP TABLE rejects AS
            SELECT line, any_value(csv_line) AS csv_line, string_agg(DISTINCT error_type, '; ') AS error
            FROM rej_errors GROUP BY line ORDER BY line"""
        )
        con.execute(
            """CREATE TEMP TABLE raw AS
            WITH adj AS (SELECT line - row_number() OVER (ORDER BY line) AS a FROM rejects)
            SELECT raw0._ord + 1 + (SELECT count(*) FROM adj WHERE adj.a < raw0._ord + 1) AS _line,
                   raw0.* EXCLUDE (_ord)
            FROM raw0"""
        )
        con.execute("DROP TABLE raw0")
    info = con.sql("DESCRIBE raw").fetchall()
    types = {row[0]: row[1] for row in info if row[0] != "_line"}
    return list(types), types


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200]


def _nhs_expr(col: str) -> str:
    """Normalised NHS number text: digits only (spaces and hyphens removed)."""
    return f"regexp_replace(trim({col}::VARCHAR), '[\\s-]', '', 'g')"


def _check_digit_ok(n: str) -> str:
    """SQL: is the 10-character string `n` a valid NHS number?"""
    digits = " + ".join(f"{10 - i} * (ascii(substr({n}, {i + 1}, 1)) - 48)" for i in range(9))
    return (
        f"(regexp_full_match({n}, '[0-9]{{10}}') AND "
        f"(CASE (11 - ({digits}) % 11) WHEN 11 THEN 0 ELSE 11 - ({digits}) % 11 END) "
        f"= ascii(substr({n}, 10, 1)) - 48)"
    )


def _ts_expr(col: str, typ: str, fmt: str | None, tz: str) -> str:
    """A local, naive TIMESTAMP from a text, DATE, TIMESTAMP or TIMESTAMPTZ column."""
    c = _q(col)
    if typ.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone({_lit(tz)}, {c})"
    if typ.startswith("TIMESTAMP") or typ == "DATE":
        return f"{c}::TIMESTAMP"
    if fmt:
        return f"try_strptime(nullif(trim({c}), ''), {_lit(fmt)})"
    return f"try_cast(nullif(trim({c}), '') AS TIMESTAMP)"


def _value_map_sql(con: duckdb.DuckDBPyConnection, name: str, mapping: dict[str, str]) -> None:
    con.execute(f"DROP TABLE IF EXISTS {name}")
    con.execute(f"CREATE TEMP TABLE {name} (src VARCHAR, dst VARCHAR)")
    if mapping:
        con.executemany(f"INSERT INTO {name} VALUES (?, ?)", list(mapping.items()))


def _mapped(source: Source, field_name: str, allowed: tuple[str, ...], alias: str) -> tuple[str, str]:
    """SQL for a coded field: (value, is-unknown flag). Values map through the source's
    value mapping; values already in the vocabulary pass as they are; defaults fill nulls."""
    col = source.columns.get(field_name)
    default = source.defaults.get(field_name)
    dflt = _lit(default) if default else "NULL"
    if col is None:
        return dflt, "false"
    raw = f"nullif(trim(r.{_q(col)}::VARCHAR), '')"
    vm = f"vm_{alias}"
    value = (
        f"CASE WHEN {raw} IS NULL THEN {dflt} "
        f"WHEN {vm}.dst IS NOT NULL THEN {vm}.dst "
        f"WHEN {raw} IN {sql_list(allowed)} THEN {raw} END"
    )
    unknown = f"({raw} IS NOT NULL AND {vm}.dst IS NULL AND {raw} NOT IN {sql_list(allowed)})"
    return value, unknown


def _ingest_file(
    con: duckdb.DuckDBPyConnection, cfg: Config, name: str, source: Source, path: Path, key: bytes
) -> FileResult:
    t0 = time.perf_counter()
    rel = _display_path(cfg, path)
    content_hash = _file_hash(path)
    seen = con.execute(
        "SELECT count(*) FROM load_ledger WHERE source = ? AND content_hash = ?", [name, content_hash]
    ).fetchone()[0]
    if seen:
        return FileResult(name, rel, "skipped", seconds=time.perf_counter() - t0)
    batch_id = f"{name}-{content_hash[:16]}"
    try:
        columns, types = _stage_raw(con, source, path)
        missing = [c for c in source.columns.values() if c not in columns]
        if missing:
            raise WobbleError(
                f"missing column(s) {', '.join(missing)} (found: {', '.join(columns[:12])})"
            )
        if source.table == "persons":
            result = _load_persons(con, cfg, name, source, rel, batch_id, content_hash, key, types)
        else:
            result = _load_activity(con, cfg, name, source, rel, batch_id, content_hash, key, types)
    except WobbleError as exc:
        return FileResult(name, rel, "failed", error=str(exc), seconds=time.perf_counter() - t0)
    except duckdb.Error as exc:
        return FileResult(name, rel, "failed", error=_first_line(exc), seconds=time.perf_counter() - t0)
    result.seconds = time.perf_counter() - t0
    return result


def _display_path(cfg: Config, path: Path) -> str:
    try:
        return str(path.resolve().relative_to(cfg.root))
    except ValueError:
        return str(path)


def _masked_raw(source: Source, alias: str = "r") -> str:
    """The row as `column=value` pairs over the mapped columns only, NHS number masked.

    Columns the config does not map (names, addresses, free text) are never read into it.
    """
    parts = []
    for field_name, col in source.columns.items():
        if field_name == "nhs_number":
            val = f"CASE WHEN {alias}.{_q(col)} IS NULL THEN '' ELSE '{MASK}' END"
        elif field_name == "birth_date":
            val = "'(removed)'"  # a date of birth is an identifier: never kept
        else:
            val = f"coalesce({alias}.{_q(col)}::VARCHAR, '')"
        parts.append(f"{_lit(col + '=')} || {val}")
    return " || '; ' || ".join(parts) if parts else "''"


def _pseudonym_table(con: duckdb.DuckDBPyConnection, key: bytes, table: str, column: str,
                     out: str, prefix: str = "") -> None:
    """Map each distinct value of `table.column` to its pseudonym, hashing each value once."""
    values = [r[0] for r in con.sql(
        f"SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL").fetchall()]
    con.execute(f"DROP TABLE IF EXISTS {out}")
    con.execute(f"CREATE TEMP TABLE {out} (value VARCHAR, pseudonym VARCHAR)")
    if values:
        import pyarrow as pa

        ids = pseudonymise_many(key, (prefix + v for v in values))
        con.register("_pseudonyms", pa.table({"value": values, "pseudonym": ids}))
        con.execute(f"INSERT INTO {out} SELECT * FROM _pseudonyms")
        con.unregister("_pseudonyms")


def _quarantine_and_ledger(
    con: duckdb.DuckDBPyConnection, name: str, rel: str, batch_id: str, content_hash: str,
    rows_in: int, loaded: int, duplicate: int,
) -> dict[str, int]:
    """Insert quarantined rows (from temp table `bad`) and the ledger row; return reason counts."""
    con.execute(
        "INSERT INTO quarantine SELECT ?, ?, ?, _line, reason, detail, raw FROM bad",
        [batch_id, name, rel],
    )
    reasons = dict(con.sql("SELECT reason, count(*) FROM bad GROUP BY reason").fetchall())
    quarantined = sum(reasons.values())
    if rows_in != loaded + quarantined + duplicate:  # a bug, not a data problem: refuse to commit
        raise RuntimeError(
            f"{rel}: counts do not reconcile: in {rows_in} != loaded {loaded} + "
            f"quarantined {quarantined} + duplicate {duplicate}"
        )
    con.execute(
        "INSERT INTO load_ledger VALUES (?, ?, ?, ?, now()::TIMESTAMP, ?, ?, ?, ?)",
        [batch_id, name, rel, content_hash, rows_in, loaded, quarantined, duplicate],
    )
    return reasons


def _load_persons(con, cfg, name, source, rel, batch_id, content_hash, key, types) -> FileResult:
    c = source.columns
    tz = source.timezone
    fmt = source.date_format

    def col(f: str) -> str:
        return f"nullif(trim(r.{_q(c[f])}::VARCHAR), '')" if f in c else "NULL"

    def dt(f: str) -> str:
        return _ts_expr(c[f], types[c[f]], fmt, tz) + "::DATE" if f in c else "NULL::DATE"

    _value_map_sql(con, "vm_sex", source.values.get("sex", {}))
    _value_map_sql(con, "vm_eth", source.values.get("ethnicity_group", {}))
    _value_map_sql(con, "vm_opt", source.values.get("opted_out", {}))
    sex, sex_unknown = _mapped(source, "sex", ("female", "male"), "sex")
    eth, _ = _mapped(
        source, "ethnicity_group", ("White", "Mixed", "Asian", "Black", "Other", "Not stated"), "eth"
    )
    opt, _ = _mapped(source, "opted_out", ("true", "false"), "opt")
    birth_year = (
        f"year({dt('birth_date')})" if "birth_date" in c
        else f"try_cast({col('birth_year')} AS INTEGER)"
    )
    imd = (
        "try_cast(li.imd_decile AS TINYINT)" if "lsoa" in c and cfg.lookups.lsoa_imd
        else f"try_cast({col('imd_decile')} AS TINYINT)"
    )
    team = "lp.team_id" if "practice_id" in c and cfg.lookups.practice_team else col("team_id")
    join_lsoa = (
        f"LEFT JOIN lookup_lsoa_imd li ON li.lsoa = {col('lsoa')}"
        if "lsoa" in c and cfg.lookups.lsoa_imd else ""
    )
    join_prac = (
        f"LEFT JOIN lookup_practice_team lp ON lp.practice = {col('practice_id')}"
        if "practice_id" in c and cfg.lookups.practice_team else ""
    )
    nhs = _nhs_expr(f"r.{_q(c['nhs_number'])}")
    con.execute("DROP TABLE IF EXISTS staged")
    con.execute(f"""
        CREATE TEMP TABLE staged AS
        SELECT r._line, {nhs} AS nhs, {birth_year} AS birth_year, {sex} AS sex,
               coalesce({eth}, 'Not stated') AS ethnicity_group, {imd} AS imd_decile,
               {team} AS team_id, {col('practice_id')} AS practice_id,
               coalesce({opt} = 'true', false) AS opted_out, {dt('died_on')} AS died_on,
               {dt('registered_on')} AS registered_on,
               {col('nhs_number')} IS NULL OR {col('sex')} IS NULL AS miss,
               {sex_unknown} OR ({team} IS NULL) AS unknown,
               ({'birth_date' in c} AND {col('birth_date') if 'birth_date' in c else 'NULL'} IS NOT NULL
                    AND {dt('birth_date')} IS NULL)
                 OR {birth_year} NOT BETWEEN 1890 AND year(current_date)
                 OR {dt('died_on')} > current_date
                 OR ({col('died_on')} IS NOT NULL AND {dt('died_on')} IS NULL) AS bad_date,
               {_masked_raw(source)} AS raw
        FROM raw r
        LEFT JOIN vm_sex ON vm_sex.src = {col('sex')}
        LEFT JOIN vm_eth ON vm_eth.src = {col('ethnicity_group')}
        LEFT JOIN vm_opt ON vm_opt.src = {col('opted_out')}
        {join_lsoa} {join_prac}
    """)
    _classify(con, extra_person_check=False)
    _pseudonym_table(con, key, "good", "nhs", "pseudo")
    rows_in = scalar(con, "SELECT (SELECT count(*) FROM raw) + (SELECT count(*) FROM rejects)")
    with transaction(con):
        # Within the file, the last line for a person wins (a later line is a later record).
        # People who opted out keep only the flag and team (so later activity is recognised).
        con.execute("""
            CREATE OR REPLACE TEMP TABLE incoming AS
            SELECT p.pseudonym AS person_id,
                   CASE WHEN opted_out THEN NULL ELSE birth_year END AS birth_year,
                   CASE WHEN opted_out THEN NULL ELSE sex END AS sex,
                   CASE WHEN opted_out THEN NULL ELSE ethnicity_group END AS ethnicity_group,
                   CASE WHEN opted_out THEN NULL ELSE imd_decile END AS imd_decile,
                   team_id, practice_id, opted_out,
                   CASE WHEN opted_out THEN NULL ELSE died_on END AS died_on,
                   CASE WHEN opted_out THEN NULL ELSE registered_on END AS registered_on
            FROM good g JOIN pseudo p ON p.value = g.nhs
            QUALIFY row_number() OVER (PARTITION BY p.pseudonym ORDER BY g._line DESC) = 1
        """)
        dup_in_file = scalar(con, "SELECT count(*) FROM good") - scalar(con, "SELECT count(*) FROM incoming")
        same = scalar(con, """
            SELECT count(*) FROM incoming i JOIN persons p USING (person_id)
            WHERE p.birth_year IS NOT DISTINCT FROM i.birth_year AND p.sex IS NOT DISTINCT FROM i.sex
              AND p.ethnicity_group IS NOT DISTINCT FROM i.ethnicity_group
              AND p.imd_decile IS NOT DISTINCT FROM i.imd_decile
              AND p.team_id IS NOT DISTINCT FROM i.team_id
              AND p.practice_id IS NOT DISTINCT FROM i.practice_id
              AND p.opted_out = i.opted_out AND p.died_on IS NOT DISTINCT FROM i.died_on
              AND p.registered_on IS NOT DISTINCT FROM i.registered_on
        """)
        replaced = scalar(con, "SELECT count(*) FROM incoming JOIN persons USING (person_id)") - same
        con.execute("DELETE FROM persons WHERE person_id IN (SELECT person_id FROM incoming)")
        con.execute("INSERT INTO persons SELECT *, ?, ? FROM incoming", [source.system, batch_id])
        loaded = scalar(con, "SELECT count(*) FROM incoming") - same
        duplicate = dup_in_file + same
        reasons = _quarantine_and_ledger(con, name, rel, batch_id, content_hash, rows_in, loaded, duplicate)
    return FileResult(name, rel, "loaded", rows_in, loaded, sum(reasons.values()), duplicate,
                      replaced, reasons)


def _classify(con: duckdb.DuckDBPyConnection, *, extra_person_check: bool) -> None:
    """Split `staged` into `good` and `bad` (with the first failing reason); add rejects to `bad`."""
    person_check = (
        "WHEN person_id IS NULL THEN 'person_not_found' WHEN opted_out THEN 'opted_out'"
        if extra_person_check else ""
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE classified AS
        SELECT *, CASE
            WHEN miss THEN 'missing_field'
            WHEN NOT ({_check_digit_ok('nhs')}) THEN 'invalid_nhs_number'
            WHEN bad_date THEN 'impossible_date'
            WHEN unknown THEN 'unknown_code'
            {person_check}
        END AS reason
        FROM staged
    """)
    con.execute("CREATE OR REPLACE TEMP TABLE good AS SELECT * EXCLUDE (reason, miss, unknown, bad_date, raw) "
                "FROM classified WHERE reason IS NULL")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE bad AS
        SELECT _line, reason, NULL::VARCHAR AS detail,
               CASE WHEN reason = 'opted_out' THEN NULL ELSE raw END AS raw
        FROM classified WHERE reason IS NOT NULL
        UNION ALL
        SELECT line, 'malformed_line', error,
               regexp_replace(csv_line, '[0-9][0-9 -]{8,}[0-9]', '[number removed]', 'g')
        FROM rejects
    """)


def _load_activity(con, cfg, name, source, rel, batch_id, content_hash, key, types) -> FileResult:
    """Contacts or tags from one file."""
    c = source.columns
    tz = source.timezone
    fmt = source.timestamp_format
    is_contacts = source.table == "contacts"

    def col(f: str) -> str:
        return f"nullif(trim(r.{_q(c[f])}::VARCHAR), '')" if f in c else "NULL"

    def ts(f: str) -> str:
        return _ts_expr(c[f], types[c[f]], fmt, tz) if f in c else "NULL::TIMESTAMP"

    def present(f: str) -> str:
        return f"(r.{_q(c[f])} IS NOT NULL AND trim(r.{_q(c[f])}::VARCHAR) <> '')" if f in c else "false"

    nhs = _nhs_expr(f"r.{_q(c['nhs_number'])}")
    fields = {"service": SERVICES, "status": STATUSES, "mode": MODES} if is_contacts else {"tag": TAGS}
    selects, unknowns, joins = [], [], []
    for f, allowed in fields.items():
        _value_map_sql(con, f"vm_{f}", source.values.get(f, {}))
        value, unknown = _mapped(source, f, allowed, f)
        selects.append(f"{value} AS {f}")
        if f != "mode":  # an unknown mode is counted, not a reason to reject the contact
            unknowns.append(unknown)
        if f in c:
            joins.append(f"LEFT JOIN vm_{f} ON vm_{f}.src = {col(f)}")
    if not is_contacts:
        _value_map_sql(con, "vm_author_role", source.values.get("author_role", {}))
        role_value, _ = _mapped(source, "author_role", tuple(), "author_role")
        if "author_role" in c:
            joins.append(f"LEFT JOIN vm_author_role ON vm_author_role.src = {col('author_role')}")
            role_value = f"coalesce(vm_author_role.dst, {col('author_role')})"
        selects.append(f"{role_value} AS author_role")
    occurred = ts("occurred_at") if is_contacts else ts("recorded_at")
    recorded = ts("recorded_at")
    required = ["nhs_number", "record_id", "occurred_at", "service"] if is_contacts else [
        "nhs_number", "record_id", "recorded_at", "tag"]
    miss = " OR ".join(f"NOT {present(f)}" for f in required if f in c)
    date_cols = [f for f in ("occurred_at", "recorded_at") if f in c]
    # Unparseable, before 1900, in the future, or recorded more than a day before it happened.
    bad_date = " OR ".join(
        [f"({present(f)} AND {ts(f)} IS NULL)" for f in date_cols]
        + [f"{ts(f)} < TIMESTAMP '1900-01-01' OR {ts(f)} > now()::TIMESTAMP" for f in date_cols]
        + ([f"{recorded} < {occurred} - INTERVAL 1 DAY"] if is_contacts and "recorded_at" in c else [])
    )
    con.execute("DROP TABLE IF EXISTS staged")
    con.execute(f"""
        CREATE TEMP TABLE staged AS
        SELECT r._line, {nhs} AS nhs, {col('record_id')} AS record_id,
               {occurred} AS occurred_at, {recorded} AS recorded_at,
               {', '.join(selects)},
               {col('professional') if is_contacts else 'NULL'} AS professional,
               {'(' + miss + ')' if miss else 'false'} AS miss,
               {' OR '.join('coalesce(' + u + ', false)' for u in unknowns) or 'false'} AS unknown,
               coalesce({bad_date}, false) AS bad_date,
               {_masked_raw(source)} AS raw
        FROM raw r {' '.join(joins)}
    """)
    # Who are these people? Pseudonymise each distinct valid number once, then match.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged_nhs AS
        SELECT DISTINCT nhs FROM staged WHERE nhs IS NOT NULL AND {_check_digit_ok('nhs')}
    """)
    _pseudonym_table(con, key, "staged_nhs", "nhs", "pseudo")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE staged AS
        SELECT s.*, p.person_id, coalesce(p.opted_out, false) AS opted_out
        FROM staged s
        LEFT JOIN pseudo ps ON ps.value = s.nhs
        LEFT JOIN persons p ON p.person_id = ps.pseudonym
    """)
    _classify(con, extra_person_check=True)
    if is_contacts:
        _pseudonym_table(con, key, "good", "professional", "staff", prefix=f"staff:{source.system}:")
    rows_in = scalar(con, "SELECT (SELECT count(*) FROM raw) + (SELECT count(*) FROM rejects)")
    system = _lit(source.system)
    if is_contacts:
        target, id_col = "contacts", "contact_id"
        incoming_sql = f"""
            SELECT g.record_id AS contact_id, g.person_id, g.occurred_at,
                   coalesce(g.recorded_at, g.occurred_at) AS recorded_at, g.service,
                   coalesce(g.status, 'attended') AS status, g.mode, st.pseudonym AS professional_id,
                   {system} AS source_system, '{batch_id}' AS batch_id, g._line
            FROM good g LEFT JOIN staff st ON st.value = g.professional"""
        same_cols = ["person_id", "occurred_at", "recorded_at", "service", "status", "mode",
                     "professional_id"]
    else:
        target, id_col = "tags", "tag_id"
        incoming_sql = f"""
            SELECT g.record_id AS tag_id, g.person_id, g.recorded_at, g.tag,
                   CASE WHEN g.tag IN {sql_list(STRENGTH_TAGS)} THEN 'strength'
                        WHEN g.tag IN {sql_list(CONCERN_TAGS)} THEN 'concern' END AS polarity,
                   g.author_role, {system} AS source_system, '{batch_id}' AS batch_id, g._line
            FROM good g"""
        same_cols = ["person_id", "recorded_at", "tag", "author_role"]
    unmapped = {}
    if is_contacts and "mode" in c:
        unmapped["mode"] = scalar(con, "SELECT count(*) FROM classified WHERE reason IS NULL AND mode IS NULL")
    with transaction(con):
        # Within a file the last line for a record id wins; across files, identical is a
        # duplicate and different is a correction that replaces the earlier version.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE incoming AS
            SELECT * FROM ({incoming_sql})
            QUALIFY row_number() OVER (PARTITION BY {id_col} ORDER BY _line DESC) = 1
        """)
        good_n = scalar(con, "SELECT count(*) FROM good")
        inc_n = scalar(con, "SELECT count(*) FROM incoming")
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM i.{k}" for k in same_cols)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE existing AS
            SELECT i.{id_col}, ({match}) AS same
            FROM incoming i JOIN {target} t
              ON t.source_system = {system} AND t.{id_col} = i.{id_col}
        """)
        same, replaced = con.execute(
            "SELECT count(*) FILTER (WHERE same), count(*) FILTER (WHERE NOT same) FROM existing"
        ).fetchone()
        if replaced:
            con.execute(f"""
                DELETE FROM {target} WHERE source_system = {system}
                  AND {id_col} IN (SELECT {id_col} FROM existing WHERE NOT same)
            """)
        con.execute(f"""
            INSERT INTO {target}
            SELECT i.* EXCLUDE (_line) FROM incoming i
            WHERE i.{id_col} NOT IN (SELECT {id_col} FROM existing WHERE same)
        """)
        loaded = inc_n - same
        duplicate = (good_n - inc_n) + same
        reasons = _quarantine_and_ledger(con, name, rel, batch_id, content_hash, rows_in, loaded, duplicate)
    return FileResult(name, rel, "loaded", rows_in, loaded, sum(reasons.values()), duplicate,
                      replaced, reasons, unmapped={k: v for k, v in unmapped.items() if v})
