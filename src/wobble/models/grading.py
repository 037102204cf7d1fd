"""Grading lists: what the part of each list limited by a team's capacity would have held on the
test period, for this model beside today's crisis-now ranking, the best list the observable data
allows and a list ranked by the hidden truth.

The rows are every adult at the test dates among the held-out test people (`grading_rows`), so
the lists compete for the same people, plus BURN_IN_WEEKS of weekly dates before them, which only
say who had been listed already (a lead time runs from a person's first listing). Each list takes,
per team and date, the team's capacity scaled to its share of held-out people (`metrics.Capacity`),
from the people its rule allows:
- `model`: this model's list: its cohort, ranked by its score, and (when the spec asks) only
  people with a reason about change that raises concern (`explain.change_reasons`);
- `crisis_now`: a crisis model's ranking of every adult: what lists were before early warning
  (fitted beside this model on the same training dates when `compare_with` names it);
- `best`: synthetic worlds only: the same estimator, features, cohort and gate fitted on the
  truth's rising phase rather than the target: the best list the observable data allows;
- `truth`: synthetic worlds only: people in a rising phase first, by how far their need stands
  above their usual (`wobble.synth.truth`), from the same people as `model`'s list.

Per list (`figures`): how many rows it listed; the share rising and the share in crisis by the
truth; the share with a crisis contact known in the 30 days before the list; precision for a
crisis within 90 days, for everyone listed and for listed people not in crisis care (no crisis
contact in the 90 days before), with 95% intervals from a person bootstrap; and the median lead
time: per person first listed in the test period, days from that listing to their first crisis
within 90 days of it, with its interval and the number of people it is over. With the truth, also
how far into their rise people were when first listed (median days, over people rising then): a
list can warn of a crisis no earlier than it finds the rise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from wobble.core.sql import dates, in_list
from wobble.core.vocab import CRISIS_SERVICES
from wobble.core.warehouse import connect
from wobble.features import cohort_sql
from wobble.models.cohort import eligible_sql, held_out_people_sql, load_rows
from wobble.models.explain import change_reasons
from wobble.models.fit import feature_matrix, fit_lightgbm, sample_sql
from wobble.models.metrics import Capacity, person_counts, weighted_quantiles
from wobble.models.spec import ModelSpec, TimeSplit, load_spec
from wobble.models.truth import need_phases

LISTS = ("model", "crisis_now", "best", "truth")
NOT_IN_CRISIS_CARE_DAYS = 90
BURN_IN_WEEKS = 8  # weekly lists before the test period, so a first listing there is not counted as one later


def grading_rows(con, spec: ModelSpec, as_ofs: list[date], share: float, models: dict[str, tuple[object, list[str]]],
                 rows_at_once: int = 200_000) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """Every adult (the spec's ages) at the dates `as_ofs` among held-out people, one row per person
    and date, by team and date: `team_cohort` (the team's adults that date), `eligible` (in this spec's
    cohort), `crisis_30d` / `crisis_90d` (a crisis contact known in the 30 / 90 days before),
    `crisis_next` (one in the 90 days after), in a fixed order; and each of `models`' (name →
    (model, its columns)) prediction for each row.

    The rows are made and ordered without their snapshot columns; those are then read
    `rows_at_once` rows at a time, in whatever order they come, scored and let go, each prediction
    put at its row's place: every prediction is row-wise, and at 1,000,000 people sorting the
    rows with their features filled DuckDB's four gigabytes."""
    c = spec.cohort
    adults = f"year(k.as_of) - p.birth_year BETWEEN {c.min_age} AND {c.max_age}"
    crises = f"service IN {in_list(CRISIS_SERVICES)}"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _graded AS
        WITH teams AS (
            SELECT k.team_id, k.as_of, count(*) AS team_cohort
            FROM ({cohort_sql(dates(as_ofs))}) k JOIN persons p USING (person_id) WHERE {adults} GROUP BY ALL),
        -- the rules of the cohort read contacts: only held-out people's rows are asked them
        k AS (
            SELECT k.person_id, k.as_of, k.team_id, {eligible_sql(spec, 'k.as_of')} AS eligible
            FROM ({cohort_sql(dates(as_ofs))}) k JOIN persons p USING (person_id)
            WHERE {adults} AND {held_out_people_sql(share).replace('person_id', 'k.person_id')}),
        c AS (
            SELECT k.person_id, k.as_of,
                   bool_or(x.occurred_at >= k.as_of - INTERVAL 30 DAY AND x.occurred_at < k.as_of
                           AND x.recorded_at < k.as_of) AS crisis_30d,
                   bool_or(x.occurred_at < k.as_of AND x.recorded_at < k.as_of) AS crisis_90d,
                   bool_or(x.occurred_at >= k.as_of) AS crisis_next
            FROM k JOIN contacts x ON x.person_id = k.person_id AND x.{crises}
             AND x.occurred_at >= k.as_of - INTERVAL 90 DAY AND x.occurred_at < k.as_of + INTERVAL 90 DAY
            GROUP BY ALL)
        SELECT (row_number() OVER (ORDER BY k.as_of, k.team_id, k.person_id) - 1)::BIGINT AS _k,
               k.person_id, k.as_of, k.team_id, t.team_cohort, k.eligible,
               coalesce(c.crisis_30d, false) AS crisis_30d, coalesce(c.crisis_90d, false) AS crisis_90d,
               coalesce(c.crisis_next, false) AS crisis_next
        FROM k JOIN teams t USING (team_id, as_of) SEMI JOIN feature_snapshots f USING (person_id, as_of)
        LEFT JOIN c USING (person_id, as_of)""")
    try:
        rows = con.sql("SELECT * EXCLUDE (_k) FROM _graded ORDER BY _k").pl()
        scores = {name: np.zeros(rows.height) for name in models}
        columns = list(dict.fromkeys(x for _, cols in models.values() for x in cols))
        if models:
            reader = con.sql(f"""SELECT g._k{''.join(f', f.{x}' for x in columns)}
                                 FROM _graded g JOIN feature_snapshots f USING (person_id, as_of)""") \
                .fetch_arrow_reader(rows_at_once)
            for batch in reader:
                frame = pl.from_arrow(batch)
                at = frame["_k"].to_numpy()
                for name, (model, cols) in models.items():
                    scores[name][at] = model.predict(feature_matrix(frame, cols))
    finally:
        con.execute("DROP TABLE IF EXISTS _graded")
    return rows, scores


def _features_of(con, rows: pl.DataFrame, features: list[str]) -> np.ndarray:
    """The snapshot `features` of each of `rows` (person_id, as_of), in their order."""
    con.register("_wanted", rows.select("person_id", "as_of").with_row_index("_k"))
    try:
        frame = con.sql(f"""SELECT {', '.join(f'f.{x}' for x in features)} FROM _wanted w
                            JOIN feature_snapshots f USING (person_id, as_of) ORDER BY w._k""").pl()
    finally:
        con.unregister("_wanted")
    return feature_matrix(frame, features)


def first_crises(con, rows: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """(person_id, day): each crisis day, from the first date of `rows` to `horizon` days after the
    last, of the people in `rows`."""
    first, last = rows["as_of"].min(), rows["as_of"].max()
    con.register("_graded_people", rows.select("person_id").unique())
    try:
        return con.sql(f"""
            SELECT DISTINCT x.person_id, x.occurred_at::DATE AS day FROM contacts x
            SEMI JOIN _graded_people g ON g.person_id = x.person_id
            WHERE x.service IN {in_list(CRISIS_SERVICES)} AND x.occurred_at >= DATE '{first}'
              AND x.occurred_at < DATE '{last + timedelta(days=horizon)}'
            ORDER BY 1, 2""").pl()
    finally:
        con.unregister("_graded_people")


def listed(rows: pl.DataFrame, score: np.ndarray, capacity: int) -> np.ndarray:
    """Which rows a list takes: per team and date, the team's capacity scaled to its sample, by
    `score` (−inf: not allowed on this list)."""
    groups = (rows["team_id"] + "|" + rows["as_of"].cast(pl.String)).to_numpy()
    return Capacity(score, groups, capacity, rows["team_cohort"].to_numpy()).listed() & np.isfinite(score)


def truth_score(rows: pl.DataFrame, truth: pl.DataFrame, allowed: np.ndarray) -> np.ndarray:
    """The truth-ranked list's score: rising people first, by excess need; −inf where not allowed."""
    joined = rows.select("person_id", "as_of").join(truth, on=["person_id", "as_of"], how="left",
                                                    maintain_order="left")
    excess = joined["excess"].fill_null(-1e9).to_numpy()
    rising = (joined["phase"] == "rising").fill_null(False).to_numpy()
    return np.where(allowed, excess + np.where(rising, 1e6, 0.0), -np.inf)


