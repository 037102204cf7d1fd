"""Review: the web page where a team reads its current list and records what the huddle decided.

Reads `huddle_lists`, `huddle_list_context`, `huddle_outcomes`, `approvals` and `review_tokens`;
writes `huddle_outcomes` (one row per decision) and `audit_log` (one row per view, decision and
refusal). `wobble review token --team T` writes `review_tokens` (hashes only; `wobble.review.tokens`).

Access: each team has its own access token, shown once when created and stored only as its
SHA-256. A request without a valid token sees nothing (401); a token for team A asking for team
B's list gets 403, and a person who is not on the token's own team's list is "not found" (404),
whether or not they exist elsewhere. Signing in puts the token in an HttpOnly, SameSite=Strict
cookie; scripts may send `Authorization: Bearer <token>` instead. Every form carries a CSRF token
(an HMAC of the session) and a cross-origin POST is refused. Pages are escaped by Jinja, carry no
script, and a Content-Security-Policy forbids scripts and requests to anywhere else.

The warehouse: DuckDB lets one process write at a time, so the app opens it per request, for a
few milliseconds, and never holds it while idle. When a pipeline run is writing, the page says
the warehouse is busy (503 with Retry-After) and asks to try again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from contextlib import contextmanager
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from wobble.core.config import Config
from wobble.core.errors import WarehouseBusy, WobbleError
from wobble.core.render import render
from wobble.core.vocab import OUTCOME_LABELS, OUTCOMES
from wobble.core.warehouse import connect
from wobble.lists.outcomes import (
    ListRef,
    OutcomeRefused,
    audit,
    current_list,
    last_outcomes,
    list_decisions,
    list_rows,
    outcome_history,
    record_outcome,
    summarise,
    summary_sentence,
)
from wobble.lists.views import list_header, person_view
from wobble.models.approve import require_approval
from wobble.models.spec import load_spec
from wobble.review.tokens import Session, session_for

SESSION_COOKIE = "wobble_session"
LOGIN_COOKIE = "wobble_login"
RETRY_AFTER_SECONDS = 30
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # same-origin posts keep their Origin header
    "Cache-Control": "no-store",
}


class _Refusal(Exception):
    """Stop a request with a message page (401, 403, 404)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class _Review:
    """What every request handler of one app shares: the config, the CSRF secret, the warehouse."""

    def __init__(self, cfg: Config, wait_seconds: float):
        self.cfg, self.wait_seconds = cfg, wait_seconds
        self.secret = secrets.token_bytes(32)  # signs CSRF tokens; a restart only expires open forms
        self.lock = threading.Lock()
        self.specs: dict[str, object] = {}

    @contextmanager
    def warehouse(self):
        with self.lock, connect(self.cfg.warehouse, wait_seconds=self.wait_seconds) as con:
            yield con

    def csrf_for(self, session: Session) -> str:
        return hmac.new(self.secret, session.token_hash.encode(), hashlib.sha256).hexdigest()

    def page(self, template: str, status: int = 200, **ctx) -> HTMLResponse:
        return HTMLResponse(render(template, **ctx), status_code=status)

    def authenticate(self, request: Request, con) -> Session:
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        session = session_for(con, bearer, False) if bearer else session_for(
            con, request.cookies.get(SESSION_COOKIE), True)
        if session is None:
            raise _Refusal(401, "Sign in to see a list",
                           "This page needs your team's access token. Sign in with it to see your team's list.")
        return session

    def require_team(self, con, session: Session, team_id: str) -> None:
        if team_id != session.team_id:
            audit(con, actor=session.actor, action="refused_other_team", team_id=session.team_id,
                  detail=f"asked for team {team_id[:40]}")
            raise _Refusal(403, "Not your team's list",
                           f"Your access token is for team {session.team_id}. It cannot open another team's "
                           "list or anyone on it.")

    def check_post(self, request: Request, session: Session, csrf: str) -> None:
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.url.netloc:
            raise _Refusal(403, "Form refused", "This form was sent from another site, so it was not accepted.")
        if session.from_cookie and not hmac.compare_digest(csrf or "", self.csrf_for(session)):
            raise _Refusal(403, "Form expired",
                           "This form has expired or did not come from this page. Go back, reload the page "
                           "and send it again.")

    def spec_of(self, model: str):
        if model not in self.specs:
            self.specs[model] = load_spec(self.cfg.models_dir, model)
        return self.specs[model]

    def list_page_facts(self, con, ref: ListRef) -> dict:
        cur = con.cursor()
        try:
            approval = require_approval(cur, ref.model_name, ref.model_version)
        finally:
            cur.close()
        rows = con.sql("SELECT * FROM huddle_list_context WHERE team_id = ? AND as_of = ? AND model_name = ? "
                       "AND model_version = ?", params=[ref.team_id, ref.as_of, ref.model_name,
                                                        ref.model_version]).pl().to_dicts()
        context = rows[0] if rows else {"team_id": ref.team_id, "as_of": ref.as_of, "data_updated": None,
                                        "team_caveats": None, "last_huddle": None,
                                        "published_at": ref.published_at}
        return list_header(self.cfg, context, self.spec_of(ref.model_name), approval, people=0)

    def the_list(self, con, session: Session, team_id: str) -> ListRef:
        self.require_team(con, session, team_id)
        ref = current_list(con, team_id)
        if ref is None:
            raise _Refusal(404, "No list yet", f"Team {team_id} has no published list yet.")
        return ref

    def people_of(self, con, ref: ListRef, header: dict, person_id: str | None = None) -> list[dict]:
        earlier = last_outcomes(con, ref.as_of)
        spec = self.spec_of(ref.model_name)
        return [person_view(r, spec, earlier.get((ref.team_id, r["person_id"])), header["team_caveats"])
                for r in list_rows(con, ref, person_id).iter_rows(named=True)]  # at most one list's rows

    def person_response(self, con, request: Request, session: Session, team_id: str, person_id: str, *,
                        status: int = 200, error: str | None = None, form: dict | None = None,
                        saved: bool = False) -> Response:
        ref = self.the_list(con, session, team_id)
        header = self.list_page_facts(con, ref)
        people = self.people_of(con, ref, header, person_id)
        if not people:
            audit(con, actor=session.actor, action="refused_not_listed", team_id=team_id,
                  detail=f"asked for person {person_id[:40]}")
            raise _Refusal(404, "Not on this list",
                           f"There is nobody with that pseudonym on team {team_id}'s current list.")
        now = list_decisions(con, ref).get(person_id)
        history = outcome_history(con, team_id, person_id)
        audit(con, actor=session.actor, action="view_person", team_id=team_id, person_id=person_id,
              detail=f"list of {ref.as_of}")
        return self.page("review_person.html.j2", status, h=header, p=people[0], now=now, history=history,
                    outcomes=[(o, OUTCOME_LABELS[o]) for o in OUTCOMES], csrf=self.csrf_for(session),
                    team=team_id, as_of=ref.as_of.isoformat(), error=error, form=form or {}, saved=saved)


