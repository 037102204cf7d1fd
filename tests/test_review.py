"""The review app over HTTP, on SQLite and on PostgreSQL: tokens and sessions, team isolation, CSRF,
escaping, checked notes, the audit of every decision, and the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import HOSTILE, TEST_KEY, run_wobble
from reviewkit import audit_since, bearer, client, form_value, last_seq, outcomes
from sqlalchemy import select

from wobble.core.servicedb import TOKENS
from wobble.review.tokens import create_token, revoke_tokens

pytest_plugins = ["reviewkit"]  # the `review` fixture: once on SQLite, once on PostgreSQL
ENV = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}


def test_tokens_are_stored_only_as_hashes(review):
    with review.db.read() as conn:
        stored = conn.execute(select(TOKENS.c.team_id, TOKENS.c.token_hash, TOKENS.c.expires_at)).all()
    assert {(t, h) for t, h, _ in stored} >= {(t, hashlib.sha256(tok.encode()).hexdigest())
                                               for t, tok in review.tokens.items()}
    assert all(e > "2026" for *_, e in stored)  # every token expires
    if review.backend == "sqlite":
        raw = Path(review.db.engine.url.database).read_bytes()
        assert all(tok.encode() not in raw for tok in review.tokens.values())


def test_without_a_token_nothing_is_shown(review):
    c = client(review.cfg)
    for url in ("/teams/T01", f"/teams/T01/people/{review.pid}"):
        r = c.get(url)
        assert r.status_code == 401 and "Sign in" in r.text
        assert not any(p in r.text for p in review.listed["T01"])
    assert c.get("/teams/T01", headers={"Authorization": "Bearer wbt_not-a-real-token"}).status_code == 401
    assert c.get("/").headers["location"] == "/login"
    before = outcomes(review.db)
    r = c.post(f"/teams/T01/people/{review.pid}/outcome", data={"outcome": "deferred", "recorded_by": "x"})
    assert r.status_code == 401 and outcomes(review.db) == before


def test_a_wrong_token_does_not_sign_in(review):
    c = client(review.cfg)
    start = last_seq(review.db)
    r = c.post("/login", data={"token": "wbt_guess", "csrf": form_value(c.get("/login").text)})
    assert r.status_code == 401 and "not recognised" in r.text
    assert c.post("/login", data={"token": "wbt_guess", "csrf": "forged"}).status_code == 403
    results = [(a["action"], a["result"]) for a in audit_since(review.db, start)]
    assert results == [("sign_in", "refused 401: token not recognised"), ("sign_in", "refused 403: form nonce")]


def test_team_a_never_sees_team_b(review):
    other = review.listed["T02"][0]
    before, start = outcomes(review.db), last_seq(review.db)
    for c in (client(review.cfg, review.tokens["T01"]), bearer(review.cfg, review.tokens["T01"])):
        own = c.get("/teams/T01")
        assert own.status_code == 200 and all(p in own.text for p in review.listed["T01"])
        assert not any(p in own.text for p in review.listed["T02"])
        for url, status in (("/teams/T02", 403), (f"/teams/T02/people/{other}", 403),
                            (f"/teams/T01/people/{other}", 404), ("/teams/T99", 403)):
            r = c.get(url)
            assert r.status_code == status, url
            assert not any(p in r.text for p in review.listed["T02"]), url
        for url in (f"/teams/T02/people/{other}/outcome", f"/teams/T01/people/{other}/outcome"):
            r = c.post(url, data={"csrf": form_value(own.text), "outcome": "deferred", "recorded_by": "x"})
            assert r.status_code in (403, 404), url
            assert other not in r.text
    assert outcomes(review.db) == before
    refused = {(a["team_id"], a["result"]) for a in audit_since(review.db, start)}
    assert {("T01", "refused 403: other team"), ("T01", "refused 404: not on the list")} <= refused


def test_recording_an_outcome_needs_the_forms_csrf_token(review):
    c = client(review.cfg, review.tokens["T01"])
    page = c.get(f"/teams/T01/people/{review.pid}")
    assert page.status_code == 200
    form = {"outcome": "deferred", "recorded_by": "Nurse B", "as_of": "", "nonce": form_value(page.text, "nonce")}
    before = outcomes(review.db)
    url = f"/teams/T01/people/{review.pid}/outcome"
    assert c.post(url, data=form).status_code == 403
    assert c.post(url, data={**form, "csrf": "0" * 64}).status_code == 403
    cross = c.post(url, data={**form, "csrf": form_value(page.text)}, headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert outcomes(review.db) == before
    ok = c.post(url, data={**form, "csrf": form_value(page.text)})
    assert ok.status_code == 303 and ok.headers["location"].endswith("?saved=1")
    assert outcomes(review.db) == before + 1


def test_notes_with_identifiers_are_refused_and_scripts_shown_as_text(review):
    c = client(review.cfg, review.tokens["T01"])
    csrf = form_value(c.get(f"/teams/T01/people/{review.pid}").text)
    before = outcomes(review.db)
    url = f"/teams/T01/people/{review.pid}/outcome"
    for note, what in (("NHS 943 476 5919", "an NHS number"), ("call her on 0161 496 0000", "a phone number"),
                       ("943/476/5919", "an NHS number"), ("943_476_5919", "an NHS number")):
        r = c.post(url, data={"csrf": csrf, "outcome": "referred_on", "note": note, "recorded_by": "Dr C"})
        assert r.status_code == 422 and f"looks like it holds {what}" in r.text
        assert 'value="Dr C"' in r.text  # what was typed is kept
    assert outcomes(review.db) == before
    r = c.post(url, data={"csrf": csrf, "outcome": "outreach_agreed", "note": HOSTILE, "recorded_by": HOSTILE,
                          "as_of": review.as_of.isoformat()}, follow_redirects=True)
    assert r.status_code == 200 and "Saved." in r.text
    for page in (f"/teams/T01/people/{review.pid}", "/teams/T01"):
        html = c.get(page).text
        assert "<script" not in html
        assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in html  # the hostile tag and note, as text
    static = (review.cfg.outputs / "lists" / review.as_of.isoformat() / "T01.html").read_text()
    assert "<script" not in static and "&lt;script&gt;" in static


def test_every_view_and_decision_is_audited(review):
    c = client(review.cfg, review.tokens["T01"])
    start = last_seq(review.db)
    c.get("/teams/T01")
    page = c.get(f"/teams/T01/people/{review.pid}")
    c.post(f"/teams/T01/people/{review.pid}/outcome",
           data={"csrf": form_value(page.text), "outcome": "already_supported", "recorded_by": "SW D"})
    rows = audit_since(review.db, start)
    assert [(r["team_id"], r["person_id"], r["action"], r["result"]) for r in rows] == [
        ("T01", None, "view_list", "shown"), ("T01", review.pid, "view_person", "shown"),
        ("T01", review.pid, "record_outcome", "recorded")]
    assert all(r["actor"].startswith("team T01 token ") and r["source"] == "testclient" and r["user_agent"]
               and r["logged_at"].endswith("+00:00") for r in rows)
    assert "already_supported" in rows[2]["detail"] and "SW D" not in str(rows)


def test_revoked_tokens_stop_working(review):
    made = [create_token(review.cfg, "T02", created_by="test") for _ in range(2)]
    clients = [bearer(review.cfg, t) for _, t in made]
    browser = client(review.cfg, made[1][1])
    assert [c.get("/teams/T02").status_code for c in (*clients, browser)] == [200, 200, 200]
    assert revoke_tokens(review.cfg, "T02", revoked_by="test", token_id=made[0][0]) == 1
    assert [c.get("/teams/T02").status_code for c in (*clients, browser)] == [401, 200, 200]
    assert revoke_tokens(review.cfg, "T02", revoked_by="test") == 2  # the fixture's token and the second one
    assert [c.get("/teams/T02").status_code for c in (clients[1], browser)] == [401, 401]  # its session ends too


def test_pages_forbid_scripts_and_outside_requests(review):
    r = client(review.cfg).get("/login")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_cli_creates_a_token_that_opens_only_its_team(review):
    made = run_wobble("review", "token", "--team", "T02", "--config", str(review.config), env=ENV)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("wbt_") and "not shown again" in made.stderr
    c = bearer(review.cfg, token)
    assert c.get("/teams/T02").status_code == 200 and c.get("/teams/T01").status_code == 403
    bad = run_wobble("review", "token", "--team", "T77", "--config", str(review.config), env=ENV)
    assert bad.returncode == 2 and "no team 'T77'" in bad.stderr and "Traceback" not in bad.stderr


def test_a_read_only_token_cannot_record(review):
    _, token = create_token(review.cfg, "T01", created_by="test", scope="read")
    c = bearer(review.cfg, token)
    assert c.get(f"/teams/T01/people/{review.pid}").status_code == 200
    before = outcomes(review.db)
    r = c.post(f"/teams/T01/people/{review.pid}/outcome", data={"outcome": "deferred", "recorded_by": "script"})
    assert r.status_code == 403 and outcomes(review.db) == before
