"""Huddle outcomes and relational impact: what teams decided about listed people, and what followed.

The share of listed people discussed, decisions by kind, and crises among people a huddle marked
"not a concern"; and discussed people against comparable listed people not yet discussed, 90 days
before and after the list (an observational comparison, reported with its counts).
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from wobble.core.sql import in_list
from wobble.core.vocab import CRISIS_SERVICES
from wobble.ops.monitor.findings import Finding, pct

OUTCOME_WEEKS = 26  # huddle outcomes are summarised over lists from the last half year
IMPACT_DAYS = 90
DISCUSSED_SHARE = 0.5  # fewer of the listed people discussed than this: watch
# Outcome kinds are compared after normalising ("Not a concern" → not_a_concern).
OUTCOME_KIND = "lower(regexp_replace(trim(outcome), '[^A-Za-z]+', '_', 'g'))"
NOT_A_CONCERN = "not_a_concern"
NOT_DISCUSSED = "deferred"


def _outcomes(con, model: str, as_of: date, horizon: int) -> dict:
    since = as_of - timedelta(weeks=OUTCOME_WEEKS)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _decided AS
        SELECT l.team_id, l.as_of, l.person_id, o.kind, o.recorded_at
        FROM (SELECT DISTINCT team_id, as_of, person_id FROM huddle_lists
              WHERE model_name = ? AND section = 'capacity' AND as_of > ? AND as_of <= ?) l
        LEFT JOIN (SELECT team_id, as_of, person_id, {OUTCOME_KIND} AS kind, recorded_at FROM huddle_outcomes
                   QUALIFY row_number() OVER (PARTITION BY team_id, as_of, person_id
                                              ORDER BY recorded_at DESC, outcome_id DESC) = 1) o
          USING (team_id, as_of, person_id)""", [model, since, as_of])
    per_list = con.sql(f"""
        SELECT as_of, count(DISTINCT team_id) AS teams, count(*) AS listed, count(kind) AS recorded,
               count(*) FILTER (WHERE kind IS NOT NULL AND kind <> '{NOT_DISCUSSED}') AS discussed
        FROM _decided GROUP BY as_of ORDER BY as_of""").pl()
    per_team = con.sql(f"""
        SELECT team_id, count(*) AS listed,
               count(*) FILTER (WHERE kind IS NOT NULL AND kind <> '{NOT_DISCUSSED}') AS discussed
        FROM _decided WHERE as_of < ? GROUP BY team_id ORDER BY team_id""", params=[as_of]).pl()
    kinds = con.sql("SELECT kind, count(*) AS n FROM _decided WHERE kind IS NOT NULL GROUP BY kind "
                    "ORDER BY n DESC, kind").pl()
    # crises (recorded before the as-of date) within the horizon of a "not a concern" decision
    nac = con.sql(f"""
        SELECT d.team_id, d.as_of, d.person_id, count(c.person_id) AS crises FROM _decided d
        LEFT JOIN contacts c ON c.person_id = d.person_id AND c.service IN {in_list(CRISIS_SERVICES)}
         AND c.occurred_at >= d.as_of AND c.occurred_at < d.as_of + INTERVAL {horizon} DAY AND c.recorded_at < ?
        WHERE d.kind = '{NOT_A_CONCERN}' GROUP BY ALL""", params=[as_of]).pl()
    with_crisis = nac.filter(pl.col("crises") > 0)
    nac_teams = with_crisis.group_by("team_id").agg(pl.col("person_id").n_unique().alias("people")).sort("team_id")
    past = per_list.filter(pl.col("as_of") < as_of)
    return {
        "since": since.isoformat(), "lists": per_list.to_dicts(), "teams": per_team.to_dicts(),
        "kinds": kinds.to_dicts(), "recorded": int(per_list["recorded"].sum()),
        "listed_past": int(past["listed"].sum()), "discussed_past": int(past["discussed"].sum()),
        "recorded_past": int(past["recorded"].sum()),
        "not_a_concern": nac.height, "not_a_concern_with_crisis": with_crisis.height,
        "not_a_concern_crises": int(nac["crises"].sum()), "not_a_concern_teams": nac_teams.to_dicts(),
    }


