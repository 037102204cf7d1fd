"""In headless Chromium: a team opens its list, records an outcome and sees it; axe-core finds no WCAG 2.2 AA
violation on the list and review pages, the model card, the data-quality report and the monitoring report; other
teams and scripts are refused; pages reflow and print on A4 with a running header and footer on every page.

A Chromium must be at hand (`make browser`, which `make test` runs, installs one): without it these tests fail,
never skip.
The review server runs as `wobble review serve` on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

import pytest
from conftest import HOSTILE, ROOT

from wobble.review.tokens import create_token

WCAG_22_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa",
                                                    "best-practice"]}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen) -> None:
    """Wait (up to a minute) until `wobble review serve` answers /healthz; fail with its stderr if it died."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                assert r.read() == b"ok"
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"wobble review serve did not start: {proc.communicate()[1][-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(published_copy):
    cfg, as_of, pid = published_copy
    tokens = {t: create_token(cfg, t, created_by="browser test")[1] for t in ("T01", "T02")}
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "wobble", "review", "serve", "--port", str(port),
                             "--config", str(cfg.root / "wobble.toml")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc)
    with __import__("duckdb").connect(str(cfg.warehouse), read_only=True) as con:
        other = con.execute("SELECT person_id FROM huddle_lists WHERE team_id = 'T02'").fetchall()
    yield SimpleNamespace(url=url, tokens=tokens, cfg=cfg, as_of=as_of, pid=pid, t02=[r[0] for r in other],
                          static=cfg.outputs / "lists" / as_of.isoformat() / "T01.html")
    proc.terminate()
    proc.wait(timeout=10)


class Watch:
    """Every request a page makes and every dialog it opens."""

    def __init__(self, context):
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        context.on("request", lambda r: self.requests.append(r.url))
        context.on("page", lambda p: p.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss())))

    def outside(self, base: str) -> list[str]:
        return [u for u in self.requests if not u.startswith((base, "file://", "data:"))]


def _sign_in(page, server, team="T01"):
    page.goto(server.url + "/login")
    page.fill("#token", server.tokens[team])
    page.click("button:has-text('Sign in')")
    assert page.url == f"{server.url}/teams/{team}"


def _outcomes(cfg) -> int:
    from wobble.review.records import count_outcomes
    from wobble.review.tokens import db_of

    return count_outcomes(db_of(cfg))


def test_a_team_opens_its_list_records_an_outcome_and_sees_it(browser, server):
    context = browser.new_context(java_script_enabled=False)  # nothing here needs JavaScript
    watch = Watch(context)
    page = context.new_page()
    _sign_in(page, server)
    assert "Team T01: huddle list for discussion" in page.inner_text("h1")
    assert page.locator("article.person:not(.crisis)").count() == 20  # the capacity part; the other part apart
    page.click(f"a:has-text('Person {server.pid}')")
    assert page.url == f"{server.url}/teams/T01/people/{server.pid}"
    before = _outcomes(server.cfg)

    page.check("label:has-text('Referred on')")
    page.fill("#note", "NHS number 943 476 5919")
    page.fill("#recorded_by", "Nurse B")
    page.click("button:has-text('Record the outcome')")
    assert "looks like it holds an NHS number" in page.inner_text("[role=alert]")
    assert _outcomes(server.cfg) == before
    assert page.input_value("#recorded_by") == "Nurse B"

    page.fill("#note", HOSTILE + " to the falls clinic")
    page.click("button:has-text('Record the outcome')")
    assert page.url.endswith("?saved=1") and "Saved." in page.inner_text("[role=status]")
    assert "Outcome for this list: referred on (recorded by Nurse B" in page.inner_text("article.person")
    assert HOSTILE + " to the falls clinic" in page.inner_text("table.history")  # shown as text
    assert _outcomes(server.cfg) == before + 1

    page.click("a:has-text('Back to team T01')")
    first = page.locator("article.person").first
    assert "Outcome for this list: referred on" in first.inner_text()
    assert "1 of 20 people discussed; referred on 1" in page.inner_text(".ok")
    assert watch.outside(server.url) == [] and watch.dialogs == []
    context.close()


