"""Review: the web page where a team reads its current list and records what the huddle decided.

Reads `service_lists` and `service_people`; writes `service_outcomes`, `service_sessions` and
`service_audit` (one row per request decision: views, decisions, sign-ins and every refusal), all
in the review service's own database (`wobble.core.servicedb`): it never opens the warehouse, so
page traffic and pipeline runs never wait on each other. `wobble publish` pushes the lists in;
outcomes go back to the warehouse at the next publish.

Access: a browser signs in with its team's token and gets a server-side session (the cookie holds
a random session id, never the token); scripts may send `Authorization: Bearer <token>`. A request
without a valid session or token sees nothing (401); another team's list is 403, and a person who
is not on the team's own list is "not found" (404). Every form carries the session's CSRF token and
a POST whose Origin is not the service's public origin (`[review] public_origin`, else the request's
own) is refused. `wobble.review.guard` limits body size and request rate before any of this runs.
Pages are escaped by Jinja, carry no script, and a Content-Security-Policy forbids scripts and
requests to anywhere else.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio.to_thread
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from wobble.core.config import Config
from wobble.core.render import render
from wobble.core.servicedb import ServiceBusy, service_db
from wobble.core.vocab import OUTCOME_LABELS, OUTCOMES, upper_first
from wobble.lists.outcomes import OutcomeRefused, summary_sentence
from wobble.review import audit, records
from wobble.review.guard import Guard, Limits, client_address
from wobble.review.machine import add_token_routes
from wobble.review.reveal import add_reveal_routes, reveal_context
from wobble.review.roles import can_read_list, can_record_outcome
from wobble.review.signin import add_sign_in_routes, user_of
from wobble.review.tokens import Session, end_session, open_session, session_for, token_identity

SESSION_COOKIE = "wobble_session"
LOGIN_COOKIE = "wobble_login"
RETRY_AFTER_SECONDS = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # same-origin posts keep their Origin header
    "Cache-Control": "no-store",
}
log = logging.getLogger("wobble.review")


class _Refusal(Exception):
    """Stop a request with a message page (401, 403, 404, 409, 429); the handler audits it."""

    def __init__(self, status: int, title: str, message: str, *, action: str, result: str,
                 session: Session | None = None, team_id: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message
        self.action, self.result, self.session, self.team_id = action, result, session, team_id
        self.retry_after = retry_after


class _Review:
    """What every request handler of one app shares: the config, the service database, the limits."""

    def __init__(self, cfg: Config):
        self.cfg, self.settings = cfg, cfg.review
        self.db = service_db(cfg.review_database, busy_seconds=cfg.review.busy_seconds)
        self.limits = Limits(cfg.review)

    def page(self, template: str, status: int = 200, **ctx) -> HTMLResponse:
        return HTMLResponse(render(template, **ctx), status_code=status)

    def audit(self, request: Request | None, *, action: str, result: str, session: Session | None = None,
              team_id: str | None = None, person_id: str | None = None, detail: str | None = None,
              scope: dict | None = None) -> None:
        scope = scope if scope is not None else request.scope
        agent = next((v for k, v in scope.get("headers") or [] if k == b"user-agent"), b"")  # the first one
        audit.record(self.db, actor=session.actor if session else "anonymous", action=action, result=result,
                     team_id=team_id or (session.team_id if session else None), person_id=person_id,
                     source=client_address(scope), user_agent=agent.decode("latin-1") or None, detail=detail)

    def refuse_early(self, scope: dict, status: int, reason: str) -> None:
        """The guard's refusals (413, 429), audited before the request reaches the app."""
        try:
            self.audit(None, scope=scope, action=f"{scope.get('method', '?')} {_route(scope.get('path', ''))}",
                       result=f"refused {status}", detail=reason)
        except ServiceBusy:
            log.warning("audit row not written (database busy): %s refused %s", reason, status)

    def authenticate(self, request: Request, action: str) -> Session:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            session = token_identity(self.db, auth[7:].strip())
        else:
            session = session_for(self.db, self.settings, request.cookies.get(SESSION_COOKIE))
        if session is None:
            raise _Refusal(401, "Sign in to see a list",
                           "This page needs you to sign in. Sign in with your team's access token to see its list.",
                           action=action, result="refused 401: not signed in")
        return session

    def allowed_origin(self, request: Request) -> str:
        return self.settings.public_origin or f"{request.url.scheme}://{request.url.netloc}"

    def check_post(self, request: Request, session: Session, csrf: str, action: str) -> None:
        origin = request.headers.get("origin")
        if origin and origin.rstrip("/") != self.allowed_origin(request):
            raise _Refusal(403, "Form refused", "This form was sent from another site, so it was not accepted.",
                           action=action, result="refused 403: origin", session=session)
        if session.from_cookie and not hmac.compare_digest(csrf or "", session.csrf or ""):
            raise _Refusal(403, "Form expired",
                           "This form has expired or did not come from this page. Go back, reload the page "
                           "and send it again.", action=action, result="refused 403: csrf", session=session)

    def the_list(self, session: Session, team_id: str, action: str) -> records.ServedList:
        # a team token opens its own team only; a signed-in person what their role allows (roles.py)
        if team_id != session.team_id if session.role == "team" else not can_read_list(user_of(session), team_id):
            raise _Refusal(403, "Not your team's list",
                           f"You are signed in for team {session.team_id}. That cannot open another team's "
                           "list or anyone on it.", action=action, result="refused 403: other team", session=session)
        ref = records.current_list(self.db, team_id)
        if ref is None:
            raise _Refusal(404, "No list yet", f"Team {team_id} has no published list yet.", action=action,
                           result="refused 404: no list", session=session)
        return ref

    def person_of(self, session: Session, ref: records.ServedList, person_id: str, action: str) -> dict:
        found = records.people(self.db, ref, person_id)
        if not found:  # what was asked is not audited: it may be an NHS number typed into the address
            raise _Refusal(404, "Not on this list",
                           f"There is nobody with that pseudonym on team {ref.team_id}'s current list.",
                           action=action, result="refused 404: not on the list", session=session)
        return found[0]

    def person_page(self, session: Session, ref: records.ServedList, person: dict, *, status: int = 200,
                    error: str | None = None, form: dict | None = None, saved: bool = False,
                    nonce: str | None = None, **extra) -> Response:
        pid = person["person_id"]
        return self.page("review_person.html.j2", status, h=ref.header, p=person,
                         now=records.decisions(self.db, ref).get(pid),
                         history=records.history(self.db, ref.team_id, pid),
                         outcomes=[(o, OUTCOME_LABELS[o]) for o in OUTCOMES], csrf=session.csrf or "",
                         team=ref.team_id, as_of=ref.as_of.isoformat(), error=error, form=form or {}, saved=saved,
                         nonce=nonce or secrets.token_urlsafe(16), **reveal_context(session), **extra)

    def team_view(self, session: Session, ref: records.ServedList, *, people: list[dict], **extra) -> Response:
        """A team's list page (with identities, after a reveal)."""
        decided = records.decisions(self.db, ref)
        progress = records.progress(people, decided)
        header = {**ref.header, "people": sum(p["section"] == "capacity" for p in people)}
        return self.page("review_team.html.j2", h=header, people=people, decided=decided,
                         progress=summary_sentence(progress) if progress["recorded"] else None,
                         csrf=session.csrf or "", team=ref.team_id, **reveal_context(session), **extra)


