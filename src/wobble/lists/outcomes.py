"""Huddle outcomes: what each team decided about the people on its list, reported back.

Reads `huddle_lists` (who was on which team's list at which as-of); writes `huddle_outcomes`
(one row per recorded decision: the team, the as-of of the list it belongs to, the person, the
outcome, an optional short note, who recorded it and when) and `audit_log` (one row per view or
decision, from the review page and the CLI alike). `summarise` reports decisions back per list:
how many listed people were discussed and the decisions by kind.

A decision can only be recorded for someone on that team's list. A note is refused when it
holds anything that looks like an NHS number or a phone number: free text stays out of the
warehouse except for these short, checked notes.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl

from wobble.core.errors import WobbleError
from wobble.core.vocab import OUTCOME_LABELS, OUTCOMES
from wobble.core.warehouse import transaction
from wobble.ingest.identifiers import is_valid_nhs_number

NOTE_MAX_CHARS = 300
NAME_MAX_CHARS = 80
# A digit, then digits with at most two separators between them: "0161 496 0000", "(0161) 496-0000",
# "+44 7700 900123", "943 476 5919". Dates ("12/03/2026", "12.03.2026") stop at eight digits.
_NUMBER_RUN = re.compile(r"\+?\d(?:[ .\-()]{0,2}\d)+")
_NHS_LAYOUT = re.compile(r"\d{3}[ -]?\d{3}[ -]?\d{4}")


class OutcomeRefused(WobbleError):
    """An outcome that cannot be recorded as given; the message says what to change."""


@dataclass(frozen=True)
class ListRef:
    """One published list: a team's people at an as-of date from one model version."""

    team_id: str
    as_of: date
    model_name: str
    model_version: str
    published_at: datetime


@dataclass(frozen=True)
class Outcome:
    outcome_id: str
    team_id: str
    as_of: date
    person_id: str
    outcome: str
    note: str | None
    recorded_by: str
    recorded_at: datetime

    def summary(self) -> dict:
        return {"outcome_id": self.outcome_id, "team_id": self.team_id, "as_of": self.as_of.isoformat(),
                "person_id": self.person_id, "outcome": self.outcome, "note": self.note,
                "recorded_by": self.recorded_by, "recorded_at": self.recorded_at.isoformat(timespec="seconds")}


def identifier_in(text: str) -> str | None:
    """What identifier `text` seems to hold ("an NHS number", "a phone number"), or None.

    Any run of nine or more digits (spaces, dots, hyphens and brackets allowed between them) is
    taken as one: better to ask someone to rephrase than to store a number that identifies a person.
    """
    for m in _NUMBER_RUN.finditer(text):
        run = m.group()
        digits = re.sub(r"\D", "", run)
        if len(digits) < 9:
            continue
        if len(digits) == 10 and (is_valid_nhs_number(digits) or _NHS_LAYOUT.fullmatch(run)):
            return "an NHS number"
        return "a phone number"
    return None


def check_outcome(outcome: str, note: str | None, recorded_by: str) -> tuple[str, str | None, str]:
    """The cleaned (outcome, note, recorded_by), or OutcomeRefused saying what to change."""
    if outcome not in OUTCOMES:
        raise OutcomeRefused(f"unknown outcome {outcome!r}; choose one of: {', '.join(OUTCOMES)}")
    note = (note or "").strip() or None
    recorded_by = (recorded_by or "").strip()
    if not recorded_by:
        raise OutcomeRefused("say who is recording the outcome (a name or role)")
    if len(recorded_by) > NAME_MAX_CHARS:
        raise OutcomeRefused(f"the name is longer than {NAME_MAX_CHARS} characters")
    if note and len(note) > NOTE_MAX_CHARS:
        raise OutcomeRefused(f"the note is {len(note)} characters long; keep it to {NOTE_MAX_CHARS}")
    for label, text in (("note", note), ("name", recorded_by)):
        found = identifier_in(text or "")
        if found:
            raise OutcomeRefused(
                f"the {label} looks like it holds {found}; identifiers must not be written here "
                "(the list already identifies the person by pseudonym): remove the number and try again"
            )
    return outcome, note, recorded_by


