"""The review service's own database: the one definition of its tables, and how to open it.

The service never opens the DuckDB warehouse. `wobble publish` pushes each team's list into this
database (`service_lists`, one row per team list; `service_people`, one row per listed person,
the page's view of them ready to show), and outcomes recorded here (`service_outcomes`, one row
per decision) go back to the warehouse's `huddle_outcomes` at the next publish. It also holds the
service's access tokens (`service_tokens`, hashes only), server-side sessions (`service_sessions`,
one row per sign-in, keyed by the hash of the cookie's session id) and its audit log
(`service_audit`, one row per request decision, hash-chained: `wobble.review.audit`), and
OpenID Connect sign-ins in flight and used nonces (`service_signins`, `service_nonces`).

One code path (SQLAlchemy Core) for both engines: SQLite in WAL mode by default (readers never
wait for the writer; one writer at a time, `BEGIN IMMEDIATE`, waiting `busy_timeout`), and
PostgreSQL (psycopg 3) for a trust's deployment. A write that cannot start within the configured
`busy_seconds` raises `ServiceBusy`, which the page turns into a prompt 503.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sqlalchemy import (
    DDL,
    Column,
    Connection,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from wobble.core.config import DATABASE_SCHEMES, DATABASE_URLS
from wobble.core.errors import WobbleError, first_line

META = MetaData()

LISTS = Table(
    "service_lists", META,
    Column("list_id", String(200), primary_key=True),  # team|as_of|model|version
    Column("team_id", String(64), nullable=False, index=True),
    Column("as_of", String(10), nullable=False),
    Column("model_name", String(100), nullable=False),
    Column("model_version", String(40), nullable=False),
    Column("published_at", String(40), nullable=False),
    Column("header", Text, nullable=False),  # JSON: the facts above the list (views.list_header)
)
PEOPLE = Table(
    "service_people", META,
    Column("list_id", String(200), primary_key=True),
    Column("person_id", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("section", String(20), nullable=False),
    Column("view", Text, nullable=False),  # JSON: views.person_view of the row, with the last outcome
)
OUTCOMES = Table(
    "service_outcomes", META,
    Column("outcome_id", String(40), primary_key=True),
    Column("nonce", String(64), unique=True),  # the form's nonce: a replayed form is one decision
    Column("team_id", String(64), nullable=False),
    Column("as_of", String(10), nullable=False),
    Column("person_id", String(64), nullable=False),
    Column("outcome", String(40), nullable=False),
    Column("note", String(300)),
    Column("recorded_by", String(80), nullable=False),
    Column("recorded_at", String(40), nullable=False),  # ISO 8601, UTC
    Index("service_outcomes_person", "team_id", "person_id"),
)
TOKENS = Table(
    "service_tokens", META,
    Column("token_id", String(16), primary_key=True),
    Column("team_id", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("scope", String(20), nullable=False),  # read | record
    Column("created_at", String(40), nullable=False),
    Column("created_by", String(80), nullable=False),
    Column("expires_at", String(40), nullable=False),
    Column("revoked_at", String(40)),
)
# One row per sign-in. The cookie holds a random session id; only its SHA-256 is stored. A session
# carries a user identity: a team token signs in as that team (user_id "token:<id>", role "team");
# OpenID Connect sign-in creates the same rows for an individual (user_id the provider's subject).
SESSIONS = Table(
    "service_sessions", META,
    Column("session_hash", String(64), primary_key=True),
    Column("user_id", String(200), nullable=False),
    Column("display_name", String(200), nullable=False),
    Column("role", String(40), nullable=False),
    Column("team_id", String(64), nullable=False),
    Column("auth", String(20), nullable=False),  # token | oidc
    Column("scope", String(20), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", String(40), nullable=False),
    Column("last_seen_at", String(40), nullable=False),
    Column("expires_at", String(40), nullable=False),  # absolute expiry
    Column("ended_at", String(40)),
)
# OpenID Connect sign-in (wobble.review.signin): a sign-in in flight, keyed by the SHA-256 of its
# state and used once; and each accepted ID token nonce (its SHA-256) until the token expires.
SIGNINS = Table(
    "service_signins", META,
    Column("state_hash", String(64), primary_key=True),
    Column("nonce", String(64), nullable=False),
    Column("code_verifier", String(128), nullable=False),
    Column("team", String(64), nullable=False),
    Column("started_at", String(40), nullable=False),
)
NONCES = Table(
    "service_nonces", META,
    Column("nonce_hash", String(64), primary_key=True),
    Column("until", String(40), nullable=False),
)
AUDIT = Table(
    "service_audit", META,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("logged_at", String(40), nullable=False),  # ISO 8601 with its offset (UTC)
    Column("actor", String(200), nullable=False),
    Column("team_id", String(64)),
    Column("person_id", String(64)),  # a pseudonym on the team's list, never what was typed
    Column("action", String(80), nullable=False),
    Column("result", String(80), nullable=False),
    Column("source", String(64)),
    Column("user_agent", String(200)),
    Column("detail", String(200)),  # fixed wording: no identifiers, no free text
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
)

# Append-only: the database itself refuses to change or remove an audit row.
_SQLITE_GUARDS = [
    f"CREATE TRIGGER IF NOT EXISTS service_audit_no_{op.lower()} BEFORE {op} ON service_audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
    for op in ("UPDATE", "DELETE")
]
_PG_GUARD = [
    "CREATE OR REPLACE FUNCTION service_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$",
    "CREATE OR REPLACE TRIGGER service_audit_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON service_audit "
    "FOR EACH STATEMENT EXECUTE FUNCTION service_audit_append_only()",
]
for _sql in _SQLITE_GUARDS:
    event.listen(AUDIT, "after_create", DDL(_sql).execute_if(dialect="sqlite"))
for _sql in _PG_GUARD:
    event.listen(AUDIT, "after_create", DDL(_sql).execute_if(dialect="postgresql"))


class ServiceBusy(WobbleError):
    """The review database did not let a write start in time; nothing was written."""

    exit_code = 75


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order in both engines."""
    return t.astimezone(UTC).isoformat(timespec="microseconds")


