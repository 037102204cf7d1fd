"""A list's other part: "Recently in crisis — check a plan exists".

Early warning leaves people in crisis care off the part of the list limited by the team's capacity
(the huddle knows them already); this part makes sure the follow-up after a crisis is not lost
instead. It does not use the capacity and carries no risk: each row says what happened and when.

Who is on it, per team, at an as-of date: people of the model's ages in the team's cohort with a
crisis contact (A&E, ambulance, emergency admission, mental-health crisis) in the last
`recent_crisis_days` days, known before the as-of date; and, for up to `follow_up_days` after such a
contact, anyone this part listed before for whom the huddle has recorded no outcome since (on an
earlier list; "deferred" is not an outcome). Nobody on the capacity part is listed twice. Ordered
by the latest crisis, most recent first.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from wobble.core.render import day_text
from wobble.core.sql import age_band_sql, date_literal, in_list, literal
from wobble.core.vocab import CRISIS_SERVICES, SERVICE_LABELS, upper_first

SECTION = "recent_crisis"
EVENT = "what happened"  # the direction of a recently-in-crisis row's reasons: events, not evidence for or against
CAPACITY = "capacity"
MAX_EVENTS_NAMED = 3


def recent_crisis_sql(spec, as_of: date, model: str, exclude: str) -> str:
    """(team_id, person_id, age, age_band, rank, events, carried): the part's rows at `as_of`, one per
    person; `events` a list of (day, service) structs, latest first; `carried` the date of the list
    that first showed them here when they are kept only because no outcome was recorded yet.
    `exclude` names a table of person_id already on the capacity part."""
    s, c = spec.listing, spec.cohort
    d = date_literal(as_of)
    return f"""
        WITH x AS (
            SELECT person_id, occurred_at::DATE AS day, service FROM contacts
            WHERE service IN {in_list(CRISIS_SERVICES)} AND occurred_at < {d} AND recorded_at < {d}
              AND occurred_at >= {d} - INTERVAL {max(s.recent_crisis_days, s.follow_up_days)} DAY
        ),
        p AS (
            SELECT person_id, max(day) AS last_day,
                   list(struct_pack(day := day, service := service) ORDER BY day DESC, service) AS events
            FROM (SELECT DISTINCT * FROM x) GROUP BY person_id
        ),
        shown AS (
            SELECT team_id, person_id, min(as_of) AS first_shown FROM huddle_lists
            WHERE section = '{SECTION}' AND model_name = {literal(model)}
              AND as_of < {d} AND as_of >= {d} - INTERVAL {s.follow_up_days} DAY
            GROUP BY ALL
        ),
        decided AS (  -- an outcome on an earlier list ends the follow-up; "deferred" is not one
            SELECT team_id, person_id, max(as_of) AS last_decided FROM huddle_outcomes
            WHERE as_of < {d} AND outcome <> 'deferred' GROUP BY ALL),
        k AS (
            SELECT f.team_id, f.person_id, f.age, p.last_day, p.events,
                   CASE WHEN p.last_day < {d} - INTERVAL {s.recent_crisis_days} DAY THEN sh.first_shown END
                       AS carried
            FROM feature_snapshots f JOIN p USING (person_id)
            LEFT JOIN shown sh USING (team_id, person_id)
            LEFT JOIN decided o USING (team_id, person_id)
            WHERE f.as_of = {d} AND f.age BETWEEN {c.min_age} AND {c.max_age}
              AND f.person_id NOT IN (SELECT person_id FROM {exclude})
              AND (p.last_day >= {d} - INTERVAL {s.recent_crisis_days} DAY
                   OR (sh.first_shown IS NOT NULL AND p.last_day >= {d} - INTERVAL {s.follow_up_days} DAY
                       AND (o.last_decided IS NULL OR o.last_decided < sh.first_shown)))
        )
        SELECT team_id, person_id, age, {age_band_sql('age')} AS age_band,
               row_number() OVER (PARTITION BY team_id ORDER BY last_day DESC, person_id)::INTEGER AS rank,
               events, carried
        FROM k ORDER BY team_id, rank"""


def event_sentences(events: list[dict], carried: date | None) -> list[str]:
    """What happened, in words: 'A&E attendance on 19 Nov 2026', latest first, at most
    MAX_EVENTS_NAMED of them and how many more; and, when carried from an earlier list, that no
    outcome has been recorded since."""
    named = [f"{_one(e['service'])} on {day_text(e['day'], short=True)}" for e in events[:MAX_EVENTS_NAMED]]
    more = len(events) - len(named)
    if more:
        named.append(f"{more} more crisis contact{'s' if more > 1 else ''} in the weeks before")
    if carried is not None:
        named.append(f"on this part of the list since {day_text(carried, short=True)}; no outcome recorded yet")
    return named


def _one(service: str) -> str:
    """'A&E attendances' → 'A&E attendance': a service's label for one contact."""
    label = SERVICE_LABELS.get(service, service.replace("_", " "))
    words = label.split(" ")
    last = words[-1]
    words[-1] = last[:-1] if last.endswith("s") else last
    text = " ".join(words)
    return upper_first(text)


def recent_crisis(con, spec, as_of: date, model: str, exclude: str) -> pl.DataFrame:
    """The part's rows (see `recent_crisis_sql`), empty when the spec has no such part."""
    if spec.listing.recent_crisis_days == 0:
        return pl.DataFrame()
    return con.sql(recent_crisis_sql(spec, as_of, model, exclude)).pl()
