"""The data behind a model, as its card describes it: sources, dates, counts, gaps, who is thin.

Reads `load_ledger`, `quarantine`, `contacts`, `tags` and `persons`;
returns plain, JSON-ready data (no person-level rows). Counts of people below the spec's
small-number threshold are suppressed (None).

- sources: per configured source, files and rows in / loaded / quarantined / duplicate;
- systems: per source system, records and the dates they span, and how late records arrive;
- completeness: per team and source system, records per month over the window the examples look
  at, and the months a feed went quiet, by the one rule of `wobble.features.feeds`;
- representation: per fairness group at the last test date, its share of the cohort, the
  share of its people with no record at all in the year before, and the median records each.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from wobble.core.sql import date_literal
from wobble.features.feeds import RULE, feed_months, gap_sentence, months_between, quiet_spans
from wobble.models.cohort import attributes_sql, team_cohorts_sql
from wobble.models.spec import ModelSpec, TimeSplit


def _quantile(q: float) -> str:
    """SQL over `_delays` rows (one per system and delay in hours: `v`, `n` records, `cum` records up
    to it, `total` for the system): the delay's quantile q, interpolated as `quantile_cont` does."""
    h = f"((total - 1) * {q!r})"
    lo, hi = (f"min(v) FILTER (WHERE cum > {f}({h}))" for f in ("floor", "ceil"))
    return f"({lo} + (any_value({h}) - floor(any_value({h}))) * ({hi} - {lo}))"


# Per source system: records, first and last, and the median and 90th centile of the delay from
# happening to being recorded. The centiles come from a count per delay in whole hours, exactly as
# median() and quantile_cont() would give them, without holding every record's delay (at
# 5,000,000 people, 331 million, which ran DuckDB out of memory).
SYSTEMS_SQL = f"""
    WITH d AS (
        SELECT source_system, date_diff('hour', occurred_at, recorded_at) AS v, count(*) AS n,
               min(occurred_at) AS first, max(occurred_at) AS last
        FROM contacts GROUP BY ALL
    ),
    _delays AS (
        SELECT *, sum(n) OVER (PARTITION BY source_system ORDER BY v ROWS UNBOUNDED PRECEDING) AS cum,
               sum(n) OVER (PARTITION BY source_system) AS total
        FROM d
    )
    SELECT source_system AS system, sum(n)::BIGINT AS records, min(first)::DATE::VARCHAR AS first,
           max(last)::DATE::VARCHAR AS last, round({_quantile(0.5)} / 24.0, 1) AS median_delay_days,
           round({_quantile(0.9)} / 24.0, 1) AS p90_delay_days
    FROM _delays GROUP BY source_system ORDER BY source_system"""


def summarise(con, spec: ModelSpec, split: TimeSplit, train_df: pl.DataFrame, test_df: pl.DataFrame) -> dict:
    """Everything the card's Data section shows."""
    threshold = spec.small_number_threshold
    return {
        "sources": _rows(con, """
            SELECT source, count(*) AS files, sum(rows_in) AS rows_in, sum(rows_loaded) AS rows_loaded,
                   sum(rows_quarantined) AS rows_quarantined, sum(rows_duplicate) AS rows_duplicate,
                   max(loaded_at)::VARCHAR AS last_loaded
            FROM load_ledger GROUP BY source ORDER BY source"""),
        "quarantine_reasons": _rows(con, """
            SELECT reason, count(*) AS rows FROM quarantine GROUP BY reason ORDER BY rows DESC, reason LIMIT 12"""),
        "systems": _rows(con, SYSTEMS_SQL),
        "tags": _rows(con, """
            SELECT source_system AS system, count(*) AS records, min(recorded_at)::DATE::VARCHAR AS first,
                   max(recorded_at)::DATE::VARCHAR AS last
            FROM tags GROUP BY source_system ORDER BY source_system"""),
        "persons": _rows(con, """
            SELECT count(*) AS persons, count(*) FILTER (WHERE opted_out) AS opted_out,
                   count(*) FILTER (WHERE team_id IS NULL) AS no_team,
                   count(*) FILTER (WHERE died_on IS NOT NULL) AS died
            FROM persons""")[0],
        "examples": {
            "train": {"rows": train_df.height, "people": train_df["person_id"].n_unique(),
                      "outcomes": int(train_df["label"].sum()),
                      "first": split.train[0].isoformat(), "last": split.train[-1].isoformat()},
            "test": {"rows": test_df.height, "people": test_df["person_id"].n_unique(),
                     "outcomes": int(test_df["label"].sum()),
                     "first": split.test[0].isoformat(), "last": split.test[-1].isoformat()},
        },
        "completeness": _completeness(con, split),
        "representation": _representation(con, spec, split, threshold),
    }