@dataclass
class _Boot:
    person: np.ndarray  # each row's person, as 0 … n-1
    replicates: list[np.ndarray]  # per replicate, times each person was drawn


def _interval(point: float, reps: list[float]) -> dict:
    reps = [r for r in reps if np.isfinite(r)]
    if not np.isfinite(point):
        return {"value": None, "low": None, "high": None}
    lo, hi = (np.quantile(reps, [0.025, 0.975]) if reps else (np.nan, np.nan))
    return {"value": float(point), "low": float(lo) if np.isfinite(lo) else None,
            "high": float(hi) if np.isfinite(hi) else None}


def _share(mask: np.ndarray, hit: np.ndarray, boot: _Boot) -> dict:
    """Share of `mask` rows that are `hit`, with a person-bootstrap interval."""
    def at(w: np.ndarray) -> float:
        total = w[mask].sum()
        return float((w[mask] * hit[mask]).sum() / total) if total else float("nan")

    ones = np.ones(mask.size)
    return _interval(at(ones), [at(r[boot.person]) for r in boot.replicates])


def _first_listed(rows: pl.DataFrame, mask: np.ndarray, graded: np.ndarray) -> pl.DataFrame:
    """(person_id, listed): each person's first listing, for people first listed at a graded date
    (listings at the burn-in dates before count as first)."""
    return (rows.filter(pl.Series(mask)).group_by("person_id").agg(pl.col("as_of").min().alias("listed"))
            .filter(pl.col("listed").is_in(rows.filter(pl.Series(graded))["as_of"].unique().implode())))


