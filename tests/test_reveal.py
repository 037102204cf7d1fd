"""Individual sign-in on the review page and re-identification for direct care, over HTTP: a
clinician of the team reveals who a listed person is (the vault's NHS number and name), every
reveal and every refusal is an audit row with user, role, team, pseudonym, reason, time and
address; other teams, other roles and reasons not on the list are refused; break-glass is
allowed and flagged; `recorded_by` is the signed-in person."""

from __future__ import annotations

import re
from datetime import datetime
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from fastapi.testclient import TestClient
from oidc_provider import Provider
from reviewkit import UA, audit_since, form_value, last_seq

from wobble.core.config import SignIn
from wobble.core.servicedb import OUTCOMES, service_db
from wobble.core.vault import open_vault
from wobble.review.app import create_app

SECRET = "review-test-client-secret-0123"
USERS = {"alice": {"name": "Alice Clinician", "teams": ["T01"], "role": "clinician"},
         "bob": {"name": "Bob Clinician", "teams": ["T02"], "role": "clinician"},
         "mo": {"name": "Mo Member", "teams": ["T01"], "role": "team_member"},
         "lee": {"name": "Lee Lead", "teams": ["T01"], "role": "team_lead"},
         "ann": {"name": "Ann Analyst", "teams": [], "role": "analyst"},
         "aud": {"name": "Al Auditor", "teams": [], "role": "auditor"}}


def sign_in_settings(issuer: str, redirect: str) -> SignIn:
    """Roles and teams from the provider's claims (`wobble_teams`, `wobble_role`)."""
    return SignIn(issuer=issuer, client_id="wobble-review", redirect_url=redirect, team_claim="wobble_teams",
                  role_claim="wobble_role")


def provider_users() -> dict[str, dict]:
    return {sub: {"name": u["name"], "wobble_teams": u["teams"], "wobble_role": u["role"]} for sub, u in USERS.items()}


@pytest.fixture(scope="module")
def site(published_copy, monkeypatch_module):
    cfg, as_of, _ = published_copy
    monkeypatch_module.setenv("WOBBLE_OIDC_CLIENT_SECRET", SECRET)
    with Provider(client_id="wobble-review", client_secret=SECRET, redirect_uris=["http://testserver/callback"],
                  users=provider_users()) as provider:
        cfg = cfg.model_copy(update={"sign_in": sign_in_settings(provider.issuer, "http://testserver/callback")})
        db = service_db(cfg.review_database)
        listed = {t: [p["person_id"] for p in _people(cfg, t)] for t in ("T01", "T02")}
        yield SimpleNamespace(cfg=cfg, provider=provider, db=db, listed=listed, vault=open_vault(cfg))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _people(cfg, team):
    from wobble.review import records

    db = service_db(cfg.review_database)
    return records.people(db, records.current_list(db, team))


def signed_in(site, who: str) -> TestClient:
    """A browser signed in as `who` through the provider: /login → authorize → /callback."""
    c = TestClient(create_app(site.cfg), follow_redirects=False, headers={"User-Agent": UA})
    start = c.get("/login")
    assert start.status_code == 303 and start.headers["location"].startswith(site.provider.issuer)
    site.provider.login_as = who
    back = requests.get(start.headers["location"], allow_redirects=False, timeout=5)
    q = parse_qs(urlparse(back.headers["location"]).query)
    done = c.get("/callback", params={"code": q["code"][0], "state": q["state"][0]})
    assert done.status_code == 303, done.text
    return c


def test_a_clinician_reveals_a_listed_person_and_it_is_audited(site):
    c = signed_in(site, "alice")
    page = c.get("/teams/T01")
    assert page.status_code == 200 and "Show who everyone on this list is" in page.text
    pid = site.listed["T01"][0]
    who = site.vault.lookup([pid])[pid]
    person = c.get(f"/teams/T01/people/{pid}")
    assert "Show who this is" in person.text and who.nhs_number_spaced not in person.text
    seq = last_seq(site.db)
    shown = c.post(f"/teams/T01/people/{pid}/reveal", data={"csrf": form_value(person.text), "reason": "huddle"})
    assert shown.status_code == 200
    assert who.nhs_number_spaced in shown.text and who.name in shown.text
    (row,) = [r for r in audit_since(site.db, seq) if r["action"] == "reveal_identity"]
    assert row["actor"] == "Alice Clinician (alice)" and row["team_id"] == "T01" and row["person_id"] == pid
    assert row["result"] == "shown" and row["detail"] == "role clinician; reason huddle"
    assert row["source"] == "testclient" and datetime.fromisoformat(row["logged_at"]).tzinfo is not None
    assert who.nhs_number not in str(audit_since(site.db, seq)) and who.surname not in str(audit_since(site.db, seq))


def test_the_whole_list_and_the_print_view_with_a_watermark(site):
    c = signed_in(site, "alice")
    csrf = form_value(c.get("/teams/T01").text)
    seq = last_seq(site.db)
    printed = c.post("/teams/T01/reveal", data={"csrf": csrf, "reason": "huddle", "view": "print"})
    assert printed.status_code == 200
    ids = site.vault.lookup(site.listed["T01"])
    assert all(w.nhs_number_spaced in printed.text for w in ids.values())
    assert re.search(r"Viewed by Alice Clinician · \d\d \w{3} 20\d\d \d\d:\d\d", printed.text)
    rows = [r for r in audit_since(site.db, seq) if r["action"] == "print_identities"]
    assert sorted(r["person_id"] for r in rows) == sorted(site.listed["T01"])
    listed = c.post("/teams/T01/reveal", data={"csrf": csrf, "reason": "contact", "view": "list"})
    assert listed.status_code == 200 and all(w.name in listed.text for w in ids.values())


