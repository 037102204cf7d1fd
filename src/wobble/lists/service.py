"""Between the warehouse and the review service's own database (`wobble.core.servicedb`).

`push_lists` (at the end of `wobble publish`): each team's list, as the page shows it, into
`service_lists` and `service_people`, all teams in one transaction; publishing the same list
again replaces it. `pull_outcomes` (at the start of `wobble publish`, and `wobble outcome
summary`): decisions recorded in `service_outcomes` that the warehouse's `huddle_outcomes` does
not yet hold, by `outcome_id`, so running it twice changes nothing.

The service never opens the warehouse, and the pipeline's writes to the service's database are
one short transaction per publish: page traffic and pipeline runs never wait on each other.
"""

from __future__ import annotations

import json
from datetime import date, datetime

import polars as pl
from sqlalchemy import select

from wobble.core.clock import LONDON
from wobble.core.config import Config
from wobble.core.servicedb import LISTS, OUTCOMES, PEOPLE, service_db


def list_id(team_id: str, as_of: date | str, model_name: str, model_version: str) -> str:
    return f"{team_id}|{as_of}|{model_name}|{model_version}"


def push_lists(cfg: Config, teams: list[tuple[dict, dict, list[dict]]]) -> int:
    """Write each (context, header, people) team list into the service's database in one transaction."""
    db = service_db(cfg.review_database, busy_seconds=max(cfg.review.busy_seconds, 30.0))
    lists, people = [], []
    for context, header, views in teams:  # one per team
        lid = list_id(context["team_id"], context["as_of"], context["model_name"], context["model_version"])
        published = context["published_at"]
        lists.append({"list_id": lid, "team_id": context["team_id"], "as_of": str(context["as_of"]),
                      "model_name": context["model_name"], "model_version": str(context["model_version"]),
                      "published_at": published.isoformat() if isinstance(published, datetime) else str(published),
                      "header": json.dumps(header, default=str)})
        people += [{"list_id": lid, "person_id": v["person_id"], "position": i, "section": v["section"],
                    "view": json.dumps(v, default=str)} for i, v in enumerate(views)]
    ids = [r["list_id"] for r in lists]
    with db.write() as conn:
        conn.execute(PEOPLE.delete().where(PEOPLE.c.list_id.in_(ids)))
        conn.execute(LISTS.delete().where(LISTS.c.list_id.in_(ids)))
        conn.execute(LISTS.insert(), lists)
        if people:
            conn.execute(PEOPLE.insert(), people)
    return len(people)


def pull_outcomes(cfg: Config, con) -> int:
    """Copy decisions recorded in the service's database into `huddle_outcomes` (new ones only)."""
    db = service_db(cfg.review_database, busy_seconds=max(cfg.review.busy_seconds, 30.0))
    with db.read() as conn:
        rows = conn.execute(select(OUTCOMES.c.outcome_id, OUTCOMES.c.team_id, OUTCOMES.c.as_of,
                                   OUTCOMES.c.person_id, OUTCOMES.c.outcome, OUTCOMES.c.note,
                                   OUTCOMES.c.recorded_by, OUTCOMES.c.recorded_at)).all()
    if not rows:
        return 0
    df = pl.DataFrame([{
        "outcome_id": r[0], "team_id": r[1], "as_of": date.fromisoformat(r[2]), "person_id": r[3], "outcome": r[4],
        "note": r[5], "recorded_by": r[6],
        "recorded_at": datetime.fromisoformat(r[7]).astimezone(LONDON).replace(tzinfo=None),
    } for r in rows], schema_overrides={"note": pl.String})
    con.register("_service_outcomes", df)
    try:
        (n,), = con.execute("SELECT count(*) FROM _service_outcomes WHERE outcome_id NOT IN "
                            "(SELECT outcome_id FROM huddle_outcomes)").fetchall()
        con.execute("INSERT INTO huddle_outcomes (outcome_id, team_id, as_of, person_id, outcome, note, recorded_by, "
                    "recorded_at) SELECT outcome_id, team_id, as_of, person_id, outcome, note, recorded_by, "
                    "recorded_at FROM _service_outcomes WHERE outcome_id NOT IN "
                    "(SELECT outcome_id FROM huddle_outcomes)")
    finally:
        con.unregister("_service_outcomes")
    return int(n)