def _route(path: str) -> str:
    """A path's shape for the audit log, without what was typed into it."""
    parts = path.strip("/").split("/")
    if parts[:1] == ["teams"]:
        return "/teams/{team}" + ("/people/{person}" if len(parts) > 2 else "") + ("/outcome" if len(parts) > 4 else "")
    return "/" + "/".join(parts[:1])[:40]


def create_app(cfg: Config) -> Guard:
    """The review app for one wobble.toml (run it with `wobble review serve`), behind its guard.

    The FastAPI app itself is `create_app(cfg).app`, for adding routes (sign-in providers)."""
    app = FastAPI(title="wobble review", docs_url=None, redoc_url=None, openapi_url=None)
    r = _Review(cfg)
    app.state.review = r
    _add_handlers(app, r)
    r.oidc = add_sign_in_routes(app, r, _Refusal, _set_cookie) if cfg.sign_in is not None else None
    _add_sign_in(app, r)
    _add_lists(app, r)
    add_reveal_routes(app, r, _Refusal)
    add_token_routes(app, r, _Refusal)
    return Guard(app, settings=cfg.review, limits=r.limits, refuse=r.refuse_early)


def _add_handlers(app: FastAPI, r: _Review) -> None:
    """Refusals, a busy database, security headers and the health check."""

    @app.exception_handler(_Refusal)
    async def refused(request: Request, exc: _Refusal):
        try:
            await anyio.to_thread.run_sync(lambda: r.audit(request, action=exc.action, result=exc.result,
                                                           session=exc.session, team_id=exc.team_id))
        except ServiceBusy:  # the refusal stands; the log says its row could not be written
            log.warning("audit row not written (database busy): %s %s", exc.action, exc.result)
        response = r.page("review_message.html.j2", exc.status, title=exc.title, message=exc.message,
                          sign_in=exc.status == 401)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wobble review"'
        if exc.retry_after:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(ServiceBusy)
    async def busy(request: Request, exc: ServiceBusy):
        log.warning("review database busy: %s %s answered 503", request.method, _route(request.url.path))
        post = request.method == "POST"
        message = ("This was NOT saved: the review database is busy for a moment. Go back and send the form again."
                   if post else "The review database is busy for a moment. Try again in a few seconds.")
        response = r.page("review_message.html.j2", 503, title="Busy: not saved" if post else "Busy: please try again",
                          message=message, sign_in=False)
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
    """Signing in with a team's token (a server-side session), and out (the session ends)."""

    @app.get("/")
    def home(request: Request) -> Response:
        session = session_for(r.db, r.settings, request.cookies.get(SESSION_COOKIE))
        return RedirectResponse(f"/teams/{session.team_id}" if session else "/login", status_code=303)

    @app.get("/login")
    def login_form(request: Request, token: int = 0, team: str = "") -> Response:
        if r.oidc is not None and not token:  # individual sign-in; ?token=1 for a team token
            return r.oidc.start(team)
        nonce = secrets.token_urlsafe(16)
        response = r.page("review_login.html.j2", csrf=nonce, error=None)
        _set_cookie(request, response, LOGIN_COOKIE, nonce)
        return response

    @app.post("/login")
    def login(request: Request, token: str = Form(""), csrf: str = Form("")) -> Response:
        address = client_address(request.scope)
        wait = r.limits.locked_for(address)
        if wait is not None:
            raise _Refusal(429, "Signing in is locked for a while",
                           f"Too many failed sign-ins from your address. Try again in {int(wait) // 60 + 1} minutes.",
                           action="sign_in", result="refused 429: locked out", retry_after=int(wait) + 1)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(csrf, expected):
            raise _Refusal(403, "Form expired", "The sign-in form has expired. Reload it and sign in again.",
                           action="sign_in", result="refused 403: form nonce")
        who = token_identity(r.db, token.strip())
        if who is None:
            r.limits.failed(address)
            r.audit(request, action="sign_in", result="refused 401: token not recognised")
            nonce = secrets.token_urlsafe(16)
            response = r.page("review_login.html.j2", 401, csrf=nonce,
                              error="That access token was not recognised. Check it and try again, or ask "
                                    "your data team for a new one.")
            _set_cookie(request, response, LOGIN_COOKIE, nonce)
            return response
        sid = open_session(r.db, r.settings, who)
        r.audit(request, action="sign_in", result="signed in", session=who)
        response = RedirectResponse(f"/teams/{who.team_id}", status_code=303)
        _set_cookie(request, response, SESSION_COOKIE, sid)
        response.delete_cookie(LOGIN_COOKIE)
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        session = r.authenticate(request, "sign_out")
        r.check_post(request, session, csrf, "sign_out")
        if session.session_hash:
            end_session(r.db, session.session_hash)
        r.audit(request, action="sign_out", result="signed out", session=session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response


def _add_lists(app: FastAPI, r: _Review) -> None:
    """A team's list, a person's page, and recording a decision."""

    @app.get("/teams/{team_id}")
    def team_page(request: Request, team_id: str) -> Response:
        session = r.authenticate(request, "view_list")
        ref = r.the_list(session, team_id, "view_list")
        people = records.people(r.db, ref)
        r.audit(request, action="view_list", result="shown", session=session, detail=f"list of {ref.as_of}")
        return r.team_view(session, ref, people=people)

    @app.get("/teams/{team_id}/people/{person_id}")
    def person_page(request: Request, team_id: str, person_id: str, saved: int = 0) -> Response:
        session = r.authenticate(request, "view_person")
        ref = r.the_list(session, team_id, "view_person")
        person = r.person_of(session, ref, person_id, "view_person")
        r.audit(request, action="view_person", result="shown", session=session, person_id=person_id,
                detail=f"list of {ref.as_of}")
        return r.person_page(session, ref, person, saved=bool(saved))

    @app.post("/teams/{team_id}/people/{person_id}/outcome")
    def record(request: Request, team_id: str, person_id: str, csrf: str = Form(""), outcome: str = Form(""),
               note: str = Form(""), recorded_by: str = Form(""), as_of: str = Form(""),
               nonce: str = Form("")) -> Response:
        session = r.authenticate(request, "record_outcome")
        ref = r.the_list(session, team_id, "record_outcome")
        r.check_post(request, session, csrf, "record_outcome")
        person = r.person_of(session, ref, person_id, "record_outcome")
        if session.scope != "record" or (session.role != "team" and not can_record_outcome(user_of(session), team_id)):
            raise _Refusal(403, "Read only", "This access token may read lists but not record outcomes.",
                           action="record_outcome", result="refused 403: read-only token", session=session)
        if session.role != "team":  # a signed-in person: recorded by who they are, not what they type
            recorded_by = session.display_name
        form = {"outcome": outcome, "note": note, "recorded_by": recorded_by}
        nonce = nonce[:64] or None
        if as_of and as_of != ref.as_of.isoformat():
            r.audit(request, action="record_outcome", result="refused 409: newer list", session=session,
                    person_id=person_id)
            return r.person_page(session, ref, person, status=409, form=form, nonce=nonce,
                                 error="A newer list was published since this page was opened. "
                                       "Check the person's row again and record the outcome for this list.")
        try:
            records.record_outcome(r.db, team_id=team_id, person_id=person_id, outcome=outcome, note=note,
                                   recorded_by=recorded_by, actor=session.actor, as_of=ref.as_of, nonce=nonce,
                                   source=client_address(request.scope),
                                   user_agent=request.headers.get("user-agent"))
        except OutcomeRefused as exc:
            msg = str(exc)
            return r.person_page(session, ref, person, status=422, form=form, nonce=nonce,
                                 error=upper_first(msg) + ".")
        except ServiceBusy:
            return r.person_page(session, ref, person, status=503, form=form, nonce=nonce,
                                 error="Your decision was NOT saved: the review database is busy for a moment. "
                                       "What you typed is still below: send it again in a few seconds.")
        return RedirectResponse(f"/teams/{team_id}/people/{person_id}?saved=1", status_code=303)


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


@contextmanager
def serving(cfg: Config) -> Iterator[int]:
    """The app on 127.0.0.1 and a free port, in a background thread, for scripts and tests: yields the port."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(cfg: Config, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the review app with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning", proxy_headers=True,
                server_header=False)
