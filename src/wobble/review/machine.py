"""A team lead's page for the team's machine tokens (scripts' `Authorization: Bearer`).

Reads and writes `service_tokens` through `wobble.review.tokens` (hashes only; a new token is shown
once, in the response that made it). Only the team's lead may (`roles.can_manage_tokens`); every
token made or revoked, and every refusal, is an audit row.
"""

from __future__ import annotations

from fastapi import FastAPI, Form, Request
from fastapi.responses import Response
from sqlalchemy import select

from wobble.core.servicedb import TOKENS, iso, now_utc
from wobble.review.roles import can_manage_tokens
from wobble.review.signin import user_of
from wobble.review.tokens import SCOPES, create_token, revoke_tokens


def add_token_routes(app: FastAPI, review, refusal: type[Exception]) -> None:
    """`GET /teams/{team}/tokens`, and `POST` to make (`scope`, `days`) or revoke (`token_id`) one."""

    def lead(request: Request, team_id: str, action: str):
        session = review.authenticate(request, action)
        decision = can_manage_tokens(user_of(session), team_id)
        if not decision:
            raise refusal(403, "Not the team's lead", f"Not allowed: {decision.why}.", action=action,
                          result=f"refused 403: {decision.code}", session=session, team_id=team_id)
        return session

    def page(session, team_id: str, *, new: tuple[str, str] | None = None, status: int = 200) -> Response:
        with review.db.read() as conn:
            live = conn.execute(select(TOKENS).where(TOKENS.c.team_id == team_id, TOKENS.c.revoked_at.is_(None),
                                                     TOKENS.c.expires_at > iso(now_utc()))
                                .order_by(TOKENS.c.created_at)).mappings().all()
        return review.page("review_tokens.html.j2", status, team=team_id, tokens=live, new=new, scopes=SCOPES,
                           csrf=session.csrf or "", days=review.settings.token_days)

    @app.get("/teams/{team_id}/tokens")
    def tokens_page(request: Request, team_id: str) -> Response:
        session = lead(request, team_id, "view_tokens")
        review.audit(request, action="view_tokens", result="shown", session=session, team_id=team_id)
        return page(session, team_id)

    @app.post("/teams/{team_id}/tokens")
    def tokens_change(request: Request, team_id: str, csrf: str = Form(""), scope: str = Form("read"),
                      days: int = Form(30), token_id: str = Form("")) -> Response:
        action = "revoke_tokens" if token_id else "create_token"
        session = lead(request, team_id, action)
        review.check_post(request, session, csrf, action)
        if token_id:
            revoke_tokens(review.cfg, team_id, revoked_by=session.actor, token_id=token_id[:16], via="review page")
            return page(session, team_id)
        days = max(1, min(days, review.settings.token_days))
        made = create_token(review.cfg, team_id, created_by=session.actor, scope=scope if scope in SCOPES else "read",
                            days=days, via="review page")
        return page(session, team_id, new=made)