class ServiceDB:
    """One engine for the review database; `read()` and `write()` give a connection in a transaction."""

    def __init__(self, url: str, *, busy_seconds: float = 2.0):
        self.url, self.busy_seconds = url, busy_seconds
        self._writer = threading.Lock()
        self.sqlite = url.startswith("sqlite")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        if url.split("://", 1)[0] not in DATABASE_SCHEMES:
            raise WobbleError(f"review database {_scheme_only(url)}: {SUPPORTED}")
        try:
            self.engine = self._engine(url)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:  # not a URL; a driver not installed
            raise WobbleError(f"review database {_scheme_only(url)}: cannot use it ({first_line(exc)}); "
                              f"{SUPPORTED}") from None
        self._create()

    def _engine(self, url: str):
        if self.sqlite:
            engine = create_engine(url, connect_args={"timeout": self.busy_seconds, "check_same_thread": False})
            event.listen(engine, "connect", self._sqlite_connect)
            event.listen(engine, "begin", self._sqlite_begin)
            return engine
        ms = int(self.busy_seconds * 1000)
        return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={
            "options": f"-c lock_timeout={ms} -c idle_in_transaction_session_timeout=60000",
            "connect_timeout": max(2, int(self.busy_seconds) + 1)})

    def _sqlite_connect(self, dbapi_con, _record) -> None:
        dbapi_con.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN itself
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"busy_timeout={int(self.busy_seconds * 1000)}"):
            dbapi_con.execute(f"PRAGMA {pragma}")

    @staticmethod
    def _sqlite_begin(conn: Connection) -> None:
        # a writer takes the write lock at the start, so it waits (busy_timeout) rather than failing mid-way
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("wobble_write") else "BEGIN")

    def _create(self) -> None:
        try:
            with self.engine.begin() as conn:
                META.create_all(conn)
        except OperationalError as exc:
            raise WobbleError(f"cannot open the review database {self.safe_url}: {_first_line(exc)}") from None

    @property
    def safe_url(self) -> str:
        """The URL without a password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise _busy_or_error(exc) from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: all of it commits, or none (ServiceBusy if the lock did not come in time).

        SQLite: this process's writers queue on a lock of their own first; SQLite's busy handler
        polls with growing sleeps, which is left to writers in other processes (a publish, the CLI)."""
        if self.sqlite and not self._writer.acquire(timeout=self.busy_seconds):
            raise ServiceBusy("the review database is busy: nothing was written; try again in a moment")
        try:
            with self.engine.connect().execution_options(wobble_write=True) as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            raise _busy_or_error(exc) from None
        finally:
            if self.sqlite:
                self._writer.release()

    def dispose(self) -> None:
        self.engine.dispose()


SUPPORTED = f"{DATABASE_URLS}; see [review] database_url in wobble.toml"


def _scheme_only(url: str) -> str:
    """A database URL for a message about it: its scheme alone (the rest may hold a password), or,
    when it is not a URL at all, the text itself."""
    return f"{url.split('://', 1)[0]}://…" if "://" in url else repr(url)


def _first_line(exc: Exception) -> str:
    """The first line of a database error: the driver's own (`orig`) when SQLAlchemy wraps one."""
    return first_line(getattr(exc, "orig", exc))


def _busy_or_error(exc: Exception) -> Exception:
    text = _first_line(exc).lower()
    if any(w in text for w in ("locked", "lock timeout", "busy", "canceling statement")):
        return ServiceBusy("the review database is busy: nothing was written; try again in a moment")
    return WobbleError(f"review database: {_first_line(exc)}")


_OPEN: dict[tuple[str, float], ServiceDB] = {}


def service_db(url: str, *, busy_seconds: float = 2.0) -> ServiceDB:
    """The (per process, shared) ServiceDB for `url`, creating its tables on first use."""
    key = (url, busy_seconds)
    if key not in _OPEN:
        _OPEN[key] = ServiceDB(url, busy_seconds=busy_seconds)
    return _OPEN[key]
