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
from wobble.core.vocab import CRISIS_SERVICES, SERVICES, UNKNOWN_GROUP
from wobble.core.warehouse import scalar
from wobble.features import cohort_sql
from wobble.models.spec import ModelSpec, TimeSplit


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

    Contacts of the people in `rows` (a sample, at scale: every contact joins each as-of date whose
    window holds it, a year's worth of dates) are joined to the distinct as-of dates by time range
    first, then counted per person and date.
    """
    if spec.target.kind == "rise":
        return _rise_label_sql(spec, rows)
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
              AND c.person_id IN (SELECT person_id FROM {rows})
            GROUP BY c.person_id, d.as_of
        )
        SELECT r.person_id, r.as_of, ({label})::INTEGER AS label
        FROM {rows} r LEFT JOIN e USING (person_id, as_of)"""


def poisson_tail_sql(n: str, rate: str) -> str:
    """SQL: P(X >= n) for X Poisson with mean `rate` (> 0), exactly: 1 − Σ_{k<n} e^−λ λ^k / k!.
    e.g. n 10, rate 3.8: 0.006."""
    return (f"CASE WHEN {n} <= 0 THEN 1.0 ELSE greatest(0.0, 1.0 - list_sum(list_transform(range({n}), "
            f"lambda k: exp(-({rate}) + k * ln({rate}) - lgamma(k + 1))))) END")


def _rise_label_sql(spec: ModelSpec, rows: str) -> str:
    """The `rise` target's label (see `Target`): any measure well above the person's usual level."""
    t = spec.target
    lo, hi = t.usual_days
    blocks, joins, arms = [], [], []
    for k, m in enumerate(t.measures):
        if m.source == "contacts":
            services = m.services or [s for s in SERVICES if s not in CRISIS_SERVICES]
            table, when = "contacts", "occurred_at"
            where = f"x.service IN {in_list(services)} AND x.status IN {in_list(m.statuses)}"
        else:
            table, when, where = "tags", "recorded_at", f"x.polarity = '{m.polarity}'"
        blocks.append(f"""m{k} AS (
            SELECT x.person_id, d.as_of,
                   count(*) FILTER (WHERE x.{when} >= d.as_of) AS after_n,
                   count(*) FILTER (WHERE x.{when} < d.as_of - INTERVAL {lo - 1} DAY) AS usual_n
            FROM {table} x JOIN d
              ON x.{when} >= d.as_of - INTERVAL {hi} DAY AND x.{when} < d.as_of + INTERVAL {t.horizon_days} DAY
             AND NOT (x.{when} >= d.as_of - INTERVAL {lo - 1} DAY AND x.{when} < d.as_of)
            WHERE {where} AND x.person_id IN (SELECT person_id FROM {rows})
            GROUP BY ALL)""")
        joins.append(f"LEFT JOIN m{k} USING (person_id, as_of)")
        after = f"coalesce(m{k}.after_n, 0)"
        rate = f"(coalesce(m{k}.usual_n, 0) + {m.prior_count}) * {t.horizon_days} / {hi - lo + 1}.0"
        arms.append(f"({after} >= {m.min_count} AND {poisson_tail_sql(after, rate)} < {t.significance})")
    return f"""
        WITH d AS (SELECT DISTINCT as_of FROM {rows}),
        {', '.join(blocks)}
        SELECT r.person_id, r.as_of, ({' OR '.join(arms)})::INTEGER AS label
        FROM {rows} r {' '.join(joins)}"""


def age_sql(spec: ModelSpec, as_of: str, person: str = "p") -> str:
    """SQL: the person (`person`: their `persons` row) is of the model's ages at the date `as_of` (SQL)."""
    return f"year({as_of}) - {person}.birth_year BETWEEN {spec.cohort.min_age} AND {spec.cohort.max_age}"


# The cohort rules a person of the model's ages can be left out of its ranking by (scores.cohort_rule)
RECENT_CRISIS, SHORT_HISTORY = "recent_crisis", "short_history"


def _recent_crisis(spec: ModelSpec, contact: str, as_of: str) -> str:
    """SQL: the contact (`contact`: a `contacts` row) is a crisis contact known before the date `as_of`
    (SQL) and within the cohort's `no_crisis_days` before it: the `recent_crisis` rule's test."""
    return (f"{contact}.service IN {in_list(CRISIS_SERVICES)} AND {contact}.recorded_at < {as_of} "
            f"AND {contact}.occurred_at < {as_of} "
            f"AND {contact}.occurred_at >= {as_of} - INTERVAL {spec.cohort.no_crisis_days} DAY")


def _rules(spec: ModelSpec, as_of: str, person: str) -> list[tuple[str, str]]:
    """(rule, SQL: the rule leaves the person out at `as_of`) for each cohort rule the spec asks for."""
    c, rules = spec.cohort, []
    if c.no_crisis_days:
        rules.append((RECENT_CRISIS, f"""EXISTS (
            SELECT 1 FROM contacts x WHERE x.person_id = {person}.person_id AND {_recent_crisis(spec, 'x', as_of)})"""))
    if c.min_registered_days:  # an unknown registration date does not exclude
        rules.append((SHORT_HISTORY, f"coalesce({person}.registered_on > {as_of} - INTERVAL "
                                     f"{c.min_registered_days} DAY, false)"))
    return rules


def cohort_rule_sql(spec: ModelSpec, as_of: str, person: str = "p") -> str:
    """SQL: the first cohort rule that leaves the person (`person`: their `persons` row) out of the
    model's cohort at the date `as_of` (SQL), or NULL when they are in it: `recent_crisis`, a crisis
    contact known in the last `no_crisis_days` (they are on the list's other part); `short_history`,
    registered less than `min_registered_days` (their usual level is not known yet). Ages are a
    separate rule (`age_sql`)."""
    arms = " ".join(f"WHEN {cond} THEN '{rule}'" for rule, cond in _rules(spec, as_of, person))
    return f"CASE {arms} END" if arms else "NULL::VARCHAR"


def eligible_sql(spec: ModelSpec, as_of: str, person: str = "p", but: tuple[str, ...] = ()) -> str:
    """SQL: the person (`person`: their `persons` row) is in the model's cohort at the date `as_of`
    (SQL), beyond what every cohort asks (`features.cohort_sql`: registered, alive, not opted out):
    of its ages, and left out by none of its cohort rules (`cohort_rule_sql`) but those in `but`."""
    return " AND ".join([age_sql(spec, as_of, person)]
                        + [f"NOT {cond}" for rule, cond in _rules(spec, as_of, person) if rule not in but])


def snapshot_filter_sql(spec: ModelSpec, snapshots: str = "feature_snapshots") -> str:
    """SQL over `feature_snapshots` rows (as `snapshots`): the row's person is in the model's cohort."""
    return (f"EXISTS (SELECT 1 FROM persons p WHERE p.person_id = {snapshots}.person_id "
            f"AND {eligible_sql(spec, f'{snapshots}.as_of')})")


def _bucket(offset: int) -> str:
    """A number in [0, 1) from 8 hex digits of the pseudonym: a stable split of people."""
    return f"('0x' || substr(person_id, {offset + 1}, 8))::UBIGINT / 4294967296.0"


def team_cohorts_sql(spec: ModelSpec, as_ofs: list[date]) -> str:
    """(person_id, team_id, as_of) of the model's cohort at each date, from the registrations and
    contacts: the same people as the snapshots' rows the model uses, without needing the snapshots."""
    # `recent_crisis` as a set, not a test per row: at 5,000,000 people and 33 dates, DuckDB's
    # plan for the test per (person, date) ran out of memory
    crisis = (f"""ANTI JOIN (
            SELECT DISTINCT x.person_id, a.as_of
            FROM contacts x JOIN (SELECT unnest({dates(as_ofs)}) AS as_of) a ON {_recent_crisis(spec, 'x', 'a.as_of')}
        ) r ON r.person_id = k.person_id AND r.as_of = k.as_of""" if spec.cohort.no_crisis_days else "")
    return f"""
        SELECT k.person_id, k.team_id, k.as_of
        FROM ({cohort_sql(dates(as_ofs))}) k JOIN persons p USING (person_id)
        {crisis}
        WHERE {eligible_sql(spec, 'k.as_of', but=(RECENT_CRISIS,))}"""


def fitting_rows(con, spec: ModelSpec, split: TimeSplit, share: float) -> int:
    """How many training rows (training dates, training people, the model's cohort) fit rather than
    validate (`models.fit.n_fitting`), counted from the registrations and contacts: what `load_rows`
    would read from complete snapshots, without the snapshots, so train can choose whose to build."""
    return int(scalar(con, f"SELECT count(*) FROM ({team_cohorts_sql(spec, split.train)}) "
                           f"WHERE NOT ({held_out_people_sql(share)}) "
                           f"AND {_bucket(8)} >= {spec.estimator.validation_share!r}") or 0)


def drawn_people_sql(share: float, draws: str) -> str:
    """SQL over `person_id`: a training person (not held out at `share`) whose draw meets `draws`
    (SQL over `person_draw`, as `load_rows` takes it)."""
    return f"NOT ({held_out_people_sql(share)}) AND ({draws.replace('person_draw', _bucket(8))})"


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


def load_rows(con, spec: ModelSpec, split: TimeSplit, columns: list[str], share: float | None = None, *,
              train: bool = True, test: bool = True, draws: str | None = None) -> pl.DataFrame:
    """Training rows (training dates, training people) and test rows (test dates, test people).

    Columns: person_id, as_of, team_id, part ('train' | 'test'), person_draw (a number in [0, 1)
    per person, independent of the test split: below validation_share means the validation
    slice), team_cohort (the team's whole cohort that week; test rows only), the feature columns,
    label, and the fairness attributes. `train=False` leaves out the training rows and
    `test=False` the test rows, so each part can be read when it is needed; `draws`, SQL over
    `person_draw`, keeps only the training rows it is true of (a sample, read without reading the
    rest; `fitting_rows` counts them without reading snapshots).
    """
    share = held_out_share(con, spec, split) if share is None else share
    cols = "".join(f", s.{c}" for c in columns)
    test_rows = f"OR (s.as_of IN (SELECT unnest({dates(split.test)})) AND s.b_test < {share})" if test else ""
    sample = f"AND ({draws.replace('person_draw', 's.b_val')})" if draws else ""
    train_rows = (f"s.as_of IN (SELECT unnest({dates(split.train)})) AND s.b_test >= {share} {sample}"
                  if train else "false")
    read = (split.train if train else []) + (split.test if test else [])
    # team sizes for the test dates alone, the only rows that use them: each date's count reads
    # everyone (at 5,000,000 people and 33 training dates, minutes)
    teams = (f"SELECT team_id, as_of, count(*) AS team_cohort FROM ({team_cohorts_sql(spec, split.test)}) GROUP BY ALL"
             if test else "SELECT NULL::VARCHAR AS team_id, NULL::DATE AS as_of, NULL::BIGINT AS team_cohort LIMIT 0")
    q = f"""
        CREATE OR REPLACE TEMP TABLE _rows AS
        WITH teams AS ({teams}),
        s AS (
            SELECT f.*, t.team_cohort, {_bucket(0)} AS b_test, {_bucket(8)} AS b_val
            FROM feature_snapshots f LEFT JOIN teams t USING (team_id, as_of)
            WHERE as_of IN (SELECT unnest({dates(read)}))
              AND {snapshot_filter_sql(spec, 'f')}
        )
        SELECT s.person_id, s.as_of, s.team_id,
               CASE WHEN s.as_of IN (SELECT unnest({dates(split.test)})) THEN 'test' ELSE 'train' END AS part,
               s.b_val AS person_draw, s.team_cohort{cols}
        FROM s
        WHERE ({train_rows}) {test_rows}
    """
    con.execute(q)
    return con.sql(f"""
        SELECT r.*, l.label, {', '.join(f'{sql} AS {a}' for a, sql in attributes_sql('r.as_of').items())}
        FROM _rows r JOIN ({label_sql(spec, '_rows')}) l USING (person_id, as_of)
        JOIN persons p USING (person_id)
        ORDER BY r.part, r.as_of, r.person_id
    """).pl()


