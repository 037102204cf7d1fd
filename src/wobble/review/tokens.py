"""Access tokens for the review page: one team each, shown once, stored only as a SHA-256.

Reads and writes `review_tokens`; every token created or revoked is a row in `audit_log`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.warehouse import connect
from wobble.lists.outcomes import audit

TOKEN_PREFIX = "wbt_"


def token_hash(token: str) -> str:
    """SHA-256 of a token: tokens are 256 random bits, so a fast hash is enough to store them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_token(cfg: Config, team_id: str, *, created_by: str) -> tuple[str, str]:
    """A new access token for one team: (token_id, token). Only its hash is stored."""
    created_by = created_by.strip() or "unknown"
    with connect(cfg.warehouse, wait_seconds=10) as con:
        teams = [r[0] for r in con.execute(
            "SELECT DISTINCT team_id FROM persons WHERE team_id IS NOT NULL UNION "
            "SELECT DISTINCT team_id FROM huddle_lists ORDER BY 1").fetchall()]
        if team_id not in teams:
            known = ", ".join(teams[:20]) + (" …" if len(teams) > 20 else "")
            raise WobbleError(f"no team {team_id!r} in the warehouse (teams: {known or 'none yet'})")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_id = secrets.token_hex(4)
        con.execute("INSERT INTO review_tokens VALUES (?, ?, ?, ?, ?, NULL)",
                    [token_id, team_id, token_hash(token), datetime.now(), created_by])
        audit(con, actor=created_by, action="create_token", team_id=team_id, detail=f"token {token_id}")
    return token_id, token


def revoke_tokens(cfg: Config, team_id: str, *, revoked_by: str, token_id: str | None = None) -> int:
    """Revoke a team's live tokens (only `token_id`, if given); returns how many."""
    only, params = ("AND token_id = ?", [team_id, token_id]) if token_id else ("", [team_id])
    with connect(cfg.warehouse, wait_seconds=10) as con:
        (n,), = con.execute(f"SELECT count(*) FROM review_tokens WHERE team_id = ? {only} AND revoked_at IS NULL",
                            params).fetchall()
        con.execute(f"UPDATE review_tokens SET revoked_at = ? WHERE team_id = ? {only} AND revoked_at IS NULL",
                    [datetime.now(), *params])
        audit(con, actor=revoked_by.strip() or "unknown", action="revoke_tokens", team_id=team_id,
              detail=f"{n} token(s)" + (f": {token_id}" if token_id else ""))
    return int(n)


@dataclass(frozen=True)
class Session:
    team_id: str
    token_id: str
    token_hash: str
    from_cookie: bool

    @property
    def actor(self) -> str:
        return f"review token {self.token_id}"


def session_for(con, token: str | None, from_cookie: bool) -> Session | None:
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    h = token_hash(token)
    rows = con.execute("SELECT team_id, token_id FROM review_tokens WHERE token_hash = ? AND revoked_at IS NULL",
                       [h]).fetchall()
    return Session(rows[0][0], rows[0][1], h, from_cookie) if rows else None