def test_axe_finds_no_accessibility_violations(browser, server):
    from axe_playwright_python.sync_playwright import Axe

    context = browser.new_context()
    watch = Watch(context)
    page = context.new_page()
    pages = [("published list", server.static.as_uri()), ("sign-in page", server.url + "/login")]
    pages += [("not signed in (401)", server.url + "/teams/T01")]
    checked = []
    for name, url in pages:
        page.goto(url)
        checked.append((name, Axe().run(page, options=WCAG_22_AA)))
    _sign_in(page, server)
    for name, url in [("team list", "/teams/T01"), ("person page", f"/teams/T01/people/{server.pid}"),
                      ("another team's list (403)", "/teams/T02")]:
        page.goto(server.url + url)
        checked.append((name, Axe().run(page, options=WCAG_22_AA)))
    page.goto(f"{server.url}/teams/T01/people/{server.pid}")
    page.click("button:has-text('Record the outcome')")  # nothing chosen: the browser's own required check
    page.fill("#recorded_by", "x")
    page.check("label:has-text('Deferred')")
    page.fill("#note", "0161 496 0000")
    page.click("button:has-text('Record the outcome')")
    checked.append(("form with an error", Axe().run(page, options=WCAG_22_AA)))
    failures = {name: r.generate_report() for name, r in checked if r.violations_count}
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    assert len(checked) == 7
    # The hostile tag and note never became script, here where JavaScript runs.
    assert page.locator("script").count() == 0 and watch.dialogs == []
    assert watch.outside(server.url) == []
    context.close()


def test_axe_finds_no_violations_on_the_card_and_the_reports(browser, monitored):
    """The model card, the data-quality report and the monitoring report (static files, as a reader opens them),
    with the static list again from the matured copy; the person page is checked above through the review pages."""
    from axe_playwright_python.sync_playwright import Axe

    context = browser.new_context()
    page = context.new_page()
    results = {}
    for name in ("card", "data-quality report", "monitoring report", "list"):
        page.goto(monitored[name].as_uri())
        results[name] = Axe().run(page, options=WCAG_22_AA)
    failures = {name: r.generate_report() for name, r in results.items() if r.violations_count}
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    # The data-quality report's wide tables scroll by keyboard: Tab reaches each one.
    page.goto(monitored["data-quality report"].as_uri())
    regions = page.locator("div.scroll[role=region]").count()
    reached = set()
    for _ in range(regions + 40):
        page.keyboard.press("Tab")
        label = page.evaluate("document.activeElement.getAttribute('role') === 'region' ? "
                              "document.activeElement.getAttribute('aria-label') : null")
        if label:
            reached.add(label)
    assert regions and len(reached) == regions
    context.close()


def test_another_teams_people_stay_hidden_in_the_browser(browser, server):
    context = browser.new_context()
    page = context.new_page()
    _sign_in(page, server)
    for url, status in [("/teams/T02", 403), (f"/teams/T02/people/{server.t02[0]}", 403),
                        (f"/teams/T01/people/{server.t02[0]}", 404)]:
        response = page.goto(server.url + url)
        assert response.status == status, url
        text = page.inner_text("body")
        assert not any(p in text for p in server.t02), url
    page.goto(server.url + "/teams/T02")
    assert "You are signed in for team T01" in page.inner_text("main")
    context.close()


@pytest.mark.parametrize("width", [640, 320])  # 1280 px at 200% and 400% zoom
def test_pages_reflow_when_zoomed(browser, server, width):
    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    _sign_in(page, server)
    for url in (server.static.as_uri(), f"{server.url}/teams/T01/people/{server.pid}", f"{server.url}/teams/T01"):
        page.goto(url)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{url} scrolls sideways by {overflow}px at {width}px wide"
    context.close()


def test_the_list_prints_on_a4(browser, server, tmp_path):
    context = browser.new_context(viewport={"width": 703, "height": 1000})  # A4 less 12 mm margins, at 96 dpi
    page = context.new_page()
    page.goto(server.static.as_uri())
    page.emulate_media(media="print")
    assert page.evaluate("document.documentElement.scrollWidth") <= 703
    pdf = tmp_path / "list.pdf"
    page.pdf(path=str(pdf), format="A4", prefer_css_page_size=True)
    data = pdf.read_bytes()
    boxes = set(re.findall(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data))
    assert boxes and all(abs(float(w) - 595.9) < 2 and abs(float(h) - 842.9) < 2 for w, h in boxes)
    pages = len(re.findall(rb"/Type /Page\b", data))
    # No person's card breaks across pages: at most a page each (two fit on most), the compact crisis rows four
    # or more to a page, and the page of the list's header.
    people = page.locator("article.person:not(.crisis)").count()
    crisis = page.locator("article.person.crisis").count()
    assert people == 20 and 2 <= pages <= 1 + people + -(-crisis // 4), (pages, people, crisis)
    # Every printed page carries the running header and footer (CSS page margin boxes) and the marking.
    from pypdf import PdfReader

    texts = [pg.extract_text() for pg in PdfReader(str(pdf)).pages]
    date_text = f"{server.as_of.day} {server.as_of:%B %Y}"
    for n, text in enumerate(texts, start=1):
        assert f"Team T01: list of {date_text}" in text, (n, text[:200])
        assert f"page {n} of {len(texts)}" in text and "OFFICIAL-SENSITIVE: personal data" in text, (n, text[:200])
    body = " ".join(texts)
    assert "wobble review serve" not in body and "wobble outcome" not in body  # no commands for clinicians
    context.close()
