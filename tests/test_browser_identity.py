"""In headless Chromium: a clinician signs in through the local OpenID Connect provider, opens the
team's list and reveals a person (the vault's NHS number and name appear); the huddle's print view
shows identities with a watermark of the viewer's name and the time; another team's clinician is
refused (403) and the refusal is in the audit.

The review server runs as `wobble review serve` (with a `[sign_in]` block) on 127.0.0.1; the
provider is tests/oidc_provider.py on another loopback port. The browser is the suite's (`make browser`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT, copy_tree, remove
from oidc_provider import Provider
from reviewkit import audit_since, last_seq
from test_browser import WCAG_22_AA, _free_port, wait_healthy
from test_reveal import SECRET, provider_users

from wobble.core.config import load_config
from wobble.core.servicedb import service_db
from wobble.core.vault import open_vault
from wobble.review import records


@pytest.fixture(scope="module")
def chromium(browser):
    """The suite's headless Chromium (conftest's `browser`: `make browser` finds or installs it)."""
    return browser


@pytest.fixture(scope="module")
def served(demo_run, tmp_path_factory):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    copy = copy_tree(work, tmp_path_factory.mktemp("identity") / "demo")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with Provider(client_id="wobble-review", client_secret=SECRET, redirect_uris=[f"{url}/callback"],
                  users=provider_users()) as provider:
        config = copy / "wobble.toml"
        config.write_text(config.read_text() + f"""
[sign_in]
issuer = "{provider.issuer}"
client_id = "wobble-review"
redirect_url = "{url}/callback"
role_claim = "wobble_role"
team_claim = "wobble_teams"
""")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "WOBBLE_OIDC_CLIENT_SECRET": SECRET}
        server = subprocess.Popen([sys.executable, "-m", "wobble", "review", "serve", "--port", str(port),
                                   "--config", str(config)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_healthy(url, server)
            cfg = load_config(config)
            db = service_db(cfg.review_database)
            listed = {t: [p["person_id"] for p in records.people(db, records.current_list(db, t))]
                      for t in ("T01", "T02")}
            yield SimpleNamespace(url=url, provider=provider, cfg=cfg, db=db, listed=listed, vault=open_vault(cfg))
        finally:
            server.terminate()
            server.wait(timeout=10)
            remove(copy.parent)


def _sign_in(chromium, served, who: str):
    page = chromium.new_context().new_page()
    served.provider.login_as = who
    page.goto(served.url + "/login")  # → the provider's authorize → /callback → the team's list
    return page


def _no_axe_violations(page, name: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    result = Axe().run(page, options=WCAG_22_AA)
    assert result.violations_count == 0, (name, result.generate_report()[:3000])


def test_sign_in_reveal_print_and_refuse(chromium, served):
    page = _sign_in(chromium, served, "alice")
    assert page.url == served.url + "/teams/T01", page.url
    assert page.get_by_role("heading", level=1).inner_text().startswith("Team T01")
    pid = served.listed["T01"][0]
    who = served.vault.lookup([pid])[pid]
    assert who.nhs_number_spaced not in page.content()  # pseudonymous until asked

    page.get_by_role("link", name=f"Person {pid}").click()
    page.get_by_label("Why do you need to see who this is?").select_option("huddle")
    page.get_by_role("button", name="Show who this is").click()
    shown = page.locator(f"#who-{pid}").inner_text()
    assert who.nhs_number_spaced in shown and who.name in shown
    _no_axe_violations(page, "person page with the identity shown")

    page.goto(served.url + "/teams/T01")
    page.locator("#reason-print").select_option("huddle")
    page.get_by_role("button", name="Print view for the huddle, with names").click()
    text = page.locator("body").inner_text()
    listed = served.vault.lookup(served.listed["T01"])
    assert all(w.nhs_number_spaced in text and w.name in text for w in listed.values())
    assert re.search(r"Viewed by Alice Clinician · \d\d \w{3} 20\d\d \d\d:\d\d", text)
    watermark = page.locator(".watermark")
    assert "Alice Clinician" in watermark.inner_text() and watermark.evaluate(
        "e => getComputedStyle(e).position") == "fixed"
    _no_axe_violations(page, "print view")
    page.emulate_media(media="print")
    assert "Alice Clinician" in page.locator("#watermark-line").inner_text()
    page.emulate_media(media="screen")
    page.goto(served.url + "/break-glass")
    _no_axe_violations(page, "break-glass form")

    # Another team's clinician: refused, and the refusal is audited.
    seq = last_seq(served.db)
    bob = _sign_in(chromium, served, "bob")
    assert bob.url == served.url + "/teams/T02"
    answer = bob.goto(f"{served.url}/teams/T01/people/{pid}")
    assert answer.status == 403 and who.nhs_number_spaced not in bob.content()
    csrf = bob.goto(served.url + "/teams/T02") and re.search(r'name="csrf" value="([^"]+)"', bob.content()).group(1)
    posted = bob.request.post(f"{served.url}/teams/T01/people/{pid}/reveal",
                              form={"csrf": csrf, "reason": "huddle"}, headers={"Origin": served.url})
    assert posted.status == 403 and who.nhs_number_spaced not in posted.text()
    rows = audit_since(served.db, seq)
    refusals = [r for r in rows if r["actor"] == "Bob Clinician (bob)" and r["result"] == "refused 403: other team"]
    assert {r["action"] for r in refusals} == {"view_person", "reveal_identity"}
    assert all(r["team_id"] == "T02" and r["source"] == "127.0.0.1" for r in refusals)
