"""Make sure a Chromium is at hand for the browser tests, installing one if it can: `make browser`.

    python scripts/get_browser.py          # prints the browser's path; exit 1 with one line if none

In order: a Chromium already installed (Debian's /usr/bin/chromium, or Playwright's own download);
else, as root with apt-get, Debian's `chromium` package; else Playwright's installer (it downloads
its own Chromium, which needs the network). Failing all of these it prints one line naming the
command to run and exits 1: the browser tests never skip for want of a browser.
The decision is `plan()`, a pure function, so tests check it without a network or root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

DEBIAN_PATHS = (Path("/usr/bin/chromium"), Path("/usr/bin/chromium-browser"))
# As root Chromium refuses to start sandboxed; the rest keep it off this machine's closed network.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
APT = "apt-get"
PLAYWRIGHT = "playwright"
HELP = ("no Chromium for the browser tests: run `sudo apt-get install -y chromium` (Debian/Ubuntu) or "
        "`.venv/bin/python -m playwright install --with-deps chromium`, then `make test` again")


def playwright_browser() -> Path | None:
    """Playwright's own downloaded Chromium, if it is there."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        path = Path(p.chromium.executable_path)
    return path if path.is_file() else None


def find_browser() -> Path | None:
    """The Chromium the tests should launch: `$WOBBLE_CHROMIUM`, Debian's, then Playwright's; None if none."""
    if os.environ.get("WOBBLE_CHROMIUM"):
        return Path(os.environ["WOBBLE_CHROMIUM"])
    for path in DEBIAN_PATHS:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return playwright_browser()


def plan(*, found: bool, is_root: bool, has_apt: bool) -> list[str]:
    """The installers to try, in order: none if a browser is found; apt-get only as root where it exists."""
    if found:
        return []
    return ([APT] if is_root and has_apt else []) + [PLAYWRIGHT]


def _install(step: str) -> bool:
    """Run one installer; True if it exited 0. Progress goes to stdout, so stderr holds only the verdict."""
    if step == APT:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        commands = [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]]
    else:
        env = dict(os.environ)
        commands = [[sys.executable, "-m", "playwright", "install", "chromium"]]
    for cmd in commands:
        print("get_browser: " + " ".join(["python", *cmd[1:]] if step == PLAYWRIGHT else cmd), flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=1800)
        if proc.returncode:
            print(f"get_browser: {step} failed: {_reason(proc.stderr)}", flush=True)
            return False
    return True


def _reason(stderr: str) -> str:
    """The line of an installer's error output that says what went wrong: one naming an error, else the last
    line with words in it (Playwright ends its report with a lone '}')."""
    lines = [ln.strip() for ln in stderr.splitlines() if sum(c.isalpha() for c in ln) >= 3]
    named = [ln for ln in lines if "error" in ln.lower() or ln.startswith("E:")]
    return ((named or lines or ["(no message)"])[0 if named else -1])[:200]


def ensure_browser() -> Path | None:
    """Find a Chromium, installing one by the plan if needed; None when every way failed."""
    path = find_browser()
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for step in plan(found=path is not None, is_root=is_root, has_apt=shutil.which("apt-get") is not None):
        if _install(step) and (path := find_browser()) is not None:
            break
    return path


def main() -> int:
    path = ensure_browser()
    if path is None:
        print(HELP, file=sys.stderr)
        return 1
    print(f"get_browser: the browser tests use {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
