"""Huddle outcomes: what each team decided about the people on its list, reported back.

Reads `huddle_lists` and `huddle_outcomes` (one row per recorded decision: the team, the as-of of
the list it belongs to, the person, the outcome, an optional short note, who recorded it and when).
Decisions are recorded in the review service's own database (`wobble.review.records`) and come
back to `huddle_outcomes` at the next publish. `summarise` reports decisions back per list: how
many listed people were discussed and the decisions by kind. `check_outcome` is the one check of
what may be recorded, for the page and the command line alike.

A decision can only be recorded for someone on that team's list. A note is refused when it
holds anything that looks like an NHS number or a phone number: free text stays out of the
warehouse except for these short, checked notes.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime

from wobble.core.errors import WobbleError
from wobble.core.vocab import OUTCOME_LABELS, OUTCOMES
from wobble.ingest.identifiers import is_valid_nhs_number

NOTE_MAX_CHARS = 300
NAME_MAX_CHARS = 80
# A digit, then digits with at most two characters that are neither letters nor digits between them,
# whatever they are: "0161 496 0000", "(0161) 496-0000", "+44 7700 900123", "943/476/5919",
# "943_476_5919", "9 4 3 4 7 6 5 9 1 9". Dates ("12/03/2026", "12.03.2026") stop at eight digits.
_NUMBER_RUN = re.compile(r"\d(?:[\W_]{0,2}\d)+")
# Laid out 3-3-4 like an NHS number, with up to three separator characters between groups ("943 / 476 / 5919").
_NHS_LAYOUT = re.compile(r"(?<!\d)\d{3}[\W_]{0,3}\d{3}[\W_]{0,3}\d{4}(?!\d)")


class OutcomeRefused(WobbleError):
    """An outcome that cannot be recorded as given; the message says what to change."""


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

    Any run of nine or more digits (up to two separators of any kind between them) is taken as one:
    better to ask someone to rephrase than to store a number that identifies a person.
    """
    for m in _NUMBER_RUN.finditer(text):
        run = m.group()
        digits = re.sub(r"\D", "", run)
        if len(digits) < 9:
            continue
        if len(digits) == 10 and (is_valid_nhs_number(digits) or _NHS_LAYOUT.fullmatch(run)):
            return "an NHS number"
        return "a phone number"
    return "an NHS number" if _NHS_LAYOUT.search(text) else None


def _plain(label: str, text: str | None) -> str:
    """Line breaks and tabs become spaces; any other control or format character is refused (a NUL,
    a right-to-left override, a zero-width space: none belongs in a short note)."""
    text = re.sub(r"[\r\n\t]+", " ", text or "")
    bad = next((c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")), None)
    if bad is not None:
        raise OutcomeRefused(f"the {label} holds a control character (U+{ord(bad):04X}); type it again as plain text")
    return text.strip()


def check_outcome(outcome: str, note: str | None, recorded_by: str) -> tuple[str, str | None, str]:
    """The cleaned (outcome, note, recorded_by), or OutcomeRefused saying what to change."""
    if outcome not in OUTCOMES:
        raise OutcomeRefused(f"unknown outcome {str(outcome)[:40]!r}; choose one of: {', '.join(OUTCOMES)}")
    note = _plain("note", note) or None
    recorded_by = _plain("name", recorded_by)
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


def require_list(con, *, team_id: str | None = None, as_of: date | None = None) -> None:
    """Refuse a team or as-of date no published list has (a mistyped one), naming the teams that
    have lists and the latest date; with neither given, there is nothing to refuse."""
    if not (team_id or as_of):
        return
    lists = con.execute("SELECT DISTINCT team_id, as_of FROM huddle_lists ORDER BY ALL").fetchall()
    if any((team_id is None or t == team_id) and (as_of is None or d == as_of) for t, d in lists):
        return
    teams = sorted({t for t, _ in lists})
    which = " ".join(([f"for team {team_id}"] if team_id else []) + ([f"of {as_of}"] if as_of else []))
    raise WobbleError(f"no published list {which}: lists are published for {', '.join(teams[:20]) or 'no team yet'}"
                      f"{', the latest of ' + str(max(d for _, d in lists)) if lists else ''}")


def summary_sentence(s: dict) -> str:
    """'14 of 20 people discussed; outreach agreed 3, referred on 2, deferred 1'."""
    text = f"{s['discussed']} of {s['listed']} people discussed"
    if s["by_kind"]:
        text += "; " + ", ".join(f"{OUTCOME_LABELS[k]} {n}" for k, n in s["by_kind"].items())
    return text