def audit(con, *, actor: str, action: str, team_id: str | None = None, person_id: str | None = None,
          detail: str | None = None) -> None:
    """One row in `audit_log`: who did what, to which team's list and person, and when."""
    con.execute("INSERT INTO audit_log (logged_at, actor, team_id, person_id, action, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)", [datetime.now(), actor, team_id, person_id, action, detail])


def current_list(con, team_id: str, as_of: date | None = None) -> ListRef | None:
    """The team's latest published list (at `as_of` if given): the most recently published version."""
    where, params = "team_id = ?", [team_id]
    if as_of is not None:
        where, params = where + " AND as_of = ?", params + [as_of]
    rows = con.execute(f"""
        SELECT as_of, model_name, model_version, max(published_at) AS published_at FROM huddle_lists
        WHERE {where} GROUP BY ALL ORDER BY as_of DESC, published_at DESC, model_version DESC LIMIT 1
    """, params).fetchall()  # fetchall: a half-read result would block this connection
    return ListRef(team_id, *rows[0]) if rows else None


def list_rows(con, ref: ListRef, person_id: str | None = None) -> pl.DataFrame:
    """The rows of one published list in rank order (or the one row for `person_id`)."""
    extra, params = "", [ref.team_id, ref.as_of, ref.model_name, ref.model_version]
    if person_id is not None:
        extra, params = " AND person_id = ?", params + [person_id]
    return con.sql(
        "SELECT * FROM huddle_lists WHERE team_id = ? AND as_of = ? AND model_name = ? AND model_version = ?"
        f"{extra} ORDER BY section <> 'capacity', rank", params=params).pl()


def record_outcome(con, *, team_id: str, person_id: str, outcome: str, note: str | None, recorded_by: str,
                   actor: str, as_of: date | None = None) -> Outcome:
    """Record one decision for a person on the team's list (the latest list unless `as_of` is given)."""
    outcome, note, recorded_by = check_outcome(outcome, note, recorded_by)
    ref = current_list(con, team_id, as_of)
    if ref is None:
        when = f" at {as_of}" if as_of else ""
        raise OutcomeRefused(f"team {team_id} has no published list{when}: see `wobble publish`")
    if list_rows(con, ref, person_id).height == 0:
        raise OutcomeRefused(f"person {person_id} is not on team {team_id}'s list of {ref.as_of}")
    result = Outcome(uuid.uuid4().hex, team_id, ref.as_of, person_id, outcome, note, recorded_by, datetime.now())
    with transaction(con):
        con.execute("INSERT INTO huddle_outcomes (outcome_id, team_id, as_of, person_id, outcome, note, "
                    "recorded_by, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [result.outcome_id, team_id, ref.as_of, person_id, outcome, note, recorded_by,
                     result.recorded_at])
        audit(con, actor=actor, action="record_outcome", team_id=team_id, person_id=person_id,
              detail=f"{outcome} for the list of {ref.as_of}" + (" (with a note)" if note else ""))
    return result


def list_decisions(con, ref: ListRef) -> dict[str, dict]:
    """{person_id: the team's latest decision for them on this list}."""
    df = con.sql("""
        SELECT person_id, as_of, outcome, note, recorded_by, recorded_at FROM huddle_outcomes
        WHERE team_id = ? AND as_of = ?
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY recorded_at DESC, outcome_id DESC) = 1
    """, params=[ref.team_id, ref.as_of]).pl()
    return {r["person_id"]: _outcome_view(r) for r in df.iter_rows(named=True)}


def outcome_history(con, team_id: str, person_id: str) -> list[dict]:
    """Every decision this team recorded for this person, newest first."""
    df = con.sql("""
        SELECT as_of, outcome, note, recorded_by, recorded_at FROM huddle_outcomes
        WHERE team_id = ? AND person_id = ? ORDER BY recorded_at DESC, outcome_id DESC
    """, params=[team_id, person_id]).pl()
    return [_outcome_view(r) for r in df.iter_rows(named=True)]


