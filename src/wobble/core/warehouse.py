"""The DuckDB warehouse: the contract's tables, connections and the single-writer rule.

`SCHEMA` is the one definition of every table's columns, but for `feature_snapshots`, whose
columns are the feature catalogue's and which the features stage creates to match it.

DuckDB allows one read-write process per database file. `connect` turns the lock error
into `WarehouseBusy` ("warehouse busy"), after waiting up to `wait_seconds`. Stages write
inside one transaction each (`transaction`), so a crash leaves the warehouse as it was.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from wobble.core.errors import WarehouseBusy, WobbleError

SCHEMA = """
CREATE TABLE IF NOT EXISTS persons (
    person_id        VARCHAR NOT NULL,
    birth_year       SMALLINT,
    sex              VARCHAR,
    ethnicity_group  VARCHAR,
    imd_decile       TINYINT,
    team_id          VARCHAR,
    practice_id      VARCHAR,
    opted_out        BOOLEAN NOT NULL DEFAULT false,
    died_on          DATE,
    registered_on    DATE,
    source_system    VARCHAR,
    batch_id         VARCHAR,
    team_assigned_by VARCHAR  -- NULL: by practice (or the source's team); 'lsoa' or 'unattached' otherwise
);
CREATE TABLE IF NOT EXISTS contacts (
    contact_id       VARCHAR NOT NULL,
    person_id        VARCHAR NOT NULL,
    occurred_at      TIMESTAMP NOT NULL,
    recorded_at      TIMESTAMP NOT NULL,
    service          VARCHAR NOT NULL,
    status           VARCHAR NOT NULL,
    mode             VARCHAR,
    professional_id  VARCHAR,
    source_system    VARCHAR NOT NULL,
    batch_id         VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    tag_id           VARCHAR NOT NULL,
    person_id        VARCHAR NOT NULL,
    recorded_at      TIMESTAMP NOT NULL,
    tag              VARCHAR NOT NULL,
    polarity         VARCHAR NOT NULL,
    author_role      VARCHAR,
    source_system    VARCHAR NOT NULL,
    batch_id         VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    batch_id         VARCHAR NOT NULL,
    source           VARCHAR NOT NULL,
    file             VARCHAR NOT NULL,
    line             BIGINT,
    reason           VARCHAR NOT NULL,
    detail           VARCHAR,
    raw              VARCHAR
);
CREATE TABLE IF NOT EXISTS load_ledger (
    batch_id         VARCHAR NOT NULL,
    source           VARCHAR NOT NULL,
    file             VARCHAR NOT NULL,
    content_hash     VARCHAR NOT NULL,
    loaded_at        TIMESTAMP NOT NULL,
    rows_in          BIGINT NOT NULL,
    rows_loaded      BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    rows_duplicate   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path             VARCHAR NOT NULL,
    size             BIGINT NOT NULL,
    mtime_ns         BIGINT NOT NULL,
    ctime_ns         BIGINT NOT NULL,
    inode            BIGINT NOT NULL,
    device           BIGINT NOT NULL,
    content_hash     VARCHAR NOT NULL,
    hashed_at_ns     BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_unmapped (
    batch_id         VARCHAR NOT NULL,
    source           VARCHAR NOT NULL,
    field            VARCHAR NOT NULL,
    code             VARCHAR NOT NULL,
    rows             BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS person_links (
    link_id          VARCHAR NOT NULL,
    person_id        VARCHAR NOT NULL,
    source_system    VARCHAR NOT NULL,
    batch_id         VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    model_name       VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    as_of            DATE NOT NULL,
    person_id        VARCHAR NOT NULL,
    team_id          VARCHAR,
    risk             DOUBLE NOT NULL,
    team_percentile  DOUBLE,
    team_rank        INTEGER,           -- within the model's cohort; blank for people a cohort rule leaves out
    list_rank        INTEGER,
    cohort_rule      VARCHAR            -- the rule leaving the person out of the cohort (models.cohort)
);
CREATE TABLE IF NOT EXISTS explanations (
    model_name       VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    as_of            DATE NOT NULL,
    person_id        VARCHAR NOT NULL,
    feature          VARCHAR NOT NULL,
    value            DOUBLE,
    contribution     DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    model_name       VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    approved_by      VARCHAR NOT NULL,
    approved_at      TIMESTAMP NOT NULL,
    note             VARCHAR,
    demo             BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE IF NOT EXISTS huddle_lists (
    team_id          VARCHAR NOT NULL,
    as_of            DATE NOT NULL,
    person_id        VARCHAR NOT NULL,
    section          VARCHAR NOT NULL DEFAULT 'capacity',
    rank             INTEGER NOT NULL,
    risk             DOUBLE,
    team_percentile  DOUBLE,
    change           VARCHAR,
    previous_risk    DOUBLE,
    age_band         VARCHAR,
    reasons          JSON,
    recent_tags      JSON,
    caveats          JSON,
    sparkline        JSON,
    model_name       VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    demo             BOOLEAN NOT NULL DEFAULT false,
    published_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS huddle_list_context (
    team_id          VARCHAR NOT NULL,
    as_of            DATE NOT NULL,
    model_name       VARCHAR NOT NULL,
    model_version    VARCHAR NOT NULL,
    data_updated     JSON,
    team_caveats     JSON,
    last_huddle      JSON,
    published_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS huddle_outcomes (
    outcome_id       VARCHAR NOT NULL,
    team_id          VARCHAR NOT NULL,
    as_of            DATE NOT NULL,
    person_id        VARCHAR NOT NULL,
    outcome          VARCHAR NOT NULL,
    note             VARCHAR,
    recorded_by      VARCHAR NOT NULL,
    recorded_at      TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS review_tokens (
    token_id         VARCHAR NOT NULL,
    team_id          VARCHAR NOT NULL,
    token_hash       VARCHAR NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    created_by       VARCHAR NOT NULL,
    revoked_at       TIMESTAMP
);
-- rules an ingest applied once to what the warehouse held (`wobble.ingest.state.apply_held_rules`)
CREATE TABLE IF NOT EXISTS applied_rules (
    rule             VARCHAR NOT NULL,
    applied_at       TIMESTAMP NOT NULL
);
-- the pseudonym key's mark (`wobble.ingest.state.check_key`): one row, written at the first ingest
CREATE TABLE IF NOT EXISTS pseudonym_key_mark (
    mark             VARCHAR NOT NULL,
    since            TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    logged_at        TIMESTAMP NOT NULL,
    actor            VARCHAR NOT NULL,
    team_id          VARCHAR,
    person_id        VARCHAR,
    action           VARCHAR NOT NULL,
    detail           VARCHAR
);
"""


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


MEMORY_LIMIT = "4GB"  # per connection; a stage may ask for its own (`connect`; ingest: its config's memory_limit)


@contextmanager
def connect(
    path: Path, *, read_only: bool = False, wait_seconds: float = 0.0, memory_limit: str = MEMORY_LIMIT,
    must_exist: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse, creating it and its schema if needed (not `read_only` or `must_exist`: then
    a missing warehouse is an error naming its path). DuckDB may use up to `memory_limit`.

    Waits up to `wait_seconds` for another writer to finish, then raises WarehouseBusy.
    """
    path = Path(path)
    if (read_only or must_exist) and not path.exists():
        raise WobbleError(f"no warehouse at {path}: run `wobble ingest` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise WobbleError(f"cannot open warehouse {path}: {exc}") from None
            if time.monotonic() >= deadline:
                raise WarehouseBusy(
                    f"warehouse busy: another wobble process is writing to {path}; "
                    "wait for it to finish and try again"
                ) from None
            time.sleep(0.5)
    try:
        con.execute("SET enable_progress_bar = false")
        # DuckDB would take 80% of the machine's memory and a weekly job shares it: beyond this
        # limit it spills to disk (the training rows at 1,000,000 people took 20 GB without it)
        con.execute(f"SET memory_limit = '{memory_limit}'")
        if not read_only:
            con.execute(SCHEMA)
            _migrate(con)
        yield con
    finally:
        con.close()


# Columns added since a table was first created: a warehouse made by an earlier version gains them
# (and loses a NOT NULL a column no longer has) the first time it is opened for writing.
MIGRATIONS = (
    "ALTER TABLE scores ADD COLUMN IF NOT EXISTS list_rank INTEGER",
    "ALTER TABLE scores ADD COLUMN IF NOT EXISTS cohort_rule VARCHAR",
    "ALTER TABLE scores ALTER COLUMN team_rank DROP NOT NULL",
    "ALTER TABLE huddle_lists ADD COLUMN IF NOT EXISTS section VARCHAR DEFAULT 'capacity'",
    "ALTER TABLE huddle_lists ALTER COLUMN risk DROP NOT NULL",
    "ALTER TABLE persons ADD COLUMN IF NOT EXISTS team_assigned_by VARCHAR",
    # file_hashes keys a file by its path's SHA-256 now, since a path may name a person: the paths
    # an earlier version kept go (those files are hashed once more)
    "DELETE FROM file_hashes WHERE contains(path, '/') OR contains(path, '\\')",
)


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    for statement in MIGRATIONS:
        con.execute(statement)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: commit on success, roll back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether a table of that name exists in the main schema."""
    return bool(scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))


def one_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
    """The first row a query returns (None when it returns none); for queries of one row."""
    # fetchall, not fetchone: DuckDB 2.0 leaves a partly fetched result holding the connection, and
    # the next con.sql on it is refused ("connection has an unfinished result")
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None):
    """The single value a query returns (None when it returns no row)."""
    row = one_row(con, sql, params)
    return row[0] if row else None


def data_version(path: Path) -> str:
    """A digest of what the warehouse holds: every loaded batch and each contract table's row count.

    The same digest means the same inputs for every stage after ingest; flows cache on it.
    """
    with connect(path, read_only=True) as con:
        batches = con.execute(
            "SELECT string_agg(batch_id || ':' || content_hash, ',' ORDER BY batch_id, file) FROM load_ledger"
        ).fetchall()[0][0]
        counts = con.execute(
            "SELECT (SELECT count(*) FROM persons), (SELECT count(*) FROM contacts), (SELECT count(*) FROM tags)"
        ).fetchall()[0]
    return hashlib.sha256(f"{batches or ''}|{counts}".encode()).hexdigest()
