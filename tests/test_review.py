"""The review app over HTTP: tokens, team isolation, CSRF, escaping, checked notes, audit, busy warehouse."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time

import duckdb
import pytest
from conftest import HOSTILE, TEST_KEY, run_wobble
from fastapi.testclient import TestClient

from wobble.review.app import create_app
from wobble.review.tokens import create_token, revoke_tokens


@pytest.fixture(scope="module")
def review(published_copy):
    """(config, as_of, hostile person, {team: token}, {team: listed pseudonyms})."""
    cfg, as_of, pid = published_copy
    tokens = {t: create_token(cfg, t, created_by="test")[1] for t in ("T01", "T02")}
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        listed = {t: [r[0] for r in con.execute("SELECT person_id FROM huddle_lists WHERE team_id = ? "
                                                "ORDER BY rank", [t]).fetchall()] for t in ("T01", "T02")}
    return cfg, as_of, pid, tokens, listed


def _client(cfg, token=None) -> TestClient:
    client = TestClient(create_app(cfg, wait_seconds=0), follow_redirects=False)
    if token:
        page = client.get("/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = client.post("/login", data={"token": token, "csrf": nonce})
        assert r.status_code == 303, r.text
    return client


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def _query(cfg, sql, params=None):
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _outcomes(cfg) -> int:
    return _query(cfg, "SELECT count(*) FROM huddle_outcomes")[0][0]


def test_tokens_are_stored_only_as_hashes(review):
    cfg, _, _, tokens, _ = review
    stored = _query(cfg, "SELECT team_id, token_hash FROM review_tokens WHERE revoked_at IS NULL")
    assert sorted(stored) == sorted((t, hashlib.sha256(tok.encode()).hexdigest()) for t, tok in tokens.items())
    raw = cfg.warehouse.read_bytes()
    assert all(tok.encode() not in raw for tok in tokens.values())


def test_without_a_token_nothing_is_shown(review):
    cfg, _, pid, _, listed = review
    client = _client(cfg)
    for url in ("/teams/T01", f"/teams/T01/people/{pid}"):
        r = client.get(url)
        assert r.status_code == 401 and "Sign in" in r.text
        assert not any(p in r.text for p in listed["T01"])
    assert client.get("/teams/T01", headers={"Authorization": "Bearer wbt_not-a-real-token"}).status_code == 401
    assert client.get("/").headers["location"] == "/login"
    before = _outcomes(cfg)
    r = client.post(f"/teams/T01/people/{pid}/outcome", data={"outcome": "deferred", "recorded_by": "x"})
    assert r.status_code == 401 and _outcomes(cfg) == before


def test_a_wrong_token_does_not_sign_in(review):
    cfg, *_ = review
    client = _client(cfg)
    nonce = _csrf(client.get("/login").text)
    r = client.post("/login", data={"token": "wbt_guess", "csrf": nonce})
    assert r.status_code == 401 and "not recognised" in r.text
    assert client.post("/login", data={"token": "wbt_guess", "csrf": "forged"}).status_code == 403
    assert _query(cfg, "SELECT count(*) FROM audit_log WHERE action = 'sign_in_refused'")[0][0] >= 1


def test_team_a_never_sees_team_b(review):
    cfg, _, _, tokens, listed = review
    other = listed["T02"][0]
    before = _outcomes(cfg)
    for client in (_client(cfg, tokens["T01"]),
                   TestClient(create_app(cfg, wait_seconds=0), follow_redirects=False,
                              headers={"Authorization": f"Bearer {tokens['T01']}"})):
        own = client.get("/teams/T01")
        assert own.status_code == 200 and all(p in own.text for p in listed["T01"])
        assert not any(p in own.text for p in listed["T02"])
        for url, status in (("/teams/T02", 403), (f"/teams/T02/people/{other}", 403),
                            (f"/teams/T01/people/{other}", 404), ("/teams/T99", 403)):
            r = client.get(url)
            assert r.status_code == status, url
            assert not any(p in r.text for p in listed["T02"]), url
        csrf = _csrf(own.text)
        for url in (f"/teams/T02/people/{other}/outcome", f"/teams/T01/people/{other}/outcome"):
            r = client.post(url, data={"csrf": csrf, "outcome": "deferred", "recorded_by": "x"})
            assert r.status_code in (403, 404), url
            assert other not in r.text
    assert _outcomes(cfg) == before
    refused = _query(cfg, "SELECT action, team_id FROM audit_log WHERE action LIKE 'refused%'")
    assert ("refused_other_team", "T01") in refused and ("refused_not_listed", "T01") in refused


def test_recording_an_outcome_needs_the_forms_csrf_token(review):
    cfg, _, pid, tokens, _ = review
    client = _client(cfg, tokens["T01"])
    page = client.get(f"/teams/T01/people/{pid}")
    assert page.status_code == 200
    form = {"outcome": "deferred", "recorded_by": "Nurse B", "as_of": ""}
    before = _outcomes(cfg)
    assert client.post(f"/teams/T01/people/{pid}/outcome", data=form).status_code == 403
    assert client.post(f"/teams/T01/people/{pid}/outcome", data={**form, "csrf": "0" * 64}).status_code == 403
    cross = client.post(f"/teams/T01/people/{pid}/outcome", data={**form, "csrf": _csrf(page.text)},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    assert _outcomes(cfg) == before
    ok = client.post(f"/teams/T01/people/{pid}/outcome", data={**form, "csrf": _csrf(page.text)})
    assert ok.status_code == 303 and ok.headers["location"].endswith("?saved=1")
    assert _outcomes(cfg) == before + 1


def test_notes_with_identifiers_are_refused_and_scripts_shown_as_text(review):
    cfg, as_of, pid, tokens, _ = review
    client = _client(cfg, tokens["T01"])
    csrf = _csrf(client.get(f"/teams/T01/people/{pid}").text)
    before = _outcomes(cfg)
    for note, what in (("NHS 943 476 5919", "an NHS number"), ("call her on 0161 496 0000", "a phone number")):
        r = client.post(f"/teams/T01/people/{pid}/outcome",
                        data={"csrf": csrf, "outcome": "referred_on", "note": note, "recorded_by": "Dr C"})
        assert r.status_code == 422 and f"looks like it holds {what}" in r.text
        assert 'value="Dr C"' in r.text  # what was typed is kept
    assert _outcomes(cfg) == before
    r = client.post(f"/teams/T01/people/{pid}/outcome",
                    data={"csrf": csrf, "outcome": "outreach_agreed", "note": HOSTILE, "recorded_by": HOSTILE,
                          "as_of": as_of.isoformat()}, follow_redirects=True)
    assert r.status_code == 200 and "Saved." in r.text
    for url in (f"/teams/T01/people/{pid}", "/teams/T01"):
        html = client.get(url).text
        assert "<script" not in html
        assert "&lt;script&gt;alert(&#39;xss&#39;)&lt;/script&gt;" in html  # the hostile tag and note, as text
    static = (cfg.outputs / "lists" / as_of.isoformat() / "T01.html").read_text()
    assert "<script" not in static and "&lt;script&gt;" in static


def test_every_view_and_decision_is_audited(review):
    cfg, as_of, pid, tokens, _ = review
    client = _client(cfg, tokens["T01"])
    start = _query(cfg, "SELECT max(logged_at) FROM audit_log")[0][0]
    client.get("/teams/T01")
    page = client.get(f"/teams/T01/people/{pid}")
    client.post(f"/teams/T01/people/{pid}/outcome",
                data={"csrf": _csrf(page.text), "outcome": "already_supported", "recorded_by": "SW D"})
    rows = _query(cfg, "SELECT actor, team_id, person_id, action, detail FROM audit_log WHERE logged_at > ? "
                       "ORDER BY logged_at", [start])
    actions = [(r[1], r[2], r[3]) for r in rows]
    assert actions == [("T01", None, "view_list"), ("T01", pid, "view_person"), ("T01", pid, "record_outcome")]
    assert rows[2][0].startswith("SW D (review token ") and "already_supported" in rows[2][4]


def test_revoked_tokens_stop_working(review):
    cfg, *_ = review
    made = [create_token(cfg, "T02", created_by="test") for _ in range(2)]
    clients = [TestClient(create_app(cfg, wait_seconds=0), headers={"Authorization": f"Bearer {t}"}) for _, t in made]
    assert [c.get("/teams/T02").status_code for c in clients] == [200, 200]
    assert revoke_tokens(cfg, "T02", revoked_by="test", token_id=made[0][0]) == 1
    assert [c.get("/teams/T02").status_code for c in clients] == [401, 200]
    assert revoke_tokens(cfg, "T02", revoked_by="test") == 2  # the fixture's token and the second one
    assert clients[1].get("/teams/T02").status_code == 401


def test_pages_forbid_scripts_and_outside_requests(review):
    cfg, *_ = review
    r = _client(cfg).get("/login")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "form-action 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_a_busy_warehouse_says_try_again(review):
    cfg, _, _, tokens, _ = review
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(cfg.warehouse)!r}); "
                               "print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        r = TestClient(create_app(cfg, wait_seconds=0)).get(
            "/teams/T01", headers={"Authorization": f"Bearer {tokens['T01']}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "30" and "try again" in r.text.lower()
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()


def test_cli_creates_a_token_that_opens_only_its_team(review):
    cfg, *_ = review
    env = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
    made = run_wobble("review", "token", "--team", "T02", "--config", str(cfg.root / "wobble.toml"), env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("wbt_") and "not shown again" in made.stderr
    client = TestClient(create_app(cfg, wait_seconds=0), headers={"Authorization": f"Bearer {token}"})
    assert client.get("/teams/T02").status_code == 200 and client.get("/teams/T01").status_code == 403
    bad = run_wobble("review", "token", "--team", "T77", "--config", str(cfg.root / "wobble.toml"), env=env)
    assert bad.returncode == 2 and "no team 'T77'" in bad.stderr and "Traceback" not in bad.stderr
