"""Screenshots of a team's published list and of one person's review page, for the README.

    python scripts/screenshots.py --config data/demo/wobble.toml --out docs/img [--team T01]

Uses Debian's chromium (/usr/bin/chromium). Creates a short-lived review token for the team (revoked
at the end), serves the review page on a free local port, and writes list.png and person.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="data/demo/wobble.toml")
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--team", default="T01")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    from wobble.core.config import load_config
    from wobble.review.app import serving
    from wobble.review.records import current_list, people
    from wobble.review.tokens import create_token, db_of, revoke_tokens

    cfg = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = current_list(db_of(cfg), args.team)
    person = people(db_of(cfg), ref)[0]["person_id"]
    token_id, token = create_token(cfg, args.team, created_by="scripts/screenshots.py")
    try:
        with serving(cfg) as port, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.goto((cfg.outputs / "lists" / ref.as_of.isoformat() / f"{args.team}.html").as_uri())
            page.screenshot(path=str(out / "list.png"))
            page.goto(f"http://127.0.0.1:{port}/login")
            page.fill("#token", token)
            page.click("button:has-text('Sign in')")
            page.goto(f"http://127.0.0.1:{port}/teams/{args.team}/people/{person}")
            page.screenshot(path=str(out / "person.png"), full_page=True)
            browser.close()
    finally:
        revoke_tokens(cfg, args.team, revoked_by="scripts/screenshots.py", token_id=token_id)
    print(f"written: {out / 'list.png'}, {out / 'person.png'}")


if __name__ == "__main__":
    main()
