"""The data behind a model, as its card describes it: sources, dates, counts, gaps, who is thin.

Reads `load_ledger`, `quarantine`, `contacts`, `tags` and `persons`;
returns plain, JSON-ready data (no person-level rows). Counts of people below the spec's
small-number threshold are suppressed (None).

- sources: per configured source, files and rows in / loaded / quarantined / duplicate;
- systems: per source system, records and the dates they span, and how late records arrive;
- completeness: per team and source system, records per month against that pair's own usual
  month; months below half of usual are listed as gaps (a feed that stopped, or thinned);
- representation: per fairness group at the last test date, its share of the cohort, the
  share of its people with no record at all in the year before, and the median records each.
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from wobble.spec import ModelSpec, TimeSplit
from wobble.vocab import age_band_sql

GAP_SHARE = 0.5  # a month below half the usual count is a gap
GAP_MIN_USUAL = 20  # … when the usual month has at least this many records


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
        "systems": _rows(con, """
            SELECT source_system AS system, count(*) AS records, min(occurred_at)::DATE::VARCHAR AS first,
                   max(occurred_at)::DATE::VARCHAR AS last,
                   round(median(date_diff('hour', occurred_at, recorded_at)) / 24.0, 1) AS median_delay_days,
                   round(quantile_cont(date_diff('hour', occurred_at, recorded_at), 0.9) / 24.0, 1)
                       AS p90_delay_days
            FROM contacts GROUP BY source_system ORDER BY source_system"""),
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
    """Records per team, source system and month over the window the model's examples look at."""
    start = (split.train[0] - timedelta(days=365)).replace(day=1)
    end = split.data_end.replace(day=1)  # whole months only
    monthly = con.sql(f"""
        SELECT p.team_id AS team, c.source_system AS system, date_trunc('month', c.occurred_at)::DATE AS month,
               count(*) AS records
        FROM contacts c JOIN persons p USING (person_id)
        WHERE c.occurred_at >= DATE '{start}' AND c.occurred_at < DATE '{end}' AND p.team_id IS NOT NULL
        GROUP BY ALL
    """).pl()
    if monthly.height == 0:
        return {"teams": [], "systems": [], "usual": [], "gaps": [], "from": start.isoformat(), "to": end.isoformat()}
    # every (team, system, month) cell, so a month with no records at all counts as zero
    months = monthly.select("month").unique()
    pairs = monthly.select("team", "system").unique()
    full = pairs.join(months, how="cross").join(monthly, on=["team", "system", "month"], how="left").with_columns(
        pl.col("records").fill_null(0))
    usual = full.group_by("team", "system").agg(pl.col("records").median().alias("usual"))
    gaps = (full.join(usual, on=["team", "system"])
            .filter((pl.col("usual") >= GAP_MIN_USUAL) & (pl.col("records") < GAP_SHARE * pl.col("usual")))
            .sort("team", "system", "month"))
    return {
        "from": start.isoformat(), "to": end.isoformat(),
        "teams": sorted(usual["team"].unique().to_list()),
        "systems": sorted(usual["system"].unique().to_list()),
        "usual": usual.sort("team", "system").with_columns(pl.col("usual").round(0)).to_dicts(),
        "gaps": [{**g, "month": g["month"].isoformat()[:7]} for g in
                 gaps.select("team", "system", "month", "records", "usual").to_dicts()],
    }


def _representation(con, spec: ModelSpec, split: TimeSplit, threshold: int) -> dict:
    """Per fairness group in the cohort at the last test date: how much the records can see."""
    from wobble.train import team_cohorts_sql

    as_of = split.test[-1]
    attrs = {
        "age_band": age_band_sql(f"(year(DATE '{as_of}') - p.birth_year)"),
        "sex": "coalesce(p.sex, 'unknown')",
        "ethnicity_group": "coalesce(p.ethnicity_group, 'unknown')",
        "imd_quintile": "coalesce(((p.imd_decile + 1) // 2)::VARCHAR, 'unknown')",
    }
    attrs = {a: e for a, e in attrs.items() if a in spec.fairness_groups}
    base = f"""
        WITH k AS (
            SELECT c.person_id, {', '.join(f'{e} AS {a}' for a, e in attrs.items())}
            FROM ({team_cohorts_sql(spec, [as_of])}) c JOIN persons p USING (person_id)
        ),
        n AS (
            SELECT person_id, count(*) AS records FROM contacts
            WHERE recorded_at < DATE '{as_of}' AND occurred_at >= DATE '{as_of}' - INTERVAL 365 DAY
              AND occurred_at < DATE '{as_of}' AND person_id IN (SELECT person_id FROM k)
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
