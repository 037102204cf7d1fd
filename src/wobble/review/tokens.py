"""Access to the review service: team tokens for scripts, server-side sessions for browsers.

Reads and writes `service_tokens` (one row per token: its team, scope and expiry, and only its
SHA-256) and `service_sessions` (one row per sign-in) in the review database. Every token made
or revoked is a row in the audit log.

A browser's cookie holds a random session id, never a token; the server keeps its SHA-256 with
who signed in (user id, display name, role, team), when, and when it ends: after
`session_idle_minutes` unused, or `session_hours` after signing in, whichever comes first, or at
sign-out. A team token signs in as the team (user id `token:<id>`, role `team`); individual
sign-in (OpenID Connect) opens the same kind of session for a person through `open_session`.
Scripts may send a token as `Authorization: Bearer …`; a token has a scope (`read`: lists only;
`record`: outcomes too) and expires after `token_days`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select

from wobble.core.config import MAX_TOKEN_DAYS, Config, Review
from wobble.core.errors import WobbleError, some_of
from wobble.core.servicedb import LISTS, SESSIONS, TOKENS, ServiceDB, iso, now_utc, service_db
from wobble.review import audit
from wobble.review.records import teams

TOKEN_PREFIX = "wbt_"
SCOPES = ("read", "record")


def token_hash(token: str) -> str:
    """SHA-256 of a token or session id: both are 256 random bits, so a fast hash is enough to store them."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def db_of(cfg: Config) -> ServiceDB:
    return service_db(cfg.review_database, busy_seconds=cfg.review.busy_seconds)


def create_token(cfg: Config, team_id: str, *, created_by: str, scope: str = "record",
                 days: int | None = None, via: str = "command line") -> tuple[str, str]:
    """A new access token for one team: (token_id, token). Only its hash is stored. `days` None:
    `[review] token_days`."""
    if scope not in SCOPES:
        raise WobbleError(f"unknown scope {scope!r}: read or record")
    if days is None:
        days = cfg.review.token_days
    elif not 1 <= days <= MAX_TOKEN_DAYS:  # 0 once meant "the default", a negative number an
        # already expired token, and a huge one a date past the year 9999 (a traceback)
        raise WobbleError(f"--days {days}: a token lasts from 1 to {MAX_TOKEN_DAYS} days (leave --days out "
                          f"for [review] token_days, {cfg.review.token_days})")
    created_by = created_by.strip()[:80] or "unknown"
    db = db_of(cfg)
    known = teams(db)
    if team_id not in known:
        raise WobbleError(f"no team {team_id!r} has a published list "
                          f"(teams: {some_of(known, 20) or 'none yet: run wobble publish'})")
    token, token_id, now = TOKEN_PREFIX + secrets.token_urlsafe(32), secrets.token_hex(4), now_utc()
    with db.write() as conn:
        conn.execute(TOKENS.insert().values(
            token_id=token_id, team_id=team_id, token_hash=token_hash(token), scope=scope, created_at=iso(now),
            created_by=created_by, expires_at=iso(now + timedelta(days=days))))
        audit.append(conn, actor=f"{created_by} ({via})", action="create_token", result="done",
                     team_id=team_id, detail=f"token {token_id}, scope {scope}")
    return token_id, token


def revoke_tokens(cfg: Config, team_id: str, *, revoked_by: str, token_id: str | None = None,
                  via: str = "command line", must_match: bool = False) -> int:
    """Revoke a team's live tokens (only `token_id`, if given) and end their sessions; returns how many.

    `must_match`: raise WobbleError, revoking nothing, when no live token matches (a mistyped team
    or token id must not pass for done); the review page, whose form names live tokens, leaves it off."""
    live = (TOKENS.c.team_id == team_id) & TOKENS.c.revoked_at.is_(None)
    if token_id:
        live &= TOKENS.c.token_id == token_id
    now = iso(now_utc())
    with db_of(cfg).write() as conn:
        ids = [t for (t,) in conn.execute(select(TOKENS.c.token_id).where(live))]
        if must_match and not ids:
            raise WobbleError(_nothing_to_revoke(conn, team_id, token_id))
        conn.execute(TOKENS.update().where(live).values(revoked_at=now))
        if ids:
            conn.execute(SESSIONS.update().where(SESSIONS.c.user_id.in_([f"token:{t}" for t in ids]),
                                                 SESSIONS.c.ended_at.is_(None)).values(ended_at=now))
        audit.append(conn, actor=f"{revoked_by.strip()[:80] or 'unknown'} ({via})", action="revoke_tokens",
                     result="done", team_id=team_id,
                     detail=f"{len(ids)} token(s)" + (f": {token_id}" if token_id else ""))
    return len(ids)