def create_app(cfg: Config, *, wait_seconds: float = 2.0) -> FastAPI:
    """The review app for one wobble.toml. Run it with `wobble review serve`."""
    app = FastAPI(title="wobble review", docs_url=None, redoc_url=None, openapi_url=None)
    r = _Review(cfg, wait_seconds)
    _add_handlers(app, r)
    _add_sign_in(app, r)
    _add_lists(app, r)
    return app


def _add_handlers(app: FastAPI, r: _Review) -> None:
    """Refusals, a busy warehouse, security headers and the health check."""

    @app.exception_handler(_Refusal)
    async def refused(request: Request, exc: _Refusal):
        response = r.page("review_message.html.j2", exc.status, title=exc.title, message=exc.message,
                        sign_in=exc.status == 401)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wobble review"'
        return response

    @app.exception_handler(WarehouseBusy)
    async def busy(request: Request, exc: WarehouseBusy):
        response = r.page("review_message.html.j2", 503, title="Busy: please try again",
                        message="The warehouse is busy: a pipeline run is writing to it. Nothing was lost. "
                                "Try again in a minute.", sign_in=False)
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"


def _add_sign_in(app: FastAPI, r: _Review) -> None:
    """Signing in with a team's token, and out."""

    @app.get("/")
    def home(request: Request) -> Response:
        with r.warehouse() as con:
            try:
                session = r.authenticate(request, con)
            except _Refusal:
                return RedirectResponse("/login", status_code=303)
        return RedirectResponse(f"/teams/{session.team_id}", status_code=303)

    @app.get("/login")
    def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        response = r.page("review_login.html.j2", csrf=nonce, error=None)
        _set_cookie(request, response, LOGIN_COOKIE, nonce)
        return response

    @app.post("/login")
    def login(request: Request, token: str = Form(""), csrf: str = Form("")) -> Response:
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(csrf, expected):
            raise _Refusal(403, "Form expired", "The sign-in form has expired. Reload it and sign in again.")
        with r.warehouse() as con:
            session = session_for(con, token.strip(), True)
            if session is None:
                audit(con, actor="unknown", action="sign_in_refused")
                nonce = secrets.token_urlsafe(16)
                response = r.page("review_login.html.j2", 401, csrf=nonce,
                                error="That access token was not recognised. Check it and try again, or ask "
                                      "your data team for a new one.")
                _set_cookie(request, response, LOGIN_COOKIE, nonce)
                return response
            audit(con, actor=session.actor, action="sign_in", team_id=session.team_id)
        response = RedirectResponse(f"/teams/{session.team_id}", status_code=303)
        _set_cookie(request, response, SESSION_COOKIE, token.strip())
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        with r.warehouse() as con:
            session = r.authenticate(request, con)
            r.check_post(request, session, csrf)
            audit(con, actor=session.actor, action="sign_out", team_id=session.team_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _add_lists(app: FastAPI, r: _Review) -> None:
    """A team's list, a person's page, and recording a decision."""

    @app.get("/teams/{team_id}")
    def team_page(request: Request, team_id: str) -> Response:
        with r.warehouse() as con:
            session = r.authenticate(request, con)
            ref = r.the_list(con, session, team_id)
            header = r.list_page_facts(con, ref)
            people = r.people_of(con, ref, header)
            header["people"] = len(people)
            decided = list_decisions(con, ref)
            progress = (summarise(con, team_id=team_id, as_of=ref.as_of) or [None])[0]
            audit(con, actor=session.actor, action="view_list", team_id=team_id,
                  detail=f"list of {ref.as_of}")
        return r.page("review_team.html.j2", h=header, people=people, decided=decided,
                    progress=summary_sentence(progress) if progress else None,
                    csrf=r.csrf_for(session), team=team_id)

    @app.get("/teams/{team_id}/people/{person_id}")
    def person_page(request: Request, team_id: str, person_id: str, saved: int = 0) -> Response:
        with r.warehouse() as con:
            session = r.authenticate(request, con)
            return r.person_response(con, request, session, team_id, person_id, saved=bool(saved))

    @app.post("/teams/{team_id}/people/{person_id}/outcome")
    def record(request: Request, team_id: str, person_id: str, csrf: str = Form(""), outcome: str = Form(""),
               note: str = Form(""), recorded_by: str = Form(""), as_of: str = Form("")) -> Response:
        with r.warehouse() as con:
            session = r.authenticate(request, con)
            ref = r.the_list(con, session, team_id)
            r.check_post(request, session, csrf)
            form = {"outcome": outcome, "note": note, "recorded_by": recorded_by}
            if not list_rows(con, ref, person_id).height:
                return r.person_response(con, request, session, team_id, person_id)  # 404, as for a view
            if as_of and as_of != ref.as_of.isoformat():
                return r.person_response(con, request, session, team_id, person_id, status=409, form=form,
                                       error="A newer list was published since this page was opened. "
                                             "Check the person's row again and record the outcome for this list.")
            try:
                record_outcome(con, team_id=team_id, person_id=person_id, outcome=outcome, note=note,
                               recorded_by=recorded_by, actor=f"{recorded_by.strip()[:80]} ({session.actor})",
                               as_of=ref.as_of)
            except OutcomeRefused as exc:
                audit(con, actor=session.actor, action="outcome_refused", team_id=team_id, person_id=person_id,
                      detail=str(exc)[:200])
                msg = str(exc)
                return r.person_response(con, request, session, team_id, person_id, status=422, form=form,
                                       error=msg[0].upper() + msg[1:] + ".")
        return RedirectResponse(f"/teams/{team_id}/people/{person_id}?saved=1", status_code=303)



def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


def serve(cfg: Config, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the review app with uvicorn until interrupted."""
    import uvicorn

    if not cfg.warehouse.exists():
        raise WobbleError(f"no warehouse at {cfg.warehouse}: run `wobble publish` first")
    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning", proxy_headers=True,
                server_header=False)