def _outcome_findings(o: dict, horizon: int) -> list[Finding]:
    out = []
    if o["not_a_concern_with_crisis"]:
        teams = ", ".join(f"{t['team_id']}: {t['people']}" for t in o["not_a_concern_teams"])
        out.append(Finding(
            "watch", "outcomes",
            f"{o['not_a_concern_with_crisis']} of {o['not_a_concern']} people a huddle marked 'not a concern' "
            f"had a crisis within {horizon} days ({teams}).",
            "Worth a look back at the next huddle: was there a sign the data or the team could have seen? "
            "This is for learning, not blame; the data sees only part of a person's life."))
    if o["listed_past"] and o["recorded_past"] == 0:
        out.append(Finding(
            "watch", "outcomes",
            f"No huddle outcomes are recorded for the {o['listed_past']:,} people listed since {o['since']}.",
            "Without outcomes nobody can tell whether the lists help; ask the teams whether they record "
            "decisions (review page or `wobble outcome record`)."))
    elif o["listed_past"] and o["discussed_past"] / o["listed_past"] < DISCUSSED_SHARE:
        out.append(Finding(
            "watch", "outcomes",
            f"Huddles discussed {o['discussed_past']:,} of {o['listed_past']:,} listed people "
            f"({pct(o['discussed_past'] / o['listed_past'])}) since {o['since']}.",
            "Lists longer than a huddle can discuss hide the people at the bottom; ask the teams whether "
            "their capacity in wobble.toml ([teams]) is right."))
    return out


# --- relational impact ------------------------------------------------------------------------


def _impact(con, model: str, as_of: date, small: int) -> dict:
    """Discussed vs listed-not-yet-discussed people, 90 days before and after their first listing."""
    d = IMPACT_DAYS
    rows = con.sql(f"""
        WITH listed AS (
            SELECT DISTINCT team_id, as_of, person_id, risk FROM huddle_lists
            WHERE model_name = ? AND section = 'capacity' AND as_of + INTERVAL {d} DAY <= ?),
        decided AS (
            SELECT DISTINCT team_id, as_of, person_id FROM huddle_outcomes
            WHERE {OUTCOME_KIND} <> '{NOT_DISCUSSED}'),
        grp AS (
            SELECT 'discussed' AS grp, l.person_id, min(l.as_of) AS start, arg_min(l.risk, l.as_of) AS risk
            FROM listed l JOIN decided USING (team_id, as_of, person_id) GROUP BY l.person_id
            UNION ALL
            SELECT 'not yet discussed', person_id, min(as_of), arg_min(risk, as_of) FROM listed
            WHERE person_id NOT IN (SELECT person_id FROM decided) GROUP BY person_id),
        win AS (
            SELECT g.grp, g.person_id, c.occurred_at < g.start AS before, c.service, c.professional_id, c.status
            FROM grp g JOIN contacts c ON c.person_id = g.person_id AND c.recorded_at < ?
             AND c.occurred_at >= g.start - INTERVAL {d} DAY AND c.occurred_at < g.start + INTERVAL {d} DAY),
        crises AS (
            SELECT grp, person_id, before, count(*) AS n FROM win
            WHERE service IN {in_list(CRISIS_SERVICES)} GROUP BY ALL),
        seen AS (
            SELECT grp, person_id, before, professional_id, count(*) AS n FROM win
            WHERE professional_id IS NOT NULL AND status = 'attended' GROUP BY ALL),
        upc AS (  -- usual provider of care: share of attended contacts with the most-seen professional
            SELECT grp, person_id, before, max(n)::DOUBLE / sum(n) AS upc FROM seen
            GROUP BY ALL HAVING sum(n) >= 2),
        strengths AS (
            SELECT g.grp, g.person_id, t.recorded_at < g.start AS before, count(*) AS n
            FROM grp g JOIN tags t ON t.person_id = g.person_id AND t.polarity = 'strength'
             AND t.recorded_at < ? AND t.recorded_at >= g.start - INTERVAL {d} DAY
             AND t.recorded_at < g.start + INTERVAL {d} DAY
            GROUP BY ALL),
        sides AS (SELECT grp, person_id, risk, b AS before FROM grp CROSS JOIN (VALUES (true), (false)) v(b))
        SELECT s.grp, s.before, count(*) AS people, avg(s.risk) AS risk,
               avg(coalesce(c.n, 0)) AS crises, avg((coalesce(c.n, 0) > 0)::DOUBLE) AS with_crisis,
               avg(coalesce(t.n, 0)) AS strengths, avg(u.upc) AS upc, count(u.upc) AS with_upc
        FROM sides s LEFT JOIN crises c USING (grp, person_id, before)
        LEFT JOIN strengths t USING (grp, person_id, before) LEFT JOIN upc u USING (grp, person_id, before)
        GROUP BY ALL ORDER BY s.grp, s.before DESC
    """, params=[model, as_of, as_of, as_of]).pl()
    groups = {}
    for (grp,), part in rows.group_by(["grp"], maintain_order=True):
        before = part.filter(pl.col("before")).to_dicts()[0]
        after = part.filter(~pl.col("before")).to_dicts()[0]
        groups[grp] = {"people": before["people"], "risk": before["risk"], "suppressed": before["people"] < small,
                       "before": before, "after": after}
    return {"days": d, "groups": groups, "small_number_threshold": small,
            "comparable": all(g in groups and not groups[g]["suppressed"] for g in ("discussed", "not yet discussed"))}