def _rows(con, sql: str) -> list[dict]:
    return con.sql(sql).pl().to_dicts()


def _completeness(con, split: TimeSplit) -> dict:
    """Records per team, source system and month over the window the model's examples look at, and
    the runs of months in which a usual feed went quiet."""
    start = (split.train[0] - timedelta(days=365)).replace(day=1)
    frame = feed_months(con, split.data_end, months_between(start, split.data_end))
    if frame.height == 0:
        return {"teams": [], "systems": [], "usual": [], "gaps": [], "from": start.isoformat(),
                "to": split.data_end.isoformat()}
    usual = (frame.group_by("team_id", "source_system").agg(pl.col("usual").first())
             .rename({"team_id": "team", "source_system": "system"}).sort("team", "system"))
    gaps = frame.filter(pl.col("quiet")).sort("team_id", "source_system", "month")
    return {
        "from": start.isoformat(), "to": split.data_end.isoformat(),
        "teams": sorted(usual["team"].unique().to_list()),
        "systems": sorted(usual["system"].unique().to_list()),
        "usual": usual.with_columns(pl.col("usual").round(0)).to_dicts(),
        "gaps": [{"team": g["team_id"], "system": g["source_system"], "month": g["month"].isoformat()[:7],
                  "records": g["records"], "usual": g["usual"]} for g in gaps.to_dicts()],
        "rule": RULE,
        "spans": [{**s, "text": gap_sentence(s), "first": s["first"].isoformat()[:7],
                   "last": s["last"].isoformat()[:7]} for s in quiet_spans(frame)],
    }


def _representation(con, spec: ModelSpec, split: TimeSplit, threshold: int) -> dict:
    """Per fairness group in the cohort at the last test date: how much the records can see."""
    as_of = split.test[-1]
    attrs = {a: e for a, e in attributes_sql(date_literal(as_of)).items() if a in spec.fairness_groups}
    base = f"""
        WITH k AS (
            SELECT c.person_id, {', '.join(f'{e} AS {a}' for a, e in attrs.items())}
            FROM ({team_cohorts_sql(spec, [as_of])}) c JOIN persons p USING (person_id)
        ),
        n AS (
            SELECT person_id, count(*) AS records FROM contacts
            WHERE recorded_at < {date_literal(as_of)} AND occurred_at >= {date_literal(as_of)} - INTERVAL 365 DAY
              AND occurred_at < {date_literal(as_of)} AND person_id IN (SELECT person_id FROM k)
            GROUP BY person_id
        ),
        j AS (SELECT k.*, coalesce(n.records, 0) AS records FROM k LEFT JOIN n USING (person_id))
    """
    parts = " UNION ALL ".join(
        f"SELECT '{a}' AS attribute, {a}::VARCHAR AS grp, count(*) AS people, "
        f"avg((records = 0)::INTEGER) AS share_no_records, median(records) AS median_records FROM j GROUP BY {a}"
        for a in attrs)
    rows = con.sql(base + parts + " ORDER BY attribute, grp").pl()
    total = con.sql(base + "SELECT count(*) AS people, avg((records = 0)::INTEGER) AS share_no_records, "
                           "median(records) AS median_records FROM j").pl().to_dicts()[0]
    groups = []
    for r in rows.to_dicts():
        shown = r["people"] >= threshold
        groups.append({
            "attribute": r["attribute"], "group": r["grp"], "people": r["people"] if shown else None,
            "share_of_cohort": r["people"] / total["people"] if shown and total["people"] else None,
            "share_no_records": r["share_no_records"] if shown else None,
            "median_records": r["median_records"] if shown else None,
        })
    return {"as_of": as_of.isoformat(), "overall": total, "groups": groups}
