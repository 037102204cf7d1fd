"""Data feeds that went quiet: the one rule every stage uses to say "records may be missing here".

A source system *usually* sends a team's records when its median month, over the months looked
at, holds at least `MIN_USUAL` records. A month is *quiet* for that team and system when it holds
fewer than `QUIET_SHARE` (10%) of the usual month's records, pro rata for a month still under way,
which is judged once `MIN_PART_DAYS` of it have passed; the months before a system's first record
(a feed that began within the months looked at) are not judged, and the month it began counts pro
rata from its first record. Records are contacts (by the day they
happened) and tags (by the day they were recorded), counted only if known before the as-of date,
so the rule is point-in-time like every feature. The rule compares a feed with its own usual
level, not with other teams', so a feed that stops for every team at once is quiet for each.

Worked example: at as-of Monday 2026-11-23, month 0 is November 2026 (22 of 30 days so far),
month 1 October, … month 12 November 2025. Team T02's social care records run at a median of 400
a month over the complete months; August and September hold none, so both are quiet, and November
(22/30 × 400 ≈ 293 expected) is not quiet with 280.

Who reads it: the `team_feed_gap_*` features (through `team_quiet_sql`), each list's data caveats,
the model card's data section, the monitor's drift judgement and the data-quality report. Each
looks over the months it is about: a list and the monitor at the last 12 months and the month under
way; the card over its training window; the data-quality report over everything loaded.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from wobble.core.sql import date_literal, dates
from wobble.core.vocab import system_label
from wobble.core.warehouse import scalar
from wobble.features.language import TIME_COLUMN

QUIET_SHARE = 0.1
MIN_USUAL = 10
MONTHS = 12  # a point-in-time check looks at this many months before the month under way
MIN_PART_DAYS = 14
RULE = (f"a month in which a source that usually sends a team's records (a median month of at least "
        f"{MIN_USUAL}) sent fewer than {QUIET_SHARE:.0%} of its usual month, pro rata for a month under way")


def _month_start(d: date) -> date:
    return d.replace(day=1)


def months_between(first: date, as_of: date) -> int:
    """How many months before the as-of date's month 0 reach back to `first`'s month."""
    last = _month_start(as_of - timedelta(days=1))
    return max(0, (last.year - first.year) * 12 + last.month - first.month)


def feed_months_sql(as_of_list: str, months: int = MONTHS) -> str:
    """Query: one row per team, source system, as-of date and month (0 = the month of the day before
    the as-of date, then back to `months`): `month` (its first day), `records` known before the as-of
    date, `covered` (the share of the month before the as-of date and after the system's first
    record), `usual` (the pair's median complete month), `judged` and `quiet`. Teams and systems
    with no record in those months are left out."""

    def known(table: str) -> str:
        # The day a record was known only matters against the as-of dates: every day before the
        # first of them is one day here, so a year of records groups into far fewer rows (at
        # 5,000,000 people, 1.6 million rather than 11 million; the query took a third less).
        return f"greatest({table}.recorded_at::DATE, list_min({as_of_list}) - 1)"

    return f"""
        WITH grid_as_of AS (
            SELECT as_of, date_trunc('month', as_of - INTERVAL 1 DAY)::DATE AS month0
            FROM (SELECT unnest({as_of_list}) AS as_of)),
        month_starts AS (
            SELECT g.as_of, k AS month_offset, (g.month0 - to_months(k))::DATE AS month
            FROM grid_as_of g CROSS JOIN (SELECT unnest(range({months + 1})) AS k)),
        months AS (
            SELECT as_of, month_offset, month,
                   date_diff('day', month, (month + INTERVAL 1 MONTH)::DATE) AS days_in_month,
                   least(date_diff('day', month, as_of), date_diff('day', month, (month + INTERVAL 1 MONTH)::DATE))
                       AS days_before
            FROM month_starts),
        records AS (
            SELECT p.team_id, c.source_system, c.occurred_at::DATE AS day, {known('c')} AS known_day,
                   count(*) AS n
            FROM contacts c JOIN persons p USING (person_id)
            WHERE p.team_id IS NOT NULL
              AND c.occurred_at >= (SELECT min(month) FROM months) AND c.occurred_at < list_max({as_of_list})
            GROUP BY ALL
            UNION ALL
            SELECT p.team_id, t.source_system, t.recorded_at::DATE, {known('t')}, count(*)
            FROM tags t JOIN persons p USING (person_id)
            WHERE p.team_id IS NOT NULL
              AND t.recorded_at >= (SELECT min(month) FROM months) AND t.recorded_at < list_max({as_of_list})
            GROUP BY ALL),
        counted AS (
            SELECT r.team_id, r.source_system, m.as_of, m.month_offset, sum(r.n) AS n, min(r.day) AS first_day
            FROM records r JOIN months m
              ON r.day >= m.month AND r.day < m.month + INTERVAL 1 MONTH
             AND r.day < m.as_of AND r.known_day < m.as_of
            GROUP BY ALL),
        feeds AS (  -- a system's first day on record here: before it, its feed had not begun
            SELECT source_system, as_of, min(first_day) AS first_day FROM counted GROUP BY ALL),
        pairs AS (SELECT DISTINCT team_id, source_system, as_of FROM counted),
        grid AS (
            SELECT p.team_id, p.source_system, m.as_of, m.month_offset, m.month,
                   coalesce(c.n, 0)::BIGINT AS records,
                   greatest(0, m.days_before - greatest(0, date_diff('day', m.month, f.first_day))) AS days_before,
                   m.days_in_month
            FROM pairs p JOIN months m USING (as_of) JOIN feeds f USING (source_system, as_of)
            LEFT JOIN counted c USING (team_id, source_system, as_of, month_offset)),
        usual AS (
            SELECT team_id, source_system, as_of, median(records) FILTER (WHERE days_before = days_in_month) AS usual
            FROM grid GROUP BY ALL)
        SELECT g.team_id, g.source_system, g.as_of, g.month_offset, g.month, g.records, g.covered,
               u.usual, g.days_before >= {MIN_PART_DAYS} AS judged,
               coalesce(u.usual >= {MIN_USUAL} AND g.days_before >= {MIN_PART_DAYS}
                        AND g.records < {QUIET_SHARE} * u.usual * g.covered, false) AS quiet
        FROM (SELECT *, days_before::DOUBLE / days_in_month AS covered FROM grid) g
        JOIN usual u USING (team_id, source_system, as_of)"""


def team_quiet_sql(as_of_list: str) -> str:
    """Query: (team_id, as_of, team_quiet_months): per team and as-of date, the months (0 = the one
    under way, as in `feed_months_sql`) in which one of its usual sources was quiet, in order."""
    return f"""
        SELECT team_id, as_of,
               list_sort(list_distinct(list(month_offset) FILTER (WHERE quiet))) AS team_quiet_months
        FROM ({feed_months_sql(as_of_list)})
        GROUP BY ALL"""


def feed_months(con, as_of: date, months: int = MONTHS) -> pl.DataFrame:
    """`feed_months_sql` at one as-of date, as a frame ordered by team, system and month."""
    return con.sql(feed_months_sql(dates([as_of]), months)
                   + " ORDER BY team_id, source_system, month").pl()


def quiet_spans(frame: pl.DataFrame) -> list[dict]:
    """The quiet months of a `feed_months` frame as runs of consecutive months: one dict per team,
    system and run (team_id, source_system, first, last: the first days of its first and last month)."""
    quiet = frame.filter(pl.col("quiet")).sort("team_id", "source_system", "month")
    out: list[dict] = []
    for r in quiet.iter_rows(named=True):
        prev = out[-1] if out else None
        if (prev and prev["team_id"] == r["team_id"] and prev["source_system"] == r["source_system"]
                and _next_month(prev["last"]) == r["month"]):
            prev["last"] = r["month"]
        else:
            out.append({"team_id": r["team_id"], "source_system": r["source_system"], "first": r["month"],
                        "last": r["month"]})
    return out


def _next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def span_text(first: date, last: date) -> str:
    """'August 2026 to September 2026', or 'August 2026'."""
    a, b = f"{first:%B %Y}", f"{last:%B %Y}"
    return a if a == b else f"{a} to {b}"


def gap_sentence(span: dict) -> str:
    """The caveat a list, a card or a report shows for one quiet run."""
    return (f"few or no {system_label(span['source_system'])} records for this team in "
            f"{span_text(span['first'], span['last'])}")


def feed_status(frame: pl.DataFrame) -> dict[str, str]:
    """Per team of a one-date `feed_months` frame: 'ongoing' when a usual source is quiet in the
    latest month judged, 'resumed' when one was quiet earlier and has come back, else 'none'."""
    judged = frame.filter(pl.col("judged"))
    newest = judged.group_by("team_id").agg(pl.col("month_offset").min().alias("newest"))
    status = (judged.join(newest, on="team_id")
              .group_by("team_id")
              .agg((pl.col("quiet") & (pl.col("month_offset") == pl.col("newest"))).any().alias("ongoing"),
                   pl.col("quiet").any().alias("any_quiet")))
    return {r["team_id"]: "ongoing" if r["ongoing"] else "resumed" if r["any_quiet"] else "none"
            for r in status.iter_rows(named=True)}


# A feed that ends early: its records stop some days before the as-of date, as when a system's
# extract lags or sends in batches. The monthly rule above cannot see it until a month is quiet.
BEHIND_WEEKS = 13  # the usual week: the median week (zeros included) of the weeks before the as-of date
MAX_QUIET_DAYS = 3  # a long weekend (Good Friday to Easter Sunday) may hold no record at all
MIN_MISSED = 10  # records the usual week would have given in the days without one
BEHIND_RULE = (f"a source whose last record for a team is more than {MAX_QUIET_DAYS} days before the as-of date, "
               f"in which its usual week (the median of the last {BEHIND_WEEKS}) would have given at least "
               f"{MIN_MISSED} records")


def feeds_behind_sql(as_of: date) -> str:
    """Query: one row per team and source system whose records end early at `as_of` (BEHIND_RULE):
    `last_day` (the last day with a record known before the as-of date: contacts by the day they
    happened, tags by the day they were recorded, as the features count them), `usual_week` and
    `days_without` (days before the as-of date since `last_day`)."""
    t = date_literal(as_of)
    since = f"{t} - {7 * BEHIND_WEEKS}"
    return f"""
        WITH records AS (
            SELECT p.team_id, c.source_system, c.occurred_at::DATE AS day
            FROM contacts c JOIN persons p USING (person_id)
            WHERE p.team_id IS NOT NULL AND c.occurred_at >= {since} AND c.occurred_at < {t}
              AND c.recorded_at < {t}
            UNION ALL
            SELECT p.team_id, g.source_system, g.recorded_at::DATE
            FROM tags g JOIN persons p USING (person_id)
            WHERE p.team_id IS NOT NULL AND g.recorded_at >= {since} AND g.recorded_at < {t}),
        weeks AS (
            SELECT team_id, source_system, ({t} - day - 1) // 7 AS week, count(*) AS n, max(day) AS last_day
            FROM records GROUP BY ALL),
        feeds AS (
            SELECT team_id, source_system, max(last_day) AS last_day,
                   -- weeks without a record are zeros in the median
                   list_median(list(n) || list_resize([]::BIGINT[], {BEHIND_WEEKS} - count(*), 0)) AS usual_week
            FROM weeks GROUP BY ALL)
        SELECT * FROM (SELECT *, {t} - last_day - 1 AS days_without FROM feeds)
        WHERE days_without > {MAX_QUIET_DAYS} AND usual_week * days_without / 7 >= {MIN_MISSED}
        ORDER BY team_id, source_system"""


def feeds_behind(con, as_of: date) -> list[dict]:
    """`feeds_behind_sql` at `as_of`, as dicts."""
    return con.sql(feeds_behind_sql(as_of)).pl().to_dicts()


def behind_sentence(feed: dict, as_of: date) -> str:
    """The caveat a list or a report shows for one feed that ends early."""
    return (f"{system_label(feed['source_system'])} records for this team end on {feed['last_day']:%-d %B %Y}, "
            f"with none in the {feed['days_without']} days before {as_of:%-d %B %Y} though they usually come "
            "every week: the latest may not have arrived yet, so a fall in them may not be real")


def data_start(con, source: str = "contacts") -> date | None:
    """The day `source`'s records begin in earnest (None: it holds none): the first record of the
    first month holding at least QUIET_SHARE of the median month's records, so a few stray old
    records (an appointment from 1998 in a GP extract) do not count as years of history.
    Contacts by the day they happened, tags by the day they were recorded."""
    t = TIME_COLUMN[source]
    return scalar(con, f"""
        WITH m AS (SELECT date_trunc('month', {t}) AS month, count(*) AS n, min({t})::DATE AS first
                   FROM {source} GROUP BY 1)
        SELECT min(first) FROM m WHERE n >= {QUIET_SHARE} * (SELECT median(n) FROM m)""")
