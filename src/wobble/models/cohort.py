"""Who a model learns from and is tested on, and what counts as the outcome: the cohort and label SQL.

Rows are (person_id, as_of) pairs from `feature_snapshots`; a row's label is whether the spec's
target happened in [as_of, as_of + horizon). People are split into training and held-out test
people by a hash of their pseudonym, so nobody is in both; the fairness attributes every
evaluation reports (age band, sex, ethnicity group, IMD quintile) are defined here once.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from wobble.core.sql import age_band_sql, dates, imd_quintile_sql, in_list
from wobble.core.vocab import UNKNOWN_GROUP
from wobble.features import cohort_sql
from wobble.models.spec import ModelSpec, TimeSplit

ATTRIBUTES = ("age_band", "sex", "ethnicity_group", "imd_quintile")


def attributes_sql(as_of: str, person: str = "p") -> dict[str, str]:
    """SQL for each fairness attribute of a person (`person`: the alias of their `persons` row) at
    the date `as_of` (SQL); a value not recorded reads as the vocabulary's unknown group."""
    return {
        "age_band": age_band_sql(f"(year({as_of}) - {person}.birth_year)"),
        "sex": f"coalesce({person}.sex, '{UNKNOWN_GROUP}')",
        "ethnicity_group": f"coalesce({person}.ethnicity_group, '{UNKNOWN_GROUP}')",
        "imd_quintile": f"coalesce({imd_quintile_sql(f'{person}.imd_decile')}, '{UNKNOWN_GROUP}')",
    }


def label_sql(spec: ModelSpec, rows: str) -> str:
    """(person_id, as_of, label) for each row of `rows`: did the target happen in [as_of, as_of + horizon)?

    Contacts are joined to the distinct as-of dates by time range first (cheap at any size),
    then counted per person and date.
    """
    t = spec.target
    prior = t.prior_days if t.kind == "escalation" else 0
    status = f"AND c.status IN {in_list(t.statuses)}" if t.statuses else ""
    if t.kind == "crisis":
        label = "coalesce(e.after_n, 0) > 0"
    else:
        # rate after ≥ ratio × rate before, i.e. after_n ≥ ratio × before_n × horizon / prior_days
        label = (f"coalesce(e.after_n, 0) >= {t.min_contacts} AND coalesce(e.after_n, 0) >= "
                 f"{t.ratio} * coalesce(e.before_n, 0) * {t.horizon_days} / {prior}.0")
    return f"""
        WITH d AS (SELECT DISTINCT as_of FROM {rows}),
        e AS (
            SELECT c.person_id, d.as_of,
                   count(*) FILTER (WHERE c.occurred_at >= d.as_of) AS after_n,
                   count(*) FILTER (WHERE c.occurred_at < d.as_of) AS before_n
            FROM contacts c JOIN d
              ON c.occurred_at >= d.as_of - INTERVAL {prior} DAY
             AND c.occurred_at < d.as_of + INTERVAL {t.horizon_days} DAY
            WHERE c.service IN {in_list(t.services)} {status}
            GROUP BY c.person_id, d.as_of
        )
        SELECT r.person_id, r.as_of, ({label})::INTEGER AS label
        FROM {rows} r LEFT JOIN e USING (person_id, as_of)"""


def _bucket(offset: int) -> str:
    """A number in [0, 1) from 8 hex digits of the pseudonym: a stable split of people."""
    return f"('0x' || substr(person_id, {offset + 1}, 8))::UBIGINT / 4294967296.0"


def _in_cohort(spec: ModelSpec, age: str = "age") -> str:
    return f"{age} BETWEEN {spec.cohort.min_age} AND {spec.cohort.max_age}"


def team_cohorts_sql(spec: ModelSpec, as_ofs: list[date]) -> str:
    """(person_id, team_id, as_of) of the model's cohort at each date, from the registrations: the
    same people as the snapshots' rows within the spec's ages, without needing the snapshots."""
    return f"""
        SELECT k.person_id, k.team_id, k.as_of
        FROM ({cohort_sql(dates(as_ofs))}) k JOIN persons p USING (person_id)
        WHERE {_in_cohort(spec, 'year(k.as_of) - p.birth_year')}"""


def held_out_people_sql(share: float) -> str:
    """SQL over `person_id`: the person is held out for testing."""
    return f"{_bucket(0)} < {share}"


def held_out_share(con, spec: ModelSpec, split: TimeSplit) -> float:
    """The share of people held out for testing: the spec's, unless that is more than max_test_people.

    e.g. 1,000,000 people, share 0.3, max 50,000: 0.05, and the other 95% are training people.
    """
    people = con.sql(f"SELECT count(DISTINCT person_id) FROM ({team_cohorts_sql(spec, split.test)})"
                     ).fetchall()[0][0]
    s = spec.schedule
    return min(s.test_share_of_people, s.max_test_people / people) if people else s.test_share_of_people


def load_rows(con, spec: ModelSpec, split: TimeSplit, columns: list[str], share: float | None = None
              ) -> pl.DataFrame:
    """Training rows (training dates, training people) and test rows (test dates, test people).

    Columns: person_id, as_of, team_id, part ('train' | 'test'), person_draw (a number in [0, 1)
    per person, independent of the test split: below validation_share means the validation
    slice), team_cohort (the team's whole cohort that week), the feature columns,
    label, and the fairness attributes.
    """
    share = held_out_share(con, spec, split) if share is None else share
    cols = ", ".join(f"s.{c}" for c in columns)
    q = f"""
        CREATE OR REPLACE TEMP TABLE _rows AS
        WITH teams AS (
            SELECT team_id, as_of, count(*) AS team_cohort
            FROM ({team_cohorts_sql(spec, split.train + split.test)}) GROUP BY ALL
        ),
        s AS (
            SELECT f.*, t.team_cohort, {_bucket(0)} AS b_test, {_bucket(8)} AS b_val
            FROM feature_snapshots f JOIN teams t USING (team_id, as_of)
            WHERE as_of IN (SELECT unnest({dates(split.train + split.test)}))
              AND {_in_cohort(spec)}
        )
        SELECT s.person_id, s.as_of, s.team_id,
               CASE WHEN s.as_of IN (SELECT unnest({dates(split.test)})) THEN 'test' ELSE 'train' END AS part,
               s.b_val AS person_draw, s.team_cohort, {cols}
        FROM s
        WHERE (s.as_of IN (SELECT unnest({dates(split.train)})) AND s.b_test >= {share})
           OR (s.as_of IN (SELECT unnest({dates(split.test)})) AND s.b_test < {share})
    """
    con.execute(q)
    return con.sql(f"""
        SELECT r.*, l.label, {', '.join(f'{sql} AS {a}' for a, sql in attributes_sql('r.as_of').items())}
        FROM _rows r JOIN ({label_sql(spec, '_rows')}) l USING (person_id, as_of)
        JOIN persons p USING (person_id)
        ORDER BY r.part, r.as_of, r.person_id
    """).pl()