def _median_days(rows: pl.DataFrame, days: pl.DataFrame, boot: _Boot) -> dict:
    """The median of `days` (person_id, days: one row per person), with a person-bootstrap
    interval and the number of people it is over."""
    if days.height == 0:
        return {"value": None, "low": None, "high": None, "people": 0}
    codes = dict(zip(rows["person_id"].to_list(), boot.person.tolist(), strict=True))
    days = days.sort("days", "person_id")
    person = np.array([codes[p] for p in days["person_id"].to_list()])
    values = days["days"].to_numpy().astype(np.float64)
    point = weighted_quantiles(values, np.ones(values.size), (0.5,))[0]
    reps = [weighted_quantiles(values, r[person], (0.5,))[0] for r in boot.replicates]
    return {**_interval(point, reps), "people": int(days.height)}


def _lead(rows: pl.DataFrame, mask: np.ndarray, graded: np.ndarray, crises: pl.DataFrame, horizon: int,
          boot: _Boot) -> dict:
    """Median days from each person's first listing to their first crisis within `horizon` of it,
    over people first listed at a graded date (listings at the burn-in dates before count as first)."""
    events = _first_listed(rows, mask, graded).join(crises, on="person_id").filter(
        (pl.col("day") >= pl.col("listed")) & (pl.col("day") < pl.col("listed") + timedelta(days=horizon)))
    return _median_days(rows, events.group_by("person_id").agg(
        (pl.col("day").min() - pl.col("listed").first()).dt.total_days().alias("days")), boot)


