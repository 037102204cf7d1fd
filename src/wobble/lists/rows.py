"""The rest of each list row: recent tags, the contact sparkline, data caveats, the previous list.

Each function reads the warehouse for the people in temp table `_listed_ids` (one row per listed
person) and returns plain values keyed by person (or, for the team's data gaps, by team).
"""

from __future__ import annotations

from datetime import date, timedelta
from functools import cache

import numpy as np

from wobble.core.vocab import TAG_LABELS, role_label
from wobble.features.feeds import behind_sentence, feed_months, feeds_behind, gap_sentence, quiet_spans
from wobble.models.cohort import SHORT_HISTORY


def recent_tags(con, as_of: date) -> dict[str, list[dict]]:
    df = con.sql("""
        SELECT person_id, tag, polarity, author_role, recorded_at::DATE AS day
        FROM tags t WHERE recorded_at < ? AND recorded_at >= ? - INTERVAL 90 DAY
          AND person_id IN (SELECT person_id FROM _listed_ids)
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY recorded_at DESC, tag_id) <= 6
        ORDER BY person_id, recorded_at DESC, tag_id
    """, params=[as_of, as_of]).pl()
    out: dict[str, list[dict]] = {}
    for r in df.iter_rows(named=True):  # at most six per listed person
        out.setdefault(r["person_id"], []).append({
            "tag": TAG_LABELS.get(r["tag"], r["tag"]), "polarity": r["polarity"],
            "role": role_label(r["author_role"]),
            "date": r["day"].isoformat(),
        })
    return out


SPARK_MONTHS = 12
SPARK_DAYS = 365  # the window of the reasons' "in the last year" (`contacts_365d`), so the totals agree


def _months_back(d: date, k: int) -> date:
    """The same day k months before d (the month's last day where that month is shorter)."""
    y, m = divmod(d.year * 12 + d.month - 1 - k, 12)
    m += 1
    last = (date(y + m // 12, m % 12 + 1, 1) - timedelta(days=1)).day
    return date(y, m, min(d.day, last))


@cache  # the same for every person on a date's lists, and asked for per person
def spark_bounds(as_of: date) -> tuple[date, ...]:
    """The 13 edges of the sparkline's 12 months, each [edge i, edge i+1): months ending on the as-of date's
    day, the first clipped to start 365 days back, so the 12 sum to the reasons' count for the last year.
    E.g. as of 23 Nov 2026: 23 Nov 2025, 23 Dec 2025, …, 23 Nov 2026."""
    edges = [_months_back(as_of, SPARK_MONTHS - i) for i in range(SPARK_MONTHS + 1)]
    edges[0] = max(edges[0], as_of - timedelta(days=SPARK_DAYS))
    return tuple(edges)


def sparklines(con, as_of: date) -> dict[str, list[int]]:
    """Per listed person, attended contacts known before the as-of date in each of the 12 months before it."""
    edges = spark_bounds(as_of)
    df = con.sql("""
        SELECT person_id, occurred_at::DATE AS day, count(*) AS n
        FROM contacts WHERE recorded_at < ? AND occurred_at >= ? AND occurred_at < ? AND status = 'attended'
          AND person_id IN (SELECT person_id FROM _listed_ids)
        GROUP BY ALL
    """, params=[as_of, edges[0], as_of]).pl()
    month = np.searchsorted(np.array(edges[1:-1], dtype="datetime64[D]"),
                            df["day"].to_numpy().astype("datetime64[D]"), side="right")
    out: dict[str, list[int]] = {}
    for pid, k, n in zip(df["person_id"].to_list(), month.tolist(), df["n"].to_list(), strict=True):
        out.setdefault(pid, [0] * SPARK_MONTHS)[k] += int(n)
    return out


def person_caveats(con, as_of: date) -> dict[str, list[str]]:
    df = con.sql("""
        SELECT f.person_id, f.days_registered, f.days_since_contact, p.practice_id, p.team_assigned_by
        FROM feature_snapshots f JOIN persons p USING (person_id)
        WHERE f.as_of = ? AND f.person_id IN (SELECT person_id FROM _listed_ids)
    """, params=[as_of]).pl()
    out: dict[str, list[str]] = {}
    for r in df.iter_rows(named=True):  # one per listed person
        notes = []
        if r["days_registered"] is not None and r["days_registered"] < 182:
            weeks = max(1, r["days_registered"] // 7)
            notes.append(f"registered {weeks} week{'s' if weeks > 1 else ''} ago: little history")
        if r["days_since_contact"] is None:
            notes.append("no contacts on record: the data may not see this person at all")
        if r["team_assigned_by"]:
            notes.append(team_caveat(r["practice_id"], r["team_assigned_by"]))
        out[r["person_id"]] = notes
    return out


def team_caveat(practice_id: str | None, assigned_by: str) -> str:
    """Why a person is on this team's list although no practice put them there."""
    why = "no GP practice on record" if practice_id is None else "their GP practice is in no team"
    how = "placed by where they live" if assigned_by == "lsoa" else "listed with the unattached team"
    return f"{why}: {how}; check who should follow them up"


def team_caveats(con, as_of: date, unattached: str | None = None, owner: str | None = None) -> dict[str, list[str]]:
    """Per team, a sentence for each run of months in the last year when one of its usual data feeds
    went quiet, and for each feed whose records end days before `as_of` (by the rules of
    `wobble.features.feeds`); for the unattached team, who its list goes to."""
    out: dict[str, list[str]] = {}
    for span in quiet_spans(feed_months(con, as_of)):
        out.setdefault(span["team_id"], []).append(
            gap_sentence(span) + ": those contacts may be missing from the reasons")
    for feed in feeds_behind(con, as_of):
        out.setdefault(feed["team_id"], []).append(behind_sentence(feed, as_of))
    if unattached:
        goes_to = f"this list goes to {owner}" if owner else "no owner is configured ([teams] unattached_owner)"
        out.setdefault(unattached, []).insert(
            0, f"people with no practice or team found (homeless people among them): {goes_to}")
    return out


def unranked_caveats(con, spec, version: str, as_of: date) -> dict[str, list[str]]:
    """Per team, a sentence on the people scored but kept off the model's (`spec`) ranking because
    they registered too recently for it to know their usual level (`scores.cohort_rule`)."""
    days = spec.cohort.min_registered_days or 0
    span = "a year" if days == 365 else f"{days // 365} years" if days % 365 == 0 else f"{days} days"
    rows = con.execute("""
        SELECT team_id, count(*) FROM scores
        WHERE model_name = ? AND model_version = ? AND as_of = ? AND cohort_rule = ?
        GROUP BY team_id ORDER BY team_id""", [spec.name, str(version), as_of, SHORT_HISTORY]).fetchall()
    return {team: [f"{n:,} {'person' if n == 1 else 'people'} registered less than {span} ago "
                   f"{'is' if n == 1 else 'are'} not ranked: without {span} of history the model cannot "
                   "tell a rise from their usual level. Who among them does the team know?"]
            for team, n in rows}


def previous_risks(con, model: str, as_of: date) -> dict[str, float]:
    df = con.sql("""
        SELECT person_id, risk FROM huddle_lists
        WHERE model_name = ? AND section = 'capacity'
          AND as_of = (SELECT max(as_of) FROM huddle_lists WHERE model_name = ? AND as_of < ?)
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY published_at DESC, model_version DESC) = 1
    """, params=[model, model, as_of]).pl()
    return dict(zip(df["person_id"].to_list(), df["risk"].to_list(), strict=True))


