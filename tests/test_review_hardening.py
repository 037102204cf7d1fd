"""The seven weaknesses of issue 16, each with a test that failed on 693e9a9, and the minor ones; on SQLite
and on PostgreSQL. The service has its own database, so page traffic and the pipeline never wait on each
other; every decision, refusals included, is in a hash-chained audit log without identifiers."""

from __future__ import annotations

import csv
import select
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from conftest import TEST_KEY, run_wobble
from fastapi.testclient import TestClient
from reviewkit import UA, audit_since, bearer, client, form_value, last_seq, outcomes, with_review
from sqlalchemy import text

from wobble.core.servicedb import SESSIONS, service_db
from wobble.review.app import create_app, serving

pytest_plugins = ["reviewkit"]  # the `review` fixture: once on SQLite, once on PostgreSQL
ENV = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}


def _person_form(c, review) -> dict:
    page = c.get(f"/teams/T01/people/{review.pid}")
    assert page.status_code == 200
    return {"csrf": form_value(page.text), "nonce": form_value(page.text, "nonce"), "outcome": "deferred",
            "recorded_by": "Nurse B"}


# 1. Page traffic broke the pipeline: `wobble publish` failed with exit 75 while pages were read.
def test_page_traffic_never_breaks_the_pipeline(review):
    stop, statuses = threading.Event(), []

    def reader():
        c = bearer(with_review(review.cfg, requests_per_minute=1_000_000), review.tokens["T01"])
        while not stop.is_set():
            statuses.append(c.get("/teams/T01").status_code)
            statuses.append(c.get(f"/teams/T01/people/{review.pid}").status_code)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        runs = [run_wobble("publish", "--config", str(review.config), env=ENV) for _ in range(2)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert [p.returncode for p in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert len(statuses) > 20 and set(statuses) == {200}


# 2. A write held the pages: requests hung 30 s behind a process-wide lock on the warehouse.
def test_pages_answer_while_the_warehouse_is_written(review):
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import duckdb, time; c = duckdb.connect({str(review.cfg.warehouse)!r}); "
                               "c.execute('BEGIN'); print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        c = bearer(review.cfg, review.tokens["T01"])
        t0 = time.monotonic()
        assert c.get("/healthz").text == "ok"
        assert c.get("/teams/T01").status_code == 200 and c.get(f"/teams/T01/people/{review.pid}").status_code == 200
        assert time.monotonic() - t0 < 2
    finally:
        holder.kill()
        holder.wait()


def _hold_write_lock(review):
    """Another writer holding the review database: an open write transaction (SQLite) or the audit's lock."""
    if review.backend == "sqlite":
        con = sqlite3.connect(review.db.engine.url.database, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        return con.close
    conn = review.db.engine.connect()
    conn.execute(text("SELECT pg_advisory_xact_lock(16016)"))
    return lambda: (conn.rollback(), conn.close())


def test_a_busy_database_answers_at_once_and_a_post_says_not_saved(review):
    c = client(review.cfg, review.tokens["T01"])
    form = {**_person_form(c, review), "note": "seen at home, to call back"}
    before = outcomes(review.db)
    release = _hold_write_lock(review)
    try:
        t0 = time.monotonic()
        r = c.post(f"/teams/T01/people/{review.pid}/outcome", data=form)
        took = time.monotonic() - t0
        page = c.get("/teams/T01")
    finally:
        release()
    assert r.status_code == 503 and took < 5
    assert "NOT saved" in r.text and "seen at home, to call back</textarea>" in r.text
    assert form["nonce"] in r.text  # sending it again is the same form: recorded once
    assert page.status_code == 503 and page.headers["retry-after"]
    assert outcomes(review.db) == before
    assert c.post(f"/teams/T01/people/{review.pid}/outcome", data=form).status_code == 303
    assert outcomes(review.db) == before + 1


# 3. Refusals were not audited, and no source address was recorded anywhere.
def test_every_refusal_is_audited_with_its_source(review):
    start = last_seq(review.db)
    anon = client(review.cfg)
    assert anon.get("/teams/T01").status_code == 401
    assert anon.post("/login", data={"token": "wbt_x", "csrf": "forged"}).status_code == 403
    c = client(review.cfg, review.tokens["T01"])
    form = _person_form(c, review)
    url = f"/teams/T01/people/{review.pid}/outcome"
    assert c.post(url, data={**form, "csrf": "0" * 64}).status_code == 403
    assert c.post(url, data=form, headers={"Origin": "https://evil.example"}).status_code == 403
    cli = run_wobble("outcome", "record", "--config", str(review.config), "--team", "T01", "--person", review.pid,
                     "--outcome", "escalated", "--by", "GP", env=ENV)
    assert cli.returncode == 2
    rows = audit_since(review.db, start)
    refused = [(r["action"], r["result"]) for r in rows if r["result"].startswith("refused")]
    assert refused == [("view_list", "refused 401: not signed in"), ("sign_in", "refused 403: form nonce"),
                       ("record_outcome", "refused 403: csrf"), ("record_outcome", "refused 403: origin"),
                       ("record_outcome", "refused")]
    web = [r for r in rows if r["source"] != "command line"]
    assert all(r["source"] == "testclient" and r["user_agent"] == UA and r["logged_at"].endswith("+00:00")
               for r in web)
    assert rows[-1]["source"] == "command line" and rows[-1]["detail"] == "unknown outcome"


# 4. The audit log held identifiers ("asked for person 9434765919") and the text of refused notes.
def test_the_audit_holds_no_identifiers_and_no_free_text(review):
    start = last_seq(review.db)
    c = client(review.cfg, review.tokens["T01"])
    assert c.get("/teams/T01/people/9434765919").status_code == 404
    form = _person_form(c, review)
    r = c.post(f"/teams/T01/people/{review.pid}/outcome",
               data={**form, "note": "Mrs Smith 943/476/5919", "recorded_by": "Nurse Jones"})
    assert r.status_code == 422
    rows = audit_since(review.db, start)
    assert len(rows) == 4  # the refusal, the view, the refused outcome (and the sign-in)
    flat = str(rows)
    for leak in ("9434765919", "943/476/5919", "Smith", "Jones"):
        assert leak not in flat
    assert {r["person_id"] for r in rows} <= {None, review.pid}


# 5. The note filter let "943/476/5919", "_", "," and spaced digits through, and NUL characters.
@pytest.mark.parametrize("note", ["943/476/5919", "943_476_5919", "943,476,5919", "9 4 3 4 7 6 5 9 1 9",
                                  "call 0161\u00a0496\u00a00000", "ok\x00", "ok\u202e"])
def test_notes_holding_numbers_or_control_characters_are_refused(review, note):
    c = client(review.cfg, review.tokens["T01"])
    before = outcomes(review.db)
    r = c.post(f"/teams/T01/people/{review.pid}/outcome", data={**_person_form(c, review), "note": note})
    assert r.status_code == 422 and outcomes(review.db) == before
    cli = run_wobble("outcome", "record", "--config", str(review.config), "--team", "T01", "--person", review.pid,
                     "--outcome", "deferred", "--by", "GP", "--note", note.replace("\x00", "\x01"), env=ENV)
    assert cli.returncode == 2 and outcomes(review.db) == before


# 6. No size limit: a 300 MB form was read into memory, then answered 401.
def _send_body(port: int, path: str, headers: str, chunks: int, chunk: bytes) -> tuple[int, str]:
    """Send a POST's body chunk by chunk until the server answers or drops us: (chunks sent, its answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode())
        sent = 0
        try:
            for _ in range(chunks):
                if select.select([s], [], [], 0)[0]:
                    break  # the answer came before the body was all sent
                s.sendall(chunk)
                sent += 1
        except OSError:  # the server closed the connection: the rest is never read
            pass
        try:
            return sent, s.recv(4096).decode("latin-1")
        except OSError:
            return sent, ""


def test_a_large_body_is_refused_before_parsing_or_sign_in(review):
    url = f"/teams/T01/people/{review.pid}/outcome"
    start = last_seq(review.db)
    r = client(review.cfg).post(url, content=b"note=" + b"x" * 1_000_000,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413  # not 401: nothing was parsed or authenticated
    with serving(review.cfg) as port:
        form = "Content-Type: application/x-www-form-urlencoded\r\n"
        sent, answer = _send_body(port, url, form + "Content-Length: 300000000\r\n", 4800, b"x" * 65536)
        assert answer.startswith("HTTP/1.1 413") and sent < 100  # answered from the header: 300 MB never sent
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)  # chunked: no length to go by, counted as it comes
        sent, answer = _send_body(port, url, form + "Transfer-Encoding: chunked\r\n", 4800, chunk)
        assert sent < 100, sent  # at most a few socket buffers of 64 KiB, not 300 MB
    rows = audit_since(review.db, start)
    assert [r["result"] for r in rows] == ["refused 413"] * 3


# 7. Origin was compared with Host: behind a proxy that rewrites Host, every browser POST failed.
def test_the_origin_check_uses_the_configured_public_origin(review):
    cfg = with_review(review.cfg, public_origin="https://huddle.example.nhs.uk")
    c = client(cfg, review.tokens["T01"], base_url="http://127.0.0.1:8765")  # Host as the proxy rewrote it
    url = f"/teams/T01/people/{review.pid}/outcome"
    ok = c.post(url, data=_person_form(c, review), headers={"Origin": "https://huddle.example.nhs.uk"})
    assert ok.status_code == 303
    assert c.post(url, data=_person_form(c, review), headers={"Origin": "http://127.0.0.1:8765"}).status_code == 403


def test_a_replayed_form_is_recorded_once(review):
    c = client(review.cfg, review.tokens["T01"])
    form = _person_form(c, review)
    before = outcomes(review.db)
    codes = [c.post(f"/teams/T01/people/{review.pid}/outcome", data=form).status_code for _ in range(3)]
    assert codes == [303, 303, 303] and outcomes(review.db) == before + 1


def test_the_cookie_holds_a_session_that_ends_on_the_server(review):
    c = client(review.cfg, review.tokens["T01"])
    sid = c.cookies.get("wobble_session")
    assert sid and review.tokens["T01"] not in sid and sid not in review.tokens.values()
    page = c.get("/teams/T01")
    stolen = TestClient(create_app(review.cfg), cookies={"wobble_session": sid})
    assert stolen.get("/teams/T01").status_code == 200
    assert c.post("/logout", data={"csrf": form_value(page.text)}).status_code == 303
    assert stolen.get("/teams/T01").status_code == 401  # the id is dead on the server, not just in the browser
    for expired in ({"last_seen_at": "2000-01-01T00:00:00.000000+00:00"},    # idle too long
                    {"expires_at": "2000-01-01T00:00:00.000000+00:00"}):     # past its absolute end
        b = client(review.cfg, review.tokens["T01"])
        assert b.get("/teams/T01").status_code == 200
        with review.db.write() as conn:
            conn.execute(SESSIONS.update().where(SESSIONS.c.ended_at.is_(None), SESSIONS.c.user_id.like("token:%"))
                         .values(**expired))
        assert b.get("/teams/T01").status_code == 401


def test_rate_limit_and_sign_in_lockout(review):
    c = client(with_review(review.cfg, requests_per_minute=5))
    codes = [c.get("/login").status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
    c = client(with_review(review.cfg, sign_in_failures=3))
    for _ in range(3):
        r = c.post("/login", data={"token": "wbt_guess", "csrf": form_value(c.get("/login").text)})
        assert r.status_code == 401
    r = c.post("/login", data={"token": review.tokens["T01"], "csrf": form_value(c.get("/login").text)})
    assert r.status_code == 429 and "Too many failed sign-ins" in r.text and int(r.headers["retry-after"]) > 60


def test_the_audit_chain_verifies_exports_and_shows_tampering(review, tmp_path):
    ok = run_wobble("review", "audit", "verify", "--config", str(review.config), env=ENV)
    assert ok.returncode == 0 and "hash chain verified" in ok.stderr
    out = tmp_path / "audit.csv"
    exported = run_wobble("review", "audit", "export", "--out", str(out), "--config", str(review.config), env=ENV)
    assert exported.returncode == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == last_seq(review.db) and rows[0]["prev_hash"] == "0" * 64
    with pytest.raises(Exception, match="append-only"), review.db.write() as conn:
        conn.execute(text("UPDATE service_audit SET detail = 'x' WHERE seq = 2"))
    db = service_db(review.db.url)
    with db.engine.begin() as conn:  # someone with the database's owner rights goes round the guard
        if review.backend == "sqlite":
            conn.execute(text("DROP TRIGGER service_audit_no_update"))
        else:
            conn.execute(text("ALTER TABLE service_audit DISABLE TRIGGER service_audit_append_only"))
        conn.execute(text("UPDATE service_audit SET actor = 'someone else' WHERE seq = 3"))
    bad = run_wobble("review", "audit", "verify", "--config", str(review.config), env=ENV)
    assert bad.returncode == 1 and "row 3" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