def _nothing_to_revoke(conn, team_id: str, token_id: str | None) -> str:
    """Why no token matched: an unknown team (naming the known ones), an unknown token id (naming
    the team's tokens not yet revoked), or a team with none left."""
    mine = [t for (t,) in conn.execute(select(TOKENS.c.token_id).where(
        TOKENS.c.team_id == team_id, TOKENS.c.revoked_at.is_(None)).order_by(TOKENS.c.token_id))]
    held = {t for (t,) in conn.execute(select(TOKENS.c.team_id).distinct())}
    listed = {t for (t,) in conn.execute(select(LISTS.c.team_id).distinct())}
    if team_id not in held | listed:
        known = some_of(sorted(held | listed), 20)
        return f"nothing revoked: no team {team_id!r} has tokens or a published list (teams: {known or 'none yet'})"
    if team_id not in held:
        return f"nothing revoked: team {team_id} has no tokens"
    if token_id and mine:
        return (f"nothing revoked: team {team_id} has no token {token_id!r} left to revoke "
                f"(its tokens not yet revoked: {', '.join(mine)})")
    if token_id:
        return f"nothing revoked: team {team_id} has no token {token_id!r} left to revoke (all were revoked already)"
    return f"nothing revoked: team {team_id} has no tokens left to revoke (all were revoked already)"


@dataclass(frozen=True)
class Session:
    """Who a request acts as: a signed-in session (cookie) or a token (Bearer header)."""

    user_id: str
    display_name: str
    role: str
    team_id: str
    scope: str
    session_hash: str | None = None  # None: a Bearer token, no session
    csrf: str | None = None

    @property
    def from_cookie(self) -> bool:
        return self.session_hash is not None

    @property
    def actor(self) -> str:
        return self.display_name if self.user_id.startswith("token:") else f"{self.display_name} ({self.user_id})"


def token_identity(db: ServiceDB, token: str | None) -> Session | None:
    """The team a live, unexpired token opens, or None."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    with db.read() as conn:
        r = conn.execute(select(TOKENS).where(TOKENS.c.token_hash == token_hash(token), TOKENS.c.revoked_at.is_(None),
                                              TOKENS.c.expires_at > iso(now_utc()))).mappings().first()
    if r is None:
        return None
    return Session(f"token:{r['token_id']}", f"team {r['team_id']} token {r['token_id']}", "team", r["team_id"],
                   r["scope"])


def open_session(db: ServiceDB, settings: Review, who: Session, *, auth: str = "token") -> str:
    """Start a server-side session for `who`; returns the session id for the cookie (not stored)."""
    sid, now = secrets.token_urlsafe(32), now_utc()
    with db.write() as conn:
        conn.execute(SESSIONS.insert().values(
            session_hash=token_hash(sid), user_id=who.user_id, display_name=who.display_name, role=who.role,
            team_id=who.team_id, auth=auth, scope=who.scope, csrf=secrets.token_hex(32), created_at=iso(now),
            last_seen_at=iso(now), expires_at=iso(now + timedelta(hours=settings.session_hours))))
    return sid


def session_for(db: ServiceDB, settings: Review, sid: str | None) -> Session | None:
    """The live session a cookie's id names (not ended, not idle too long, not past its end), or None."""
    if not sid or len(sid) > 100:
        return None
    now = now_utc()
    with db.read() as conn:
        r = conn.execute(select(SESSIONS).where(
            SESSIONS.c.session_hash == token_hash(sid), SESSIONS.c.ended_at.is_(None),
            SESSIONS.c.expires_at > iso(now),
            SESSIONS.c.last_seen_at > iso(now - timedelta(minutes=settings.session_idle_minutes)))).mappings().first()
    if r is None:
        return None
    if r["last_seen_at"] < iso(now - timedelta(seconds=60)):  # at most one write a minute per session
        with db.write() as conn:
            conn.execute(SESSIONS.update().where(SESSIONS.c.session_hash == r["session_hash"])
                         .values(last_seen_at=iso(now)))
    return Session(r["user_id"], r["display_name"], r["role"], r["team_id"], r["scope"], r["session_hash"], r["csrf"])


def end_session(db: ServiceDB, session_hash: str) -> None:
    with db.write() as conn:
        conn.execute(SESSIONS.update().where(SESSIONS.c.session_hash == session_hash, SESSIONS.c.ended_at.is_(None))
                     .values(ended_at=iso(now_utc())))
