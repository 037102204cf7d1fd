"""scripts/get_browser.py (`make browser`): which installers it tries, in what order, and the one line it
prints when none works; no network, no root and no real install needed."""

from __future__ import annotations

import os
import stat

import pytest
from conftest import ROOT, load_script

gb = load_script(ROOT / "scripts" / "get_browser.py")


@pytest.mark.parametrize(("found", "is_root", "has_apt", "expected"), [
    (True, True, True, []),                               # already there: nothing installed
    (True, False, False, []),
    (False, True, True, [gb.APT, gb.PLAYWRIGHT]),         # root on Debian: its chromium, then Playwright's
    (False, False, True, [gb.PLAYWRIGHT]),                # not root: never apt-get
    (False, True, False, [gb.PLAYWRIGHT]),                # root without apt-get
])
def test_plan_tries_debian_as_root_then_playwright(found, is_root, has_apt, expected):
    assert gb.plan(found=found, is_root=is_root, has_apt=has_apt) == expected


def test_when_every_way_fails_it_prints_one_line_naming_the_command_and_exits_1(monkeypatch, capsys):
    tried = []
    monkeypatch.setattr(gb, "find_browser", lambda: None)
    monkeypatch.setattr(gb, "_install", lambda step: tried.append(step) or False)
    monkeypatch.setattr(gb.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(gb.os, "geteuid", lambda: 0)
    assert gb.main() == 1
    err = capsys.readouterr().err
    assert tried == [gb.APT, gb.PLAYWRIGHT]
    assert err.count("\n") == 1 and err.startswith("no Chromium for the browser tests")
    assert "apt-get install -y chromium" in err and "playwright install" in err and "make test" in err


def test_a_found_browser_installs_nothing(monkeypatch, capsys, tmp_path):
    fake = tmp_path / "chromium"
    monkeypatch.setenv("WOBBLE_CHROMIUM", str(fake))
    monkeypatch.setattr(gb, "_install", lambda step: pytest.fail(f"installed {step} though one was found"))
    assert gb.main() == 0
    out = capsys.readouterr()
    assert str(fake) in out.out and out.err == ""


def test_an_installer_that_works_ends_the_search(monkeypatch, capsys, tmp_path):
    found = iter([None, tmp_path / "chromium"])
    monkeypatch.setattr(gb, "find_browser", lambda: next(found))
    tried = []
    monkeypatch.setattr(gb, "_install", lambda step: tried.append(step) or True)
    monkeypatch.setattr(gb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(gb.shutil, "which", lambda name: "/usr/bin/apt-get")
    assert gb.main() == 0
    assert tried == [gb.APT]  # apt-get gave a browser: Playwright's download is not tried


def test_a_failing_apt_get_is_reported_and_counts_as_failed(monkeypatch, capsys, tmp_path):
    """The real `_install` against a stand-in apt-get that fails as Debian's does without the package."""
    stub = tmp_path / "apt-get"
    stub.write_text("#!/bin/sh\n[ \"$1\" = update ] && exit 0\necho 'E: Unable to locate package chromium' >&2\n"
                    "exit 100\n")
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gb._install(gb.APT) is False
    out = capsys.readouterr().out
    assert "apt-get failed: E: Unable to locate package chromium" in out



def test_the_reason_given_is_the_line_that_names_the_error():
    playwright = "Downloading Chromium\nError: getaddrinfo ENOTFOUND cdn.playwright.dev\n    at foo\n{\n  code: 1\n}\n"
    assert gb._reason(playwright) == "Error: getaddrinfo ENOTFOUND cdn.playwright.dev"
    assert gb._reason("Reading lists\nE: Unable to locate package chromium\n") == "E: Unable to locate package chromium"
    assert gb._reason("}\n") == "(no message)"
