"""The review service's audit log: one row per request decision, refusals included, hash-chained.

Writes `service_audit` in the review database (`wobble.core.servicedb`). Each row holds a
timezone-aware time, the actor, the team, the person's pseudonym (only one on the team's list,
never what someone typed), the action, the result, the source address and the user agent. Its
`detail` is fixed wording chosen by the code: no identifiers and no free text reach it.

Tamper-evident: each row's `row_hash` is the SHA-256 of the previous row's hash and this row's
fields, so changing, removing or inserting a row breaks the chain from there on; the database
refuses UPDATE and DELETE on the table as well. `verify` walks the chain (`wobble review audit
verify`); `export` writes it as CSV for information governance (`wobble review audit export`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, select, text

from wobble.core.servicedb import AUDIT, ServiceDB, iso, now_utc

GENESIS = "0" * 64
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = ("seq", "logged_at", "actor", "team_id", "person_id", "action", "result", "source", "user_agent",
          "detail")


def _clean(value: str | None, limit: int) -> str | None:
    return None if value is None else _CONTROL.sub(" ", str(value))[:limit]


def row_hash(prev_hash: str, row: dict) -> str:
    """SHA-256 over the previous hash and this row's fields (canonical JSON)."""
    body = json.dumps([row[f] for f in FIELDS], separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def append(conn: Connection, *, actor: str, action: str, result: str, team_id: str | None = None,
           person_id: str | None = None, source: str | None = None, user_agent: str | None = None,
           detail: str | None = None) -> int:
    """Add one row to the chain inside the caller's write transaction; returns its sequence number."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(16016)"))  # one appender at a time: a chain, not a tree
    last = conn.execute(select(AUDIT.c.seq, AUDIT.c.row_hash).order_by(AUDIT.c.seq.desc()).limit(1)).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    row = {"seq": seq, "logged_at": iso(now_utc()), "actor": _clean(actor, 200) or "unknown",
           "team_id": _clean(team_id, 64), "person_id": _clean(person_id, 64), "action": _clean(action, 80),
           "result": _clean(result, 80), "source": _clean(source, 64), "user_agent": _clean(user_agent, 200),
           "detail": _clean(detail, 200)}
    conn.execute(AUDIT.insert().values(**row, prev_hash=prev, row_hash=row_hash(prev, row)))
    return seq


def record(db: ServiceDB, **fields) -> int:
    """`append` in a transaction of its own."""
    with db.write() as conn:
        return append(conn, **fields)


@dataclass(frozen=True)
class ChainCheck:
    rows: int
    first_bad: int | None = None  # the seq of the first row that does not fit the chain
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def verify(db: ServiceDB, *, batch: int = 5000) -> ChainCheck:
    """Walk the chain from the first row: every seq in turn, each hash from the one before."""
    prev, expected, n = GENESIS, 1, 0
    with db.read() as conn:
        while True:
            rows = conn.execute(select(AUDIT).where(AUDIT.c.seq >= expected).order_by(AUDIT.c.seq)
                                .limit(batch)).mappings().all()
            for r in rows:  # at most `batch` rows per round trip
                if r["seq"] != expected:
                    return ChainCheck(n, expected, f"row {expected} is missing (next is {r['seq']})")
                if r["prev_hash"] != prev:
                    return ChainCheck(n, r["seq"], "its link to the row before does not match")
                if row_hash(prev, dict(r)) != r["row_hash"]:
                    return ChainCheck(n, r["seq"], "its contents were changed after it was written")
                prev, expected, n = r["row_hash"], expected + 1, n + 1
            if len(rows) < batch:
                return ChainCheck(n)


def _cell(value) -> str:
    """A CSV cell a spreadsheet will not run: a user agent starting "=" is text, not a formula."""
    if value is None:
        return ""
    value = str(value)
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def export(db: ServiceDB, out: Path) -> int:
    """Write the audit log as CSV (every field and both hashes); returns how many rows."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with db.read() as conn, out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*FIELDS, "prev_hash", "row_hash"])
        for r in conn.execute(select(AUDIT).order_by(AUDIT.c.seq)).mappings():  # streamed, in order
            w.writerow([_cell(r[c]) for c in (*FIELDS, "prev_hash", "row_hash")])
            n += 1
    return n
