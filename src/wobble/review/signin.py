"""Individual sign-in on the review page: OpenID Connect (`[sign_in]`), a server-side session per person.

`/login` sends the browser to the trust's identity provider (`wobble.review.oidc`, the code flow
with state, nonce and PKCE); `/callback` checks what comes back and opens a `service_sessions` row
for the person, with their role and team. Writes, in the review database:

- `service_signins`: one row per sign-in in flight (the SHA-256 of its state, its nonce, PKCE
  verifier and wanted team), used once at the callback; rows older than 10 minutes are dropped;
- `service_nonces`: one row per accepted ID token nonce (its SHA-256) until that token expires, so
  a replayed token is refused by every server process, not only the one that first saw it.

Every sign-in and every refusal is a row in the audit log (the reason in fixed words; never a
token or a claim's value). Failed sign-ins count towards the address's lockout.
"""

from __future__ import annotations

import hashlib
import re
import time
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from wobble.core.servicedb import NONCES, SIGNINS, ServiceDB, iso, now_utc
from wobble.core.vocab import upper_first
from wobble.review.guard import client_address
from wobble.review.oidc import OIDCClient, Pending, SignInError, UsedNonces, user_from_claims
from wobble.review.records import teams
from wobble.review.roles import User, can_record_outcome
from wobble.review.tokens import Session, open_session

PENDING_SECONDS = 600  # a sign-in must come back from the provider within this
_TEAM = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DBNonces(UsedNonces):
    """Used nonces kept in the review database (shared by every server process)."""

    def __init__(self, db: ServiceDB):
        super().__init__()
        self.db = db

    def use(self, nonce: str, until: float) -> bool:
        try:
            with self.db.write() as conn:
                conn.execute(delete(NONCES).where(NONCES.c.until < iso(now_utc())))
                conn.execute(NONCES.insert().values(nonce_hash=_sha(nonce),
                                                    until=iso(datetime.fromtimestamp(until, UTC))))
        except IntegrityError:
            return False
        return True


def user_of(session: Session) -> User:
    """The roles module's view of who a request acts as (a team token acts as a team member)."""
    machine = session.user_id.startswith("token:")
    role = "team_member" if session.role == "team" else session.role
    return User(session.user_id, session.display_name, role, (session.team_id,) if session.team_id else (),
                machine=machine)


class SignInFlow:
    """The app's OpenID Connect client and its pending sign-ins."""

    def __init__(self, review, refusal: type[Exception]):
        self.r, self.refusal = review, refusal
        settings = review.cfg.sign_in
        self.client = OIDCClient(settings, nonces=DBNonces(review.db))

    def start(self, team: str = "") -> Response:
        """Send the browser to the identity provider, remembering this sign-in on the server."""
        try:
            url, pending = self.client.begin()
        except SignInError as exc:
            raise self.refusal(503, "Sign-in is not available", _sentence(exc), action="sign_in",
                               result="refused 503: provider") from None
        with self.r.db.write() as conn:
            conn.execute(delete(SIGNINS).where(SIGNINS.c.started_at < _ago(PENDING_SECONDS)))
            conn.execute(SIGNINS.insert().values(
                state_hash=_sha(pending.state), nonce=pending.nonce, code_verifier=pending.code_verifier,
                team=team if _TEAM.match(team or "") else "", started_at=iso(now_utc())))
        return RedirectResponse(url, status_code=303)

    def _pop(self, state: str) -> tuple[Pending, str] | None:
        """The pending sign-in for `state`, removed (a state works once), or None."""
        if not state or len(state) > 200:
            return None
        with self.r.db.write() as conn:
            row = conn.execute(select(SIGNINS).where(SIGNINS.c.state_hash == _sha(state),
                                                     SIGNINS.c.started_at >= _ago(PENDING_SECONDS))).mappings().first()
            conn.execute(delete(SIGNINS).where(SIGNINS.c.state_hash == _sha(state)))
        if row is None:
            return None
        return Pending(state, row["nonce"], row["code_verifier"], time.time()), row["team"]

    def callback(self, request: Request, code: str, state: str, error: str) -> tuple[str, Response]:
        """Finish a sign-in: (session id, redirect) for the person, or a refusal (audited, counted for lockout)."""
        r, address = self.r, client_address(request.scope)
        wait = r.limits.locked_for(address)
        if wait is not None:
            raise self.refusal(429, "Signing in is locked for a while",
                               f"Too many failed sign-ins from your address. Try again in {int(wait) // 60 + 1} "
                               "minutes.", action="sign_in", result="refused 429: locked out",
                               retry_after=int(wait) + 1)
        found = self._pop(state)
        try:
            if error:
                raise SignInError("the identity provider did not sign you in")
            if found is None:
                raise SignInError("this sign-in has expired or was already used: start again")
            pending, team = found
            user = user_from_claims(self.client.settings, self.client.complete(pending, code=code, state=state))
        except SignInError as exc:
            r.limits.failed(address)
            raise self.refusal(403, "Sign-in refused", _sentence(exc),
                               action="sign_in", result="refused 403: sign-in") from None
        team = team if team in user.teams else (user.teams[0] if user.teams else "")
        who = Session(user.sub, user.name, user.role, team,
                      "record" if can_record_outcome(user, team) else "read")
        sid = open_session(r.db, r.settings, who, auth="oidc")
        r.audit(request, action="sign_in", result="signed in", session=who, detail=f"role {user.role}")
        response = RedirectResponse(f"/teams/{team}" if team else "/me", status_code=303)
        return sid, response


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return upper_first(text) + "."


def _ago(seconds: float) -> str:
    return iso(datetime.fromtimestamp(time.time() - seconds, UTC))


def add_sign_in_routes(app: FastAPI, review, refusal: type[Exception], set_cookie) -> SignInFlow:
    """`/callback` and `/me`; returns the flow, whose `start` the app's `/login` calls."""
    flow = SignInFlow(review, refusal)

    @app.get("/me")
    def me(request: Request) -> Response:
        session = review.authenticate(request, "view_me")
        user = user_of(session)
        return review.page("review_me.html.j2", user=user, team=session.team_id, csrf=session.csrf or "",
                           teams=teams(review.db) if user.role == "analyst" else [])

    @app.get("/callback")
    def callback(request: Request, code: str = "", state: str = "", error: str = "") -> Response:
        sid, response = flow.callback(request, code[:2000], state, error[:100])
        set_cookie(request, response, "wobble_session", sid)
        return response

    return flow
