"""What the review service reads and records, in its own database (`wobble.core.servicedb`).

Reads `service_lists` and `service_people` (pushed by `wobble publish`); writes
`service_outcomes` (one row per decision; a form's nonce makes a replayed form one decision) with
its `service_audit` row in the same transaction. Outcomes go back to the warehouse at the next
publish (`wobble.lists.service.pull_outcomes`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from wobble.core.servicedb import LISTS, OUTCOMES, PEOPLE, ServiceDB, iso, now_utc
from wobble.core.vocab import OUTCOME_LABELS
from wobble.core.vocab import OUTCOMES as OUTCOME_KINDS
from wobble.lists.outcomes import Outcome, OutcomeRefused, check_outcome
from wobble.review import audit


@dataclass(frozen=True)
class ServedList:
    """A team's list as the service holds it."""

    list_id: str
    team_id: str
    as_of: date
    header: dict


def current_list(db: ServiceDB, team_id: str, as_of: date | None = None) -> ServedList | None:
    """The team's latest list (at `as_of` if given): the most recently published version."""
    q = select(LISTS).where(LISTS.c.team_id == team_id)
    if as_of is not None:
        q = q.where(LISTS.c.as_of == as_of.isoformat())
    q = q.order_by(LISTS.c.as_of.desc(), LISTS.c.published_at.desc(), LISTS.c.model_version.desc()).limit(1)
    with db.read() as conn:
        r = conn.execute(q).mappings().first()
    return None if r is None else ServedList(r["list_id"], r["team_id"], date.fromisoformat(r["as_of"]),
                                             json.loads(r["header"]))


def people(db: ServiceDB, ref: ServedList, person_id: str | None = None) -> list[dict]:
    """The list's people as the page shows them, in order (or the one for `person_id`)."""
    q = select(PEOPLE.c.view).where(PEOPLE.c.list_id == ref.list_id)
    if person_id is not None:
        q = q.where(PEOPLE.c.person_id == person_id)
    with db.read() as conn:
        return [json.loads(v) for (v,) in conn.execute(q.order_by(PEOPLE.c.position))]


def teams(db: ServiceDB) -> list[str]:
    with db.read() as conn:
        return [t for (t,) in conn.execute(select(LISTS.c.team_id).distinct().order_by(LISTS.c.team_id))]


def _view(r) -> dict:
    recorded = datetime.fromisoformat(r["recorded_at"])
    return {"outcome": r["outcome"], "label": OUTCOME_LABELS.get(r["outcome"], r["outcome"]),
            "list_date": r["as_of"], "note": r["note"], "recorded_by": r["recorded_by"],
            "date": recorded.date().isoformat()}


def decisions(db: ServiceDB, ref: ServedList) -> dict[str, dict]:
    """{person_id: the team's latest decision for them on this list}."""
    q = (select(OUTCOMES).where(OUTCOMES.c.team_id == ref.team_id, OUTCOMES.c.as_of == ref.as_of.isoformat())
         .order_by(OUTCOMES.c.recorded_at, OUTCOMES.c.outcome_id))
    with db.read() as conn:
        return {r["person_id"]: _view(r) for r in conn.execute(q).mappings()}  # later rows win


def history(db: ServiceDB, team_id: str, person_id: str) -> list[dict]:
    """Every decision this team recorded for this person in the service, newest first."""
    q = (select(OUTCOMES).where(OUTCOMES.c.team_id == team_id, OUTCOMES.c.person_id == person_id)
         .order_by(OUTCOMES.c.recorded_at.desc(), OUTCOMES.c.outcome_id.desc()))
    with db.read() as conn:
        return [_view(r) for r in conn.execute(q).mappings()]


