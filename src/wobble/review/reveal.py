"""Showing who a listed person is, for direct care: from the identity vault, on an explicit action.

Reads the vault (`wobble.core.vault`, its key from the environment or a 0600 key file) and the
service's lists; writes one `service_audit` row per person revealed: the user (name and
subject), the team, the person's pseudonym, the time and the source address, with the role and
the reason (a code from `roles.REVEAL_REASONS` or `roles.BREAK_GLASS_REASONS`) in its detail.

- `POST /teams/{team}/people/{person}/reveal`: one person on the team's list;
- `POST /teams/{team}/reveal`: everyone on the list, shown in the list (`view=list`) or as the
  huddle's print view (`view=print`), watermarked with the viewer's name and the time;
- `GET|POST /break-glass`: a clinician reveals someone not on their team's list, with a stated
  reason; allowed, and flagged in the audit for review.

Each is a POST with the session's CSRF token and a reason; only a clinician (or team lead) of
the team may (`roles.can_reveal`); every refusal is audited too. Identities are rendered into
the response only: never stored, logged, or put in the static lists and CSVs.
"""

from __future__ import annotations

import re
from datetime import datetime

from fastapi import FastAPI, Form, Request
from fastapi.responses import Response

from wobble.core.clock import LONDON
from wobble.core.errors import WobbleError
from wobble.core.vault import Identity, open_vault
from wobble.review import audit, records
from wobble.review.guard import client_address
from wobble.review.roles import BREAK_GLASS_REASONS, REVEAL_REASONS, Decision, can_manage_tokens, can_reveal
from wobble.review.signin import user_of
from wobble.review.tokens import Session

PSEUDONYM = re.compile(r"^[0-9a-f]{16}$")


def reveal_context(session: Session) -> dict:
    """What the list and person pages need to offer 'show who this is' (nothing for those who may not)."""
    user = user_of(session)
    allowed = can_reveal(user, session.team_id, on_list=True, reason=next(iter(REVEAL_REASONS)))
    return {"reveal_reasons": list(REVEAL_REASONS.items()) if allowed else None,
            "viewer": None if user.machine else user.name,
            "manage_tokens": bool(can_manage_tokens(user, session.team_id))}


class Revealer:
    """The reveal routes' shared steps: check, look up, audit."""

    def __init__(self, review, refusal: type[Exception]):
        self.r, self.refusal = review, refusal

    def check(self, session: Session, decision: Decision, action: str, team_id: str | None = None) -> None:
        if not decision:
            raise self.refusal(403, "Identity not shown", f"Not allowed: {decision.why}.", action=action,
                               result=f"refused 403: {decision.code}", session=session, team_id=team_id)

    def lookup(self, session: Session, person_ids: list[str], action: str) -> dict[str, Identity]:
        try:
            return open_vault(self.r.cfg).lookup(person_ids)
        except WobbleError as exc:
            raise self.refusal(503, "Identities are not available",
                               f"The identity vault cannot be opened here: {exc}", action=action,
                               result="refused 503: vault", session=session) from None

    def audit_reveals(self, request: Request, session: Session, *, action: str, team_id: str,
                      person_ids: list[str], shown: dict[str, Identity], reason: str, flagged: bool = False) -> None:
        """One audit row per person, in one transaction: who, role, team, pseudonym, reason, time, address."""
        user = user_of(session)
        tail = "; FLAGGED for review (break-glass)" if flagged else ""
        with self.r.db.write() as conn:
            for pid in person_ids:
                result = ("shown" if pid in shown else "not in the vault") + (": flagged" if flagged else "")
                audit.append(conn, actor=session.actor, action=action, result=result,
                             team_id=team_id, person_id=pid, source=client_address(request.scope),
                             user_agent=request.headers.get("user-agent"),
                             detail=f"role {user.role}; reason {reason}{tail}")


def _watermark(session: Session) -> str:
    now = datetime.now(LONDON).strftime("%d %b %Y %H:%M")
    return f"{session.display_name} · {now}"