def last_outcomes(con, before: date, ids_table: str | None = None) -> dict[tuple[str, str], dict]:
    """{(team_id, person_id): the team's latest decision recorded against a list before `before`}."""
    only = f"AND person_id IN (SELECT person_id FROM {ids_table})" if ids_table else ""
    df = con.sql(f"""
        SELECT team_id, person_id, as_of, outcome, note, recorded_by, recorded_at FROM huddle_outcomes
        WHERE as_of < ? {only}
        QUALIFY row_number() OVER (PARTITION BY team_id, person_id ORDER BY as_of DESC, recorded_at DESC,
                                   outcome_id DESC) = 1
    """, params=[before]).pl()
    return {(r["team_id"], r["person_id"]): _outcome_view(r) for r in df.iter_rows(named=True)}


def _outcome_view(r: dict) -> dict:
    return {"outcome": r["outcome"], "label": OUTCOME_LABELS.get(r["outcome"], r["outcome"]),
            "list_date": r["as_of"].isoformat(), "note": r["note"], "recorded_by": r["recorded_by"],
            "date": r["recorded_at"].date().isoformat()}


def summarise(con, *, team_id: str | None = None, as_of: date | None = None,
              before: date | None = None) -> list[dict]:
    """Per published list (team and as-of): people listed, decisions recorded, share discussed, by kind.

    A person counts as discussed when the team's latest decision for them on that list is anything
    but "deferred". Only the most recently published version of each team's list counts.
    """
    conds, params = [], []
    for cond, value in (("team_id = ?", team_id), ("as_of = ?", as_of), ("as_of < ?", before)):
        if value is not None:
            conds.append(cond)
            params.append(value)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    kinds = ", ".join(f"count(*) FILTER (WHERE d.outcome = '{o}') AS {o}" for o in OUTCOMES)
    df = con.sql(f"""
        WITH versions AS (
            SELECT team_id, as_of, model_name, model_version, max(published_at) AS published_at
            FROM huddle_lists {where} GROUP BY team_id, as_of, model_name, model_version
            QUALIFY row_number() OVER (PARTITION BY team_id, as_of
                                       ORDER BY max(published_at) DESC, model_version DESC) = 1),
        listed AS (
            SELECT h.team_id, h.as_of, h.person_id FROM huddle_lists h
            JOIN versions USING (team_id, as_of, model_name, model_version)
            WHERE h.section = 'capacity'),  -- what the team could discuss: the recent-crisis part is apart
        decided AS (
            SELECT team_id, as_of, person_id, outcome FROM huddle_outcomes
            QUALIFY row_number() OVER (PARTITION BY team_id, as_of, person_id
                                       ORDER BY recorded_at DESC, outcome_id DESC) = 1)
        SELECT l.team_id, l.as_of, count(*) AS listed, count(d.outcome) AS recorded,
               count(d.outcome) FILTER (WHERE d.outcome <> 'deferred') AS discussed, {kinds}
        FROM listed l LEFT JOIN decided d USING (team_id, as_of, person_id)
        GROUP BY ALL ORDER BY l.team_id, l.as_of
    """, params=params).pl()
    out = []
    for r in df.iter_rows(named=True):  # one row per team and week
        by_kind = {o: r[o] for o in OUTCOMES if r[o]}
        out.append({"team_id": r["team_id"], "as_of": r["as_of"].isoformat(), "listed": r["listed"],
                    "recorded": r["recorded"], "discussed": r["discussed"],
                    "share_discussed": round(r["discussed"] / r["listed"], 3) if r["listed"] else None,
                    "by_kind": by_kind})
    return out


def summary_sentence(s: dict) -> str:
    """'14 of 20 people discussed; outreach agreed 3, referred on 2, deferred 1'."""
    text = f"{s['discussed']} of {s['listed']} people discussed"
    if s["by_kind"]:
        text += "; " + ", ".join(f"{OUTCOME_LABELS[k]} {n}" for k, n in s["by_kind"].items())
    return text