@pytest.mark.parametrize(("who", "team", "reason", "result"), [
    ("bob", "T01", "huddle", "refused 403: other team"),
    ("mo", "T01", "huddle", "refused 403: role"),
    ("ann", "T01", "huddle", "refused 403: role"),
    ("alice", "T01", "because", "refused 403: reason"),
])
def test_refusals_are_403_and_audited(site, who, team, reason, result):
    c = signed_in(site, who)
    own = {"bob": "/teams/T02", "ann": "/teams/T01"}.get(who, "/teams/T01")
    csrf = form_value(c.get(own).text)
    pid = site.listed[team][0]
    seq = last_seq(site.db)
    refused = c.post(f"/teams/{team}/people/{pid}/reveal", data={"csrf": csrf, "reason": reason})
    assert refused.status_code == 403
    assert site.vault.lookup([pid])[pid].nhs_number_spaced not in refused.text
    (row,) = [r for r in audit_since(site.db, seq) if r["action"] == "reveal_identity"]
    assert row["result"] == result and row["actor"].startswith(USERS[who]["name"])


def test_analysts_read_every_list_and_auditors_none(site):
    ann = signed_in(site, "ann")
    assert ann.get("/teams/T01").status_code == 200 and ann.get("/teams/T02").status_code == 200
    assert "Show who" not in ann.get("/teams/T02").text
    aud = signed_in(site, "aud")
    assert aud.get("/teams/T01").status_code == 403
    assert "Auditors read the audit log" in aud.get("/me").text


def test_break_glass_is_allowed_flagged_and_checked(site):
    c = signed_in(site, "alice")
    form = c.get("/break-glass")
    csrf = form_value(form.text)
    other = site.listed["T02"][0]
    who = site.vault.lookup([other])[other]
    seq = last_seq(site.db)
    shown = c.post("/break-glass", data={"csrf": csrf, "person_id": other, "reason": "urgent_care"})
    assert shown.status_code == 200 and who.nhs_number_spaced in shown.text
    typed = c.post("/break-glass", data={"csrf": csrf, "person_id": "943 476 5919", "reason": "urgent_care"})
    assert typed.status_code == 422
    mo = signed_in(site, "mo")
    refused = mo.post("/break-glass", data={"csrf": form_value(mo.get("/teams/T01").text), "person_id": other,
                                            "reason": "urgent_care"})
    assert refused.status_code == 403
    rows = audit_since(site.db, seq)
    glass = [r for r in rows if r["action"] == "break_glass_reveal"]
    assert glass[0]["result"] == "shown: flagged" and "FLAGGED for review" in glass[0]["detail"]
    assert glass[0]["person_id"] == other and glass[0]["team_id"] == "T01"
    assert glass[1]["result"] == "refused 422: not a pseudonym" and glass[1]["person_id"] is None
    assert glass[2]["result"].startswith("refused 403") and "5919" not in str(rows)


def test_recorded_by_is_the_signed_in_person(site):
    from sqlalchemy import select

    c = signed_in(site, "alice")
    pid = site.listed["T01"][1]
    page = c.get(f"/teams/T01/people/{pid}")
    assert 'name="recorded_by"' not in page.text and "Alice Clinician" in page.text
    done = c.post(f"/teams/T01/people/{pid}/outcome", data={
        "csrf": form_value(page.text), "nonce": form_value(page.text, "nonce"), "as_of": form_value(page.text, "as_of"),
        "outcome": "discussed_no_action", "recorded_by": "Somebody Else"})
    assert done.status_code == 303, done.text
    with site.db.read() as conn:
        by = conn.execute(select(OUTCOMES.c.recorded_by).where(OUTCOMES.c.person_id == pid)).scalars().all()
    assert by == ["Alice Clinician"]


def test_a_replayed_callback_is_refused_and_audited(site):
    c = TestClient(create_app(site.cfg), follow_redirects=False, headers={"User-Agent": UA})
    start = c.get("/login")
    site.provider.login_as = "alice"
    back = requests.get(start.headers["location"], allow_redirects=False, timeout=5)
    q = parse_qs(urlparse(back.headers["location"]).query)
    assert c.get("/callback", params={"code": q["code"][0], "state": q["state"][0]}).status_code == 303
    seq = last_seq(site.db)
    again = c.get("/callback", params={"code": q["code"][0], "state": q["state"][0]})
    assert again.status_code == 403 and "already used" in again.text
    assert [r["result"] for r in audit_since(site.db, seq)] == ["refused 403: sign-in"]
    assert c.get("/login", params={"token": 1}).status_code == 200  # team tokens still sign in


def test_the_team_lead_manages_machine_tokens_which_never_see_identities(site):
    lee = signed_in(site, "lee")
    assert "/teams/T01/tokens" in lee.get("/teams/T01").text
    page = lee.get("/teams/T01/tokens")
    assert page.status_code == 200
    made = lee.post("/teams/T01/tokens", data={"csrf": form_value(page.text), "scope": "read", "days": "7"})
    token = re.search(r'<code id="new-token">([^<]+)</code>', made.text).group(1)
    script = TestClient(create_app(site.cfg), follow_redirects=False,
                        headers={"Authorization": f"Bearer {token}", "User-Agent": UA})
    assert script.get("/teams/T01").status_code == 200
    pid = site.listed["T01"][0]
    assert script.post(f"/teams/T01/people/{pid}/reveal", data={"reason": "huddle"}).status_code == 403
    assert signed_in(site, "alice").get("/teams/T01/tokens").status_code == 403
    token_id = re.search(r"New token (\w+)", made.text).group(1)
    lee.post("/teams/T01/tokens", data={"csrf": form_value(page.text), "token_id": token_id})
    assert script.get("/teams/T01").status_code == 401
