"""Fixtures and helpers for the review service's tests, run once on SQLite and once on PostgreSQL.

`review` is the published demo copy with the service's database on the backend under test: its own
SQLite file, or a fresh database on the test PostgreSQL server (`postgres` in conftest), with the
lists copied in from the SQLite database that `wobble publish` filled.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from wobble.core.servicedb import AUDIT, LISTS, OUTCOMES, PEOPLE, ServiceDB, service_db
from wobble.review.app import create_app
from wobble.review.tokens import create_token

UA = "pytest-review-agent/1.0"


def with_review(cfg, **settings):
    """The config with `[review]` settings changed."""
    return cfg.model_copy(update={"review": cfg.review.model_copy(update=settings)})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def review(request, backend, published_copy, tmp_path_factory):
    """SimpleNamespace(cfg, config (a wobble.toml for the CLI), db, as_of, pid, tokens, listed, backend)."""
    cfg, as_of, pid = published_copy
    name = re.sub(r"\W", "_", request.module.__name__)
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('review-sqlite') / 'review.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").database(f"review_{name}")
    source = service_db(cfg.review_database)
    cfg = with_review(cfg, database_url=url, busy_seconds=2.0)
    db = service_db(url, busy_seconds=2.0)
    with source.read() as src, db.write() as dst:
        for table in (LISTS, PEOPLE):
            dst.execute(table.insert(), [dict(r) for r in src.execute(select(table)).mappings()])
    config = cfg.root / f"wobble-{name}-{backend}.toml"
    config.write_text((cfg.root / "wobble.toml").read_text() + f'\n[review]\ndatabase_url = "{url}"\n')
    tokens = {t: create_token(cfg, t, created_by="test")[1] for t in ("T01", "T02")}
    with db.read() as conn:
        listed = {t: [p for (p,) in conn.execute(
            select(PEOPLE.c.person_id).join(LISTS, LISTS.c.list_id == PEOPLE.c.list_id)
            .where(LISTS.c.team_id == t).order_by(PEOPLE.c.position))] for t in ("T01", "T02")}
    return SimpleNamespace(cfg=cfg, config=config, db=db, as_of=as_of, pid=pid, tokens=tokens, listed=listed,
                           backend=backend)


def client(cfg, token: str | None = None, **kw) -> TestClient:
    """A browser: signed in with `token` through the sign-in form (a server-side session) if given."""
    c = TestClient(create_app(cfg), follow_redirects=False, headers={"User-Agent": UA}, **kw)
    if token:
        r = c.post("/login", data={"token": token, "csrf": form_value(c.get("/login").text)})
        assert r.status_code == 303, r.text
    return c


def bearer(cfg, token: str) -> TestClient:
    return TestClient(create_app(cfg), follow_redirects=False,
                      headers={"Authorization": f"Bearer {token}", "User-Agent": UA})


def form_value(html: str, name: str = "csrf") -> str:
    return re.search(rf'name="{name}" value="([^"]*)"', html).group(1)


def outcomes(db: ServiceDB) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one()


def last_seq(db: ServiceDB) -> int:
    with db.read() as conn:
        return conn.execute(select(func.coalesce(func.max(AUDIT.c.seq), 0))).scalar_one()


def audit_since(db: ServiceDB, seq: int) -> list[dict]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(select(AUDIT).where(AUDIT.c.seq > seq).order_by(AUDIT.c.seq))
                .mappings()]