def _into_rise(rows: pl.DataFrame, mask: np.ndarray, graded: np.ndarray, truth: pl.DataFrame, boot: _Boot) -> dict:
    """Median days from the start of a person's rise (the truth's `rising_since`) to their first
    listing, over people first listed at a graded date while rising: how early in a rise the list
    finds people, which bounds how early it can warn of a crisis."""
    first = _first_listed(rows, mask, graded).join(
        truth.select("person_id", pl.col("as_of").alias("listed"), "rising_since"), on=["person_id", "listed"])
    return _median_days(rows, first.filter(pl.col("rising_since").is_not_null()).select(
        "person_id", (pl.col("listed") - pl.col("rising_since")).dt.total_days().alias("days")), boot)


def figures(rows: pl.DataFrame, lists: dict[str, np.ndarray], truth: pl.DataFrame | None, crises: pl.DataFrame,
            graded: np.ndarray, *, replicates: int, seed: int, horizon: int = 90) -> dict[str, dict]:
    """Per list (name → which rows it took): the figures of the module's docstring, over the `graded`
    rows (the test dates; the others are the burn-in, for first listings)."""
    person = rows["person_id"].rank("dense").cast(pl.Int64).to_numpy() - 1
    boot = _Boot(person, list(person_counts(int(person.max()) + 1 if person.size else 0, replicates, seed)))
    phase = (rows.select("person_id", "as_of").join(truth, on=["person_id", "as_of"], how="left",
                                                     maintain_order="left")["phase"]
             if truth is not None else None)
    crisis_next = rows["crisis_next"].to_numpy()
    calm = ~rows["crisis_90d"].to_numpy()
    out = {}
    for name, taken in lists.items():
        mask = taken & graded
        f = {"rows": int(mask.sum()), "people": int(rows.filter(pl.Series(mask))["person_id"].n_unique()),
             "crisis_contact_30d": _share(mask, rows["crisis_30d"].to_numpy(), boot),
             "precision_crisis_90d": _share(mask, crisis_next, boot),
             "precision_crisis_90d_not_in_crisis_care": _share(mask & calm, crisis_next, boot),
             "lead_days": _lead(rows, taken, graded, crises, horizon, boot)}
        if phase is not None:
            f["rising"] = _share(mask, (phase == "rising").fill_null(False).to_numpy(), boot)
            f["in_crisis"] = _share(mask, (phase == "in_crisis").fill_null(False).to_numpy(), boot)
            if "rising_since" in truth.columns:
                f["days_into_rise"] = _into_rise(rows, taken, graded, truth, boot)
        out[name] = f
    return out


def burn_in(split: TimeSplit) -> list[date]:
    """The weekly dates before the test period whose lists only tell who was listed first."""
    return [split.test[0] - timedelta(weeks=k) for k in range(BURN_IN_WEEKS, 0, -1)]