def add_reveal_routes(app: FastAPI, review, refusal: type[Exception]) -> None:
    """The reveal, whole-list reveal (and print view) and break-glass routes."""
    rv = Revealer(review, refusal)

    @app.post("/teams/{team_id}/people/{person_id}/reveal")
    def reveal_person(request: Request, team_id: str, person_id: str, csrf: str = Form(""),
                      reason: str = Form("")) -> Response:
        action = "reveal_identity"
        session = review.authenticate(request, action)
        ref = review.the_list(session, team_id, action)
        review.check_post(request, session, csrf, action)
        person = review.person_of(session, ref, person_id, action)
        rv.check(session, can_reveal(user_of(session), team_id, on_list=True, reason=reason), action)
        shown = rv.lookup(session, [person_id], action)
        rv.audit_reveals(request, session, action=action, team_id=team_id, person_ids=[person_id], shown=shown,
                         reason=reason)
        return review.person_page(session, ref, person, identity=shown.get(person_id, False),
                                  reason_text=REVEAL_REASONS[reason])

    @app.post("/teams/{team_id}/reveal")
    def reveal_list(request: Request, team_id: str, csrf: str = Form(""), reason: str = Form(""),
                    view: str = Form("list")) -> Response:
        action = "reveal_list" if view != "print" else "print_identities"
        session = review.authenticate(request, action)
        ref = review.the_list(session, team_id, action)
        review.check_post(request, session, csrf, action)
        rv.check(session, can_reveal(user_of(session), team_id, on_list=True, reason=reason), action)
        people = records.people(review.db, ref)
        ids = [p["person_id"] for p in people]
        shown = rv.lookup(session, ids, action)
        rv.audit_reveals(request, session, action=action, team_id=team_id, person_ids=ids, shown=shown,
                         reason=reason)
        if view == "print":
            return review.page("review_print.html.j2", h=ref.header, people=people, identities=shown,
                               watermark=_watermark(session), reason_text=REVEAL_REASONS[reason], team=team_id)
        return review.team_view(session, ref, people=people, identities=shown, reason_text=REVEAL_REASONS[reason])

    @app.get("/break-glass")
    def break_glass_form(request: Request) -> Response:
        session = review.authenticate(request, "break_glass")
        return review.page("review_break_glass.html.j2", csrf=session.csrf or "", team=session.team_id,
                           reasons=list(BREAK_GLASS_REASONS.items()), who=None, person_id="", error=None)

    @app.post("/break-glass")
    def break_glass(request: Request, csrf: str = Form(""), person_id: str = Form(""),
                    reason: str = Form("")) -> Response:
        action = "break_glass_reveal"
        session = review.authenticate(request, action)
        review.check_post(request, session, csrf, action)
        decision = can_reveal(user_of(session), session.team_id, on_list=False, reason=reason, break_glass=True)
        rv.check(session, decision, action)
        pid = person_id.strip().lower()
        page = {"csrf": session.csrf or "", "team": session.team_id, "reasons": list(BREAK_GLASS_REASONS.items())}
        if not PSEUDONYM.match(pid):  # what was typed is not audited: it may be an NHS number
            review.audit(request, action=action, result="refused 422: not a pseudonym", session=session)
            return review.page("review_break_glass.html.j2", 422, **page, who=None, person_id="",
                               error="That is not a pseudonym: 16 characters, 0-9 and a-f, as on a list.")
        shown = rv.lookup(session, [pid], action)
        rv.audit_reveals(request, session, action=action, team_id=session.team_id, person_ids=[pid], shown=shown,
                         reason=reason, flagged=True)
        return review.page("review_break_glass.html.j2", **page, who=shown.get(pid, False), person_id=pid,
                           error=None if pid in shown else "Nobody with that pseudonym is in the identity vault.",
                           reason_text=BREAK_GLASS_REASONS[reason])