def progress(listed: list[dict], decided: dict[str, dict]) -> dict:
    """The shape of `lists.outcomes.summarise` for one list: people in the capacity part, discussed, by kind."""
    capacity = [p["person_id"] for p in listed if p["section"] == "capacity"]
    kinds = [decided[p]["outcome"] for p in capacity if p in decided]
    return {"listed": len(capacity), "recorded": len(kinds), "discussed": sum(k != "deferred" for k in kinds),
            "by_kind": {o: kinds.count(o) for o in OUTCOME_KINDS if o in kinds}}


def count_outcomes(db: ServiceDB) -> int:
    with db.read() as conn:
        return conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one()


@dataclass(frozen=True)
class Recorded:
    outcome: Outcome
    replayed: bool  # the same form (nonce) was sent before: nothing new was written


def record_outcome(db: ServiceDB, *, team_id: str, person_id: str, outcome: str, note: str | None,
                   recorded_by: str, actor: str, as_of: date | None = None, nonce: str | None = None,
                   source: str | None = None, user_agent: str | None = None) -> Recorded:
    """Record one decision for a person on the team's list, with its audit row, in one transaction.

    Refusals (OutcomeRefused) are audited too; the audit's detail never holds the note or the name.
    """
    who = {"actor": actor, "team_id": team_id, "source": source, "user_agent": user_agent}
    try:
        outcome, note, recorded_by = check_outcome(outcome, note, recorded_by)
        ref = current_list(db, team_id, as_of)
        if ref is None:
            when = f" at {as_of}" if as_of else ""
            raise OutcomeRefused(f"team {team_id} has no published list{when}: see `wobble publish`")
        if not people(db, ref, person_id):
            raise OutcomeRefused(f"person {person_id} is not on team {team_id}'s list of {ref.as_of}")
    except OutcomeRefused as exc:
        audit.record(db, **who, action="record_outcome", result="refused", detail=refusal_code(str(exc)))
        raise
    for _ in range(2):  # a concurrent replay of the same nonce loses the race once, then finds the row
        try:
            with db.write() as conn:
                return _insert(conn, ref, person_id, outcome, note, recorded_by, nonce, who)
        except IntegrityError:
            continue
    raise OutcomeRefused("the same form was sent twice at once; reload the page to see what was saved")


def _insert(conn, ref: ServedList, person_id, outcome, note, recorded_by, nonce, who) -> Recorded:
    if nonce:
        old = conn.execute(select(OUTCOMES).where(OUTCOMES.c.nonce == nonce)).mappings().first()
        if old is not None:
            audit.append(conn, **who, action="record_outcome", result="replayed", person_id=old["person_id"],
                         detail="the same form again: nothing new recorded")
            return Recorded(_outcome(old), True)
    row = {"outcome_id": uuid.uuid4().hex, "nonce": nonce or None, "team_id": ref.team_id,
           "as_of": ref.as_of.isoformat(), "person_id": person_id, "outcome": outcome, "note": note,
           "recorded_by": recorded_by, "recorded_at": iso(now_utc())}
    conn.execute(OUTCOMES.insert().values(**row))
    audit.append(conn, **who, action="record_outcome", result="recorded", person_id=person_id,
                 detail=f"{outcome} for the list of {ref.as_of}" + (" (with a note)" if note else ""))
    return Recorded(_outcome(row), False)


def _outcome(r) -> Outcome:
    return Outcome(r["outcome_id"], r["team_id"], date.fromisoformat(r["as_of"]), r["person_id"], r["outcome"],
                   r["note"], r["recorded_by"], datetime.fromisoformat(r["recorded_at"]))


# What a refusal was about, in fixed words: the audit never copies the message (it may quote input).
_REFUSAL_CODES = (("unknown outcome", "unknown outcome"), ("who is recording", "no name"),
                  ("name is longer", "name too long"), ("characters long", "note too long"),
                  ("control character", "control character"), ("note looks like", "identifier in note"),
                  ("name looks like", "identifier in name"), ("no published list", "no list"),
                  ("is not on team", "not on the list"))


def refusal_code(message: str) -> str:
    return next((code for words, code in _REFUSAL_CODES if words in message), "refused")