def grade_lists(cfg, key: bytes | None, spec: ModelSpec, split: TimeSplit, share: float, fit, features: list[str],
                cat, best=None, comparator: tuple[ModelSpec, object] | None = None) -> dict:
    """This model's list beside today's crisis-now ranking, the best list the observable data allows
    and the truth-ranked list, on the test period (see the module docstring): {"lists": name →
    figures, "notes": what each list is, "truth": whether a synthetic truth graded them}.

    `best` is `fit_best_observable`'s fit (None: no truth) and `comparator` `fit_comparator`'s
    (None: none named), both made by the caller before this, so the rows they were fitted on need
    not be held while the grading rows are; the grading rows are scored in slices for the same reason."""
    crisis_spec, crisis_fit = comparator or (None, None)
    as_ofs = burn_in(split) + split.test
    cap = spec.capacity_per_team
    gate = spec.listing.require_change_reason
    with connect(cfg.warehouse, read_only=True) as con:
        models = {"model": (fit, features)} | ({"crisis_now": (crisis_fit, cat.predictors)} if crisis_fit else {})
        if best is not None:
            models["best"] = (best, features)
        rows, scores = grading_rows(con, spec, as_ofs, share, models)
        crises = first_crises(con, rows, spec.target.horizon_days)
        graded = rows["as_of"].is_in(split.test).to_numpy()
        eligible = rows["eligible"].to_numpy()

        def ranked(name: str) -> np.ndarray:
            score = np.where(eligible, scores[name], -np.inf)
            return listed(rows, _gate(con, rows, score, models[name][0], features, cat, cap) if gate else score, cap)

        lists = {"model": ranked("model")}
        notes = {"model": "its cohort, ranked by its score"
                          + (", people with a reason about change only" if gate else "")}
        if crisis_fit is not None:
            lists["crisis_now"] = listed(rows, scores["crisis_now"], cap)
            notes["crisis_now"] = (f"every adult, ranked by the crisis model ({crisis_spec.title.lower()}), "
                                   "fitted on the same training dates and people")
        truth = need_phases(cfg, key, as_ofs, people=rows["person_id"], since=True)
        if truth is not None:
            if best is not None:
                lists["best"] = ranked("best")
                notes["best"] = ("the same features, cohort and gate, fitted on the hidden truth's rising phase at "
                                 "the training dates instead of the target: the best list the observable data allows")
            lists["truth"] = listed(rows, truth_score(rows, truth, eligible), cap)
            notes["truth"] = ("the same cohort, people in a rising phase first, by how far their need stands "
                              "above usual")
    return {"lists": figures(rows, lists, truth, crises, graded, replicates=spec.evaluation.bootstrap_replicates,
                             seed=cfg.wobble.seed, horizon=spec.target.horizon_days),
            "notes": notes, "truth": truth is not None, "burn_in_weeks": BURN_IN_WEEKS}


def _gate(con, rows: pl.DataFrame, score: np.ndarray, fit, features: list[str], cat, cap: int) -> np.ndarray:
    """`score` with −inf for people near the top of a list who have no reason about change: their
    contributions are computed for three times the list's places, so the cost grows with lists
    (their features are read for them alone, from the warehouse `con`)."""
    near = listed(rows, score, 3 * cap)
    idx = np.flatnonzero(near)
    if idx.size:
        X = _features_of(con, rows[idx], features)
        contrib = fit.booster.predict(X, pred_contrib=True, num_iteration=fit.best_iteration)[:, :-1]
        score = score.copy()
        score[idx[change_reasons(contrib, X, features, cat) < 0]] = -np.inf
    return score


def fit_best_observable(cfg, key: bytes | None, spec: ModelSpec, split: TimeSplit, train_df: pl.DataFrame,
                        X: np.ndarray, features: list[str], n_fit: int | None):
    """This model's estimator fitted on the truth's rising phase instead of its target (synthetic
    worlds only), on the same training rows (`train_df`, `X` their features; `n_fit`: as for
    `fit_lightgbm`): what the observable data could give a list at best. None without enough rising."""
    truth = need_phases(cfg, key, split.train, people=train_df["person_id"])
    if truth is None:
        return None
    y = (train_df.select("person_id", "as_of").join(truth, on=["person_id", "as_of"], how="left",
                                                    maintain_order="left")["phase"] == "rising").fill_null(False)
    if y.sum() < 5:
        return None
    return fit_lightgbm(spec, X, y.to_numpy().astype(int), train_df["person_draw"].to_numpy(), features,
                        cfg.wobble.seed, n_fit=n_fit)


def comparator_spec(cfg, spec: ModelSpec) -> tuple[ModelSpec, ModelSpec] | None:
    """(the crisis model's spec on this model's schedule, the same fitting at most its search_rows
    rows) for `spec.compare_with`; None when the spec names no model to compare with. The
    comparator ranks, it is not published: a sample is enough."""
    if not spec.compare_with:
        return None
    crisis_spec = load_spec(cfg.models_dir, spec.compare_with).model_copy(update={"schedule": spec.schedule})
    est = crisis_spec.estimator.model_copy(update={"max_rows": est_rows(crisis_spec), "search": []})
    return crisis_spec, crisis_spec.model_copy(update={"estimator": est})


def fit_comparator(cfg, compared: tuple[ModelSpec, ModelSpec] | None, split: TimeSplit, share: float, cat,
                   n_fit: int | None) -> tuple[ModelSpec, object] | None:
    """(the crisis model's spec, its fit) for `compared` (`comparator_spec`), fitted on this model's
    training dates and people; None without one. `n_fit`: its fitting rows (`fitting_rows`).

    Only the sample's rows are read (`sample_sql`). `train` fits it before it reads its own rows, so
    neither is held while the other is (at 1,000,000 people, DuckDB's reads took four gigabytes)."""
    if compared is None:
        return None
    crisis_spec, small = compared
    predictors = cat.predictors
    with connect(cfg.warehouse, read_only=True) as con:
        frame = load_rows(con, crisis_spec, split, predictors, share, test=False, draws=sample_sql(small, n_fit))
    return crisis_spec, fit_lightgbm(small, feature_matrix(frame, predictors), frame["label"].to_numpy().astype(int),
                                     frame["person_draw"].to_numpy(), predictors, cfg.wobble.seed,
                                     n_fit=n_fit)


def est_rows(spec: ModelSpec) -> int:
    """How many rows a comparator fits on: the spec's search_rows, within its max_rows."""
    return min(spec.estimator.search_rows, spec.estimator.max_rows)


def grade_published(cfg, key: bytes | None, model: str, version: str, as_of: date) -> dict | None:
    """A published list at `as_of` graded by a synthetic world's truth (None without one): per part
    of the list, over every team, how many rows, the share rising and in crisis by the truth and
    the share with a crisis contact in the 30 days before; beside them, a list ranked by the truth
    (`truth_score`) from the same cohort with the same places per team."""
    truth = need_phases(cfg, key, [as_of])
    if truth is None:
        return None
    with connect(cfg.warehouse, read_only=True) as con:
        listed = con.sql(f"""
            SELECT h.team_id, h.person_id, h.section, coalesce(c.n, 0) > 0 AS crisis_30d
            FROM huddle_lists h LEFT JOIN (
                SELECT person_id, count(*) AS n FROM contacts
                WHERE service IN {in_list(CRISIS_SERVICES)} AND occurred_at < ? AND recorded_at < ?
                  AND occurred_at >= ?::DATE - INTERVAL 30 DAY GROUP BY ALL) c USING (person_id)
            WHERE h.model_name = ? AND h.model_version = ? AND h.as_of = ?""",
            params=[as_of, as_of, as_of, model, str(version), as_of]).pl()
        cohort = con.sql("""SELECT person_id, team_id, list_rank IS NOT NULL AS listed FROM scores
                            WHERE model_name = ? AND model_version = ? AND as_of = ? AND cohort_rule IS NULL""",
                         params=[model, str(version), as_of]).pl()
    phase = truth.select("person_id", "phase", "excess")
    out = {}
    for section in listed["section"].unique().sort().to_list():
        part = listed.filter(pl.col("section") == section).join(phase, on="person_id", how="left")
        out[section] = {"rows": part.height, "rising": _mean(part["phase"] == "rising"),
                        "in_crisis": _mean(part["phase"] == "in_crisis"),
                        "crisis_contact_30d": _mean(part["crisis_30d"])}
    places = listed.filter(pl.col("section") == "capacity").group_by("team_id").len()
    ranked = (cohort.join(phase, on="person_id", how="left")
              .with_columns(pl.Series("_s", truth_score(cohort.with_columns(pl.lit(as_of).alias("as_of")),
                                                        truth, np.ones(cohort.height, bool))))
              .sort(["team_id", "_s", "person_id"], descending=[False, True, False])
              .with_columns(pl.int_range(pl.len()).over("team_id").alias("_k"))
              .join(places, on="team_id").filter(pl.col("_k") < pl.col("len")))
    out["truth_ranked"] = {"rows": ranked.height, "rising": _mean(ranked["phase"] == "rising"),
                           "in_crisis": _mean(ranked["phase"] == "in_crisis")}
    return out


def _mean(hits: pl.Series) -> float | None:
    return round(float(hits.fill_null(False).mean()), 4) if hits.len() else None
