"""Train: feature snapshots + outcomes → a calibrated LightGBM model in MLflow, and its card.

Reads `feature_snapshots` (built here for the spec's as-of dates), `persons` and `contacts`
(for outcomes); writes one MLflow run (params, metrics with intervals, the model with its
signature, calibrator, feature list, figures, SHAP summary, evaluation, card) and a registered
model version under the spec's name. One row per (person_id, as_of) is one example; its label
is whether the target happened in [as_of, as_of + horizon).

Validation is temporal and by person: the model is fitted on earlier as-of dates for one set of
people and tested on later dates, never seen in training, for a different set of people; the
last training outcome ends before the first test date (`TimeSplit.gap_days`). Within training,
a validation slice of people chooses among the spec's candidate settings, stops boosting early
and fits the calibrator. Nothing is tuned on the test period.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

import wobble.tracking  # noqa: F401  (environment defaults for MLflow and LightGBM, set before either loads)
from wobble.config import Config
from wobble.errors import WobbleError
from wobble.features import build_features, cohort_sql, load_catalogue
from wobble.spec import ModelSpec, TimeSplit, load_spec, monday_on_or_before, timesplit
from wobble.vocab import CRISIS_SERVICES, age_band_sql, sql_list
from wobble.warehouse import connect, scalar

# LightGBM is deterministic for a given seed *and* thread count, so the count is fixed.
THREADS = 2
ATTRIBUTES = ("age_band", "sex", "ethnicity_group", "imd_quintile")


@dataclass
class TrainResult:
    model_name: str
    model_version: str
    run_id: str
    metrics: dict[str, float]
    split: TimeSplit
    rows_train: int
    rows_test: int
    card_md: Path
    card_html: Path | None
    shap_families: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    evaluation: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "model_name": self.model_name, "model_version": self.model_version,
            "run_id": self.run_id,
            "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.metrics.items()},
            "train_as_ofs": [d.isoformat() for d in self.split.train],
            "test_as_ofs": [d.isoformat() for d in self.split.test],
            "gap_days": self.split.gap_days, "rows_train": self.rows_train,
            "rows_test": self.rows_test, "model_card": str(self.card_md),
            "shap_families": {k: round(v, 4) for k, v in self.shap_families.items()},
            "seconds": round(self.seconds, 2),
        }


def data_end(con, cfg: Config) -> date:
    """The as-of date the data supports: the configured one, else the Monday after the last record."""
    if cfg.wobble.as_of:
        return cfg.wobble.as_of
    last = scalar(con, "SELECT max(recorded_at)::DATE FROM contacts")
    if last is None:
        raise WobbleError("the warehouse has no contacts: run `wobble ingest` first")
    return monday_on_or_before(last + timedelta(days=1))


def _dates_sql(dates: list[date]) -> str:
    return "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in dates) + "]"


def label_sql(spec: ModelSpec, rows: str) -> str:
    """(person_id, as_of, label) for each row of `rows`: did the target happen in [as_of, as_of + horizon)?

    Contacts are joined to the distinct as-of dates by time range first (cheap at any size),
    then counted per person and date.
    """
    t = spec.target
    prior = t.prior_days if t.kind == "escalation" else 0
    status = f"AND c.status IN {sql_list(t.statuses)}" if t.statuses else ""
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
            WHERE c.service IN {sql_list(t.services)} {status}
            GROUP BY c.person_id, d.as_of
        )
        SELECT r.person_id, r.as_of, ({label})::INTEGER AS label
        FROM {rows} r LEFT JOIN e USING (person_id, as_of)"""


def _bucket(offset: int) -> str:
    """A number in [0, 1) from 8 hex digits of the pseudonym: a stable split of people."""
    return f"('0x' || substr(person_id, {offset + 1}, 8))::UBIGINT / 4294967296.0"


def _in_cohort(spec: ModelSpec, age: str = "age") -> str:
    return f"{age} BETWEEN {spec.cohort.min_age} AND {spec.cohort.max_age}"


def team_cohorts_sql(spec: ModelSpec, dates: list[date]) -> str:
    """(person_id, team_id, as_of) of the model's cohort at each date, from the registrations: the
    same people as the snapshots' rows within the spec's ages, without needing the snapshots."""
    return f"""
        SELECT k.person_id, k.team_id, k.as_of
        FROM ({cohort_sql(_dates_sql(dates))}) k JOIN persons p USING (person_id)
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
            WHERE as_of IN (SELECT unnest({_dates_sql(split.train + split.test)}))
              AND {_in_cohort(spec)}
        )
        SELECT s.person_id, s.as_of, s.team_id,
               CASE WHEN s.as_of IN (SELECT unnest({_dates_sql(split.test)})) THEN 'test' ELSE 'train' END AS part,
               s.b_val AS person_draw, s.team_cohort, {cols}
        FROM s
        WHERE (s.as_of IN (SELECT unnest({_dates_sql(split.train)})) AND s.b_test >= {share})
           OR (s.as_of IN (SELECT unnest({_dates_sql(split.test)})) AND s.b_test < {share})
    """
    con.execute(q)
    return con.sql(f"""
        SELECT r.*, l.label, {age_band_sql('(year(r.as_of) - p.birth_year)')} AS age_band,
               coalesce(p.sex, 'unknown') AS sex, coalesce(p.ethnicity_group, 'unknown') AS ethnicity_group,
               coalesce(((p.imd_decile + 1) // 2)::VARCHAR, 'unknown') AS imd_quintile
        FROM _rows r JOIN ({label_sql(spec, '_rows')}) l USING (person_id, as_of)
        JOIN persons p USING (person_id)
        ORDER BY r.part, r.as_of, r.person_id
    """).pl()


def train(
    cfg: Config, model_name: str, *, key: bytes | None = None,
    progress: Callable[[str], None] | None = None, register: bool = True,
    max_train_dates: int | None = None, dask: str | None = None,
) -> TrainResult:
    """Train, evaluate, log and register `models/<model_name>.yml`; write its model card.

    `key` (the pseudonymisation key) lets a synthetic world's truth be matched to people for the
    oracle; `register=False` is a trial run: nothing goes to MLflow; `max_train_dates` keeps only
    the latest N training as-of dates; `dask`, a Dask scheduler's address, fits with LightGBM's Dask
    estimator on that cluster (not byte-identical to a fit on one machine).
    """
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    spec, cat, features = _spec(cfg, model_name, max_train_dates)
    with connect(cfg.warehouse, read_only=True) as con:
        split = timesplit(spec.schedule, spec.target.horizon_days, data_end(con, cfg))
        share = held_out_share(con, spec, split)
    say(f"features for {len(split.train)} training as-of dates, and {len(split.test)} test dates "
        f"for the {share:.0%} of people held out")
    build_features(cfg, split.train)
    # Only test people's rows are read at test dates (team sizes come from the registrations),
    # so only theirs are built: at 1,000,000 people, 50,000 rather than everyone.
    build_features(cfg, split.test, people=held_out_people_sql(share))
    champ = _champion(cfg, spec, cat) if register else None
    say("outcomes")
    train_df, test_df = _examples(cfg, spec, split, features + (champ.features if champ else []), share)
    X = train_df.select(features).to_numpy().astype(np.float64)
    y = train_df["label"].to_numpy().astype(int)
    draw = train_df["person_draw"].to_numpy()

    say(f"LightGBM on up to {min(train_df.height, spec.estimator.max_rows):,} rows, "
        f"{len(spec.estimator.search) + 1} candidate(s)")
    fit = fit_lightgbm(spec, X, y, draw, features, cfg.wobble.seed, dask=dask)
    val = fit.validation
    calibrator = fit_calibrator(spec.calibration, fit.predict(X[val]), y[val])
    say("baseline, oracle and champion")
    scorers, oracle_note = _scorers(cfg, key, spec, fit, calibrator, train_df, test_df, features, champ)

    say(f"evaluation ({spec.evaluation.bootstrap_replicates} bootstrap replicates)")
    evaluation = _evaluate(cfg, spec, split, test_df, scorers)
    evaluation.update(
        oracle_note=oracle_note, test_share=share, demo=cfg.wobble.demo,
        trained_at=datetime.now().strftime("%Y-%m-%d %H:%M"),
        split={"train": split.train, "test": split.test, "last_label_date": split.last_label_date,
               "data_end": split.data_end, "gap_days": split.gap_days},
        champion={"version": champ.version, "note": champ.note} if champ else None,
        training={"rows": train_df.height, "people": train_df["person_id"].n_unique(), "outcomes": int(y.sum()),
                  "validation_rows": int(val.sum()), "features": features, "candidates": fit.candidates,
                  "chosen": fit.chosen, "best_iteration": fit.best_iteration, "search_share": fit.search_share,
                  "fit_share": fit.fit_share,
                  "params": fit.params, "baseline_features": spec.baseline.features,
                  "estimator": "lightgbm.dask.DaskLGBMClassifier" if dask else "lightgbm.LGBMClassifier",
                  "monotone": dict(spec.estimator.monotone)},
    )
    say("SHAP summary")
    shap = shap_summary(fit.booster, test_df.select(features).to_numpy().astype(np.float64), features, cat,
                        cfg.wobble.seed, fit.best_iteration)
    evaluation["shap"] = {k: v for k, v in shap.items() if k != "sample"}
    from wobble.data_summary import summarise

    with connect(cfg.warehouse, read_only=True) as con:
        evaluation["data"] = summarise(con, spec, split, train_df, test_df)
    evaluation = _jsonable(evaluation)
    metrics = flat_metrics(evaluation)
    version = run_id = ""
    if register:
        say("MLflow")
        version, run_id, card_md, card_html = _log_to_mlflow(
            cfg, spec, fit, calibrator, features, metrics, evaluation, split, test_df, shap["sample"])
    else:
        from wobble.card import write_card

        card_md, card_html = write_card(cfg, spec=spec, evaluation=evaluation, version=None,
                                        shap_sample=shap["sample"])
    return TrainResult(spec.name, version, run_id, metrics, split, train_df.height, test_df.height, card_md,
                       card_html, shap["families"], time.perf_counter() - t0, evaluation)


def _spec(cfg: Config, model_name: str, max_train_dates: int | None):
    """The spec (with any override), the feature catalogue, and the model's features; checked."""
    spec = load_spec(cfg.models_dir, model_name)
    if max_train_dates:
        spec = spec.model_copy(update={"schedule": spec.schedule.model_copy(
            update={"max_train_dates": max_train_dates})})
    cat = load_catalogue(cfg.features_dir)
    features = spec.features or cat.predictors
    named = features + spec.baseline.features + list(spec.estimator.monotone)
    unknown = sorted({f for f in named if f not in cat.columns} | ({"age"} - set(cat.columns)))
    if unknown:
        raise WobbleError(f"{model_name}.yml names features not in the catalogue: {', '.join(unknown)}")
    return spec, cat, features


def _examples(cfg: Config, spec: ModelSpec, split: TimeSplit, features: list[str], share: float):
    """(training rows, test rows), `share` of people held out for test; or an error saying there
    are too few rows to learn from."""
    columns = list(dict.fromkeys(features + spec.baseline.features))
    with connect(cfg.warehouse, read_only=True) as con:
        frame = load_rows(con, spec, split, columns, share)
    train_df = frame.filter(pl.col("part") == "train")
    test_df = frame.filter(pl.col("part") == "test")
    if train_df.height < 200 or test_df["label"].sum() < 5 or train_df["label"].sum() < 5:
        raise WobbleError(
            f"too little data to train {spec.name}: {train_df.height} training rows with "
            f"{int(train_df['label'].sum())} outcomes, {int(test_df['label'].sum())} test outcomes"
        )
    return train_df, test_df


def _scorers(cfg, key, spec, fit, calibrator, train_df, test_df, features, champ):
    """The model and everything it is compared with, scored on the test rows; and the oracle's note."""
    from wobble.evaluate import Scorer

    raw = fit.predict(test_df.select(features).to_numpy().astype(np.float64))
    baseline = fit_baseline(train_df.select(spec.baseline.features).to_numpy(), train_df["label"].to_numpy())
    p_base = baseline.predict_proba(test_df.select(spec.baseline.features).to_numpy())[:, 1]
    scorers = [Scorer("model", raw, calibrator.predict(raw)), Scorer("baseline", p_base, p_base)]
    oracle, oracle_note = _oracle_scores(cfg, key, spec, test_df)
    if oracle is not None:
        scorers.append(Scorer("oracle", oracle, oracle))
    if champ is not None:
        raw_c = champ.booster.predict(test_df.select(champ.features).to_numpy().astype(np.float64))
        scorers.append(Scorer("champion", raw_c, champ.calibrator.predict(raw_c)))
    return scorers, oracle_note


# --- fitting ------------------------------------------------------------------------------------


@dataclass
class Fit:
    booster: object
    best_iteration: int
    params: dict
    chosen: int  # index into candidates
    candidates: list[dict]  # each: params, validation log loss, best iteration, seconds, rows
    search_share: float  # share of training people the candidates were compared on
    fit_share: float  # share of training people the kept model was fitted on
    validation: np.ndarray  # the rows that stopped boosting (and fit the calibrator)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(X, num_iteration=self.best_iteration)


def fit_lightgbm(spec: ModelSpec, X: np.ndarray, y: np.ndarray, draw: np.ndarray, features: list[str],
                 seed: int, dask: str | None = None) -> Fit:
    """Fit each candidate setting with early stopping on the validation slice; keep the best.

    `draw` is each row's person draw in [0, 1): people below validation_share (vs) validate,
    the rest fit. A share s of people means draws in [0, vs·s) validate and [vs, vs + (1 − vs)·s)
    fit, so both slices shrink together. The kept model fits at most `max_rows` rows; candidates
    are compared on at most `search_rows`, and the winner is refitted if they used fewer.
    With `dask` (a scheduler's address) each fit runs on that cluster (`_fit_one_dask`).
    """
    fit_one = partial(_fit_one_dask, dask) if dask else _fit_one
    est = spec.estimator
    vs = est.validation_share
    n_fit = max(1, int((draw >= vs).sum()))

    def people(share: float) -> tuple[np.ndarray, np.ndarray]:
        return (draw >= vs) & (draw < vs + (1 - vs) * share), draw < vs * share

    fit_share = min(1.0, est.max_rows / n_fit)
    search_share = min(fit_share, est.search_rows / n_fit)
    options = [{**est.params, **overrides} for overrides in [{}] + list(est.search)]
    candidates, models = [], []
    if len(options) > 1:
        fit_rows, val_rows = people(search_share)
        for params in options:
            model, seconds = fit_one(est, params, X, y, fit_rows, val_rows, features, seed)
            models.append(model)
            candidates.append({"params": params, "validation_log_loss": round(model.best_loss, 6),
                               "best_iteration": model.best_iteration, "seconds": seconds,
                               "rows": int(fit_rows.sum())})
    chosen = min(range(len(candidates)), key=lambda i: candidates[i]["validation_log_loss"]) if candidates else 0
    fit_rows, val_rows = people(fit_share)
    if candidates and search_share == fit_share:
        final = models[chosen]
    else:
        final, seconds = fit_one(est, options[chosen], X, y, fit_rows, val_rows, features, seed)
        if not candidates:
            candidates = [{"params": options[0], "validation_log_loss": round(final.best_loss, 6),
                           "best_iteration": final.best_iteration, "seconds": seconds, "rows": int(fit_rows.sum())}]
    return Fit(final.booster, final.best_iteration, options[chosen], chosen, candidates,
               search_share if len(options) > 1 else fit_share, fit_share, val_rows)


@dataclass
class _Fitted:
    booster: object
    best_iteration: int
    best_loss: float


def _fit_one(est, params: dict, X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, val_rows: np.ndarray,
             features: list[str], seed: int) -> tuple[_Fitted, float]:
    """One LightGBM fit with early stopping on `val_rows`: (fitted, seconds)."""
    import lightgbm as lgb

    t = time.perf_counter()
    monotone = [est.monotone.get(f, 0) for f in features]
    model = lgb.LGBMClassifier(
        **params, objective="binary", random_state=seed, deterministic=True, force_row_wise=True,
        n_jobs=THREADS, verbose=-1, **({"monotone_constraints": monotone} if any(monotone) else {}),
    )
    model.fit(
        X[fit_rows], y[fit_rows], eval_X=(X[val_rows],), eval_y=(y[val_rows],), eval_metric="binary_logloss",
        feature_name=features, callbacks=[lgb.early_stopping(est.early_stopping_rounds, verbose=False)],
    )
    fitted = _Fitted(model.booster_, int(model.best_iteration_ or model.n_estimators),
                     float(model.best_score_["valid_0"]["binary_logloss"]))
    return fitted, round(time.perf_counter() - t, 1)


def _fit_one_dask(address: str, est, params: dict, X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray,
                  val_rows: np.ndarray, features: list[str], seed: int) -> tuple[_Fitted, float]:
    """As `_fit_one`, with `lightgbm.dask.DaskLGBMClassifier` on the Dask cluster at `address`.

    The fitting rows are sent from this process and split evenly over the workers (data-parallel:
    each builds histograms of its share and they are merged). Dask training cannot stop early, so
    every tree is grown and the model is then cut where early stopping would have stopped it, judged here on the same
    validation rows. The trees differ slightly from a one-machine fit; the metrics do not, much.
    """
    import dask.array as da
    import lightgbm as lgb
    from distributed import Client

    t = time.perf_counter()
    monotone = [est.monotone.get(f, 0) for f in features]
    X_fit, y_fit = X[fit_rows], y[fit_rows]
    try:
        client = Client(address, timeout=60)
    except OSError as exc:
        raise WobbleError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    with client:
        chunk = -(-y_fit.size // max(1, len(client.scheduler_info()["workers"])))
        model = lgb.DaskLGBMClassifier(
            client=client, **params, objective="binary", random_state=seed, deterministic=True,
            force_row_wise=True, verbose=-1,  # each worker uses its own threads
            **({"monotone_constraints": monotone} if any(monotone) else {}),
        )
        # LightGBM prints its port search on stdout (which carries --json); the rows travel in the graph
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sending large graph")
            model.fit(da.from_array(X_fit, chunks=(chunk, X.shape[1])), da.from_array(y_fit, chunks=chunk),
                      feature_name=features)
        booster = model.to_local().booster_
    X_val, y_val = X[val_rows], y[val_rows]
    raw, losses = np.zeros(y_val.size), []
    for k in range(booster.num_trees()):  # validation log loss after each tree, as early stopping sees it
        raw += booster.predict(X_val, raw_score=True, start_iteration=k, num_iteration=1)
        p = np.clip(1 / (1 + np.exp(-raw)), 1e-15, 1 - 1e-15)
        losses.append(float(-np.mean(y_val * np.log(p) + (1 - y_val) * np.log(1 - p))))
    best = early_stop(losses, est.early_stopping_rounds)
    return _Fitted(booster, best + 1, losses[best]), round(time.perf_counter() - t, 1)


def early_stop(losses: list[float], rounds: int) -> int:
    """The index of the best loss before `rounds` trees in a row fail to improve on it (LightGBM's rule)."""
    best = 0
    for i, loss in enumerate(losses):
        if loss < losses[best]:
            best = i
        elif i - best >= rounds:
            break
    return best


def fit_calibrator(method: str, raw: np.ndarray, y: np.ndarray):
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        return _Calibrator(IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y))
    from sklearn.linear_model import LogisticRegression

    from wobble.metrics import logit

    return _Calibrator(LogisticRegression(C=1e6, max_iter=1000).fit(logit(raw).reshape(-1, 1), y), platt=True)


class _Calibrator:
    """Maps LightGBM's raw probability to a calibrated one (isotonic or Platt)."""

    def __init__(self, model, platt: bool = False):
        self.model = model
        self.platt = platt

    def predict(self, raw: np.ndarray) -> np.ndarray:
        if self.platt:
            from wobble.metrics import logit

            return self.model.predict_proba(logit(raw).reshape(-1, 1))[:, 1]
        return self.model.predict(raw)


def _log1p_counts(a: np.ndarray) -> np.ndarray:
    return np.log1p(np.nan_to_num(np.clip(a, 0, None)))


def fit_baseline(X: np.ndarray, y: np.ndarray):
    """Logistic regression on log counts: what most existing risk tools amount to."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        FunctionTransformer(_log1p_counts), StandardScaler(), LogisticRegression(max_iter=2000),
    ).fit(X.astype(np.float64), y)


# --- scorers beside the model -------------------------------------------------------------------


def _oracle_scores(cfg: Config, key: bytes | None, spec: ModelSpec, test_df: pl.DataFrame):
    """The simulator's true p_crisis for each test row, where the world is synthetic; and why not."""
    truth = cfg.truth
    if truth is None or not (truth / "risk.parquet").exists():
        return None, "no simulator truth: real data has no oracle"
    t = spec.target
    if t.kind != "crisis" or set(t.services) != set(CRISIS_SERVICES) or t.statuses:
        return None, "the simulator's true risk is of a crisis within its horizon, not this target"
    if key is None:
        return None, "the pseudonymisation key was not given, so the truth cannot be matched to people"
    import duckdb

    from wobble.identifiers import pseudonymise_many

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    risk = con.sql(
        f"SELECT nhs_number, as_of, horizon_days, p_crisis FROM read_parquet('{truth / 'risk.parquet'}') "
        f"WHERE as_of IN (SELECT unnest({_dates_sql(sorted(set(test_df['as_of'].to_list())))}))"
    ).pl()
    con.close()
    if risk.height and int(risk["horizon_days"][0]) != t.horizon_days:
        return None, f"the simulator's true risk is over {int(risk['horizon_days'][0])} days, not {t.horizon_days}"
    nhs = risk["nhs_number"].unique().to_list()
    mapping = pl.DataFrame({"nhs_number": nhs, "person_id": pseudonymise_many(key, nhs)})
    risk = risk.join(mapping, on="nhs_number").select("person_id", "as_of", "p_crisis")
    joined = test_df.select("person_id", "as_of").join(risk, on=["person_id", "as_of"], how="left",
                                                        maintain_order="left")
    return joined["p_crisis"].to_numpy().astype(float), "the simulator's own probability (synthetic data only)"


@dataclass
class _Champion:
    version: str
    booster: object
    calibrator: object
    features: list[str]
    note: str


def _champion(cfg: Config, spec: ModelSpec, cat) -> _Champion | None:
    """The current champion of this model, if there is one whose features still exist."""
    from mlflow.exceptions import MlflowException

    from wobble.tracking import client, load_version

    try:
        mv = client(cfg).get_model_version_by_alias(spec.name, "champion")
    except MlflowException:
        return None
    booster, calibrator, features, _run = load_version(cfg, spec.name, str(mv.version))
    missing = [f for f in features if f not in cat.columns]
    if missing:
        return None
    return _Champion(str(mv.version), booster, calibrator, features,
                     f"version {mv.version}, scored on this test period's rows")


# --- evaluation -------------------------------------------------------------------------------


def _evaluate(cfg: Config, spec: ModelSpec, split: TimeSplit, test_df: pl.DataFrame, scorers) -> dict:
    from wobble.evaluate import EvaluationRows, evaluate
    from wobble.metrics import Capacity

    codes = test_df.select(
        pl.col("person_id").rank("dense").cast(pl.Int64) - 1,
        (pl.col("team_id") + "|" + pl.col("as_of").cast(pl.String)).rank("dense").cast(pl.Int64) - 1,
    ).to_numpy()
    rows = EvaluationRows(
        y=test_df["label"].to_numpy().astype(np.float64), person=codes[:, 0], team_week=codes[:, 1],
        cohort=test_df["team_cohort"].to_numpy().astype(np.float64),
        attributes={a: test_df[a].cast(pl.String).to_numpy() for a in spec.fairness_groups},
    )
    lead = None
    if spec.target.kind == "crisis":
        listed = {s.name: Capacity(np.where(np.isfinite(s.rank), s.rank, -np.inf), rows.team_week,
                                   spec.capacity_per_team, rows.cohort).listed()
                  for s in scorers if s.name in ("model", "baseline")}
        lead = _lead_events(cfg, spec, split, test_df, listed, codes[:, 0])
    tol = spec.fairness_tolerance
    return evaluate(
        rows, scorers, capacity=spec.capacity_per_team, bins=spec.evaluation.calibration_bins,
        replicates=spec.evaluation.bootstrap_replicates, seed=cfg.wobble.seed,
        threshold=spec.small_number_threshold, lead=lead,
        tolerance={"auroc": tol.auroc, "observed_to_expected": tol.observed_to_expected,
                   "fnr_at_capacity": tol.fnr_at_capacity, "fpr_at_capacity": tol.fpr_at_capacity},
    )


def _lead_events(cfg: Config, spec: ModelSpec, split: TimeSplit, test_df: pl.DataFrame,
                 listed: dict[str, np.ndarray], person_codes: np.ndarray):
    """Each crisis day of a test person in the test window, and days since their first listing
    (by each scorer) at a test as-of within the horizon before it."""
    from wobble.evaluate import LeadEvents

    h = spec.target.horizon_days
    people = test_df.select("person_id").with_columns(pl.Series("code", person_codes)).unique("person_id")
    frames = [test_df.filter(pl.Series(mask)).select("person_id", "as_of").with_columns(pl.lit(name).alias("scorer"))
              for name, mask in listed.items()]
    status = f"AND c.status IN {sql_list(spec.target.statuses)}" if spec.target.statuses else ""
    first, last = split.test[0], split.test[-1] + timedelta(days=h)
    with connect(cfg.warehouse, read_only=True) as con:
        con.register("_people", people)
        con.register("_listed", pl.concat(frames))
        ev = con.sql(f"""
            WITH ev AS (
                SELECT DISTINCT c.person_id, c.occurred_at::DATE AS day
                FROM contacts c SEMI JOIN _people p ON c.person_id = p.person_id
                WHERE c.service IN {sql_list(spec.target.services)} {status}
                  AND c.occurred_at >= DATE '{first}' AND c.occurred_at < DATE '{last}'
            )
            SELECT ev.person_id, ev.day, p.code,
                   {", ".join(f"min(CASE WHEN l.scorer = '{n}' THEN ev.day - l.as_of END) AS lead_{n}"
                              for n in listed)}
            FROM ev JOIN _people p USING (person_id)
            LEFT JOIN _listed l ON l.person_id = ev.person_id AND l.as_of <= ev.day
                               AND ev.day < l.as_of + INTERVAL {h} DAY
            GROUP BY ev.person_id, ev.day, p.code
            ORDER BY ev.person_id, ev.day
        """).pl()
    return LeadEvents(ev["code"].to_numpy(),
                      {n: ev[f"lead_{n}"].cast(pl.Float64).fill_null(np.nan).to_numpy() for n in listed})


def flat_metrics(evaluation: dict) -> dict[str, float]:
    """The headline numbers as one flat dict (run summary, CLI, MLflow): value, _low, _high."""
    out: dict[str, float] = {}
    for name, metrics in evaluation["scorers"].items():
        prefix = "" if name == "model" else f"{name}_"
        for m, e in metrics.items():
            if e["value"] is None:
                continue
            out[prefix + m] = e["value"]
            if e["low"] is not None:
                out[f"{prefix}{m}_low"], out[f"{prefix}{m}_high"] = e["low"], e["high"]
    for other, diffs in evaluation["differences"].items():
        for m, e in diffs.items():
            if e["value"] is not None:
                out[f"diff_{other}_{m}"] = e["value"]
                if e["low"] is not None:
                    out[f"diff_{other}_{m}_low"], out[f"diff_{other}_{m}_high"] = e["low"], e["high"]
    if evaluation.get("skill_ratio"):
        sr = evaluation["skill_ratio"]
        out["skill_ratio"] = sr["value"]
        if sr["low"] is not None:
            out["skill_ratio_low"], out["skill_ratio_high"] = sr["low"], sr["high"]
    out["prevalence"] = evaluation["prevalence"]
    out["best_iteration"] = float(evaluation["training"]["best_iteration"])
    for name, lt in (evaluation.get("lead_time") or {}).items():
        prefix = "" if name == "model" else f"{name}_"
        for k in ("share_preceded_by_listing", "median_days"):
            if lt[k]["value"] is not None:
                out[f"{prefix}lead_{k}"] = lt[k]["value"]
    return out


def shap_summary(booster, Xt: np.ndarray, features: list[str], cat, seed: int, iteration: int) -> dict:
    """Mean |SHAP| per feature and family, and each feature's direction, on a sample of test rows.

    TreeSHAP through LightGBM's own `pred_contrib` (exact for trees). Direction: the sign of the
    correlation between a feature's value and its contribution (+1: higher values raise risk).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(Xt.shape[0], size=min(5000, Xt.shape[0]), replace=False))
    contrib = booster.predict(Xt[idx], pred_contrib=True, num_iteration=iteration)[:, :-1]
    mean_abs = np.abs(contrib).mean(axis=0)
    direction = []
    for j in range(len(features)):
        x, c = Xt[idx, j], contrib[:, j]
        ok = np.isfinite(x)
        r = np.corrcoef(x[ok], c[ok])[0, 1] if ok.sum() > 2 and x[ok].std() > 0 and c[ok].std() > 0 else 0.0
        direction.append(int(np.sign(r)) if np.isfinite(r) else 0)
    order = np.argsort(-mean_abs, kind="stable")
    per_feature = {features[j]: float(mean_abs[j]) for j in order}
    fam: dict[str, float] = {}
    for f, v in per_feature.items():
        fam[cat.get(f).family] = fam.get(cat.get(f).family, 0.0) + v
    return {
        "features": per_feature,
        "descriptions": {f: cat.get(f).description for f in features},
        "families": dict(sorted(fam.items(), key=lambda kv: -kv[1])),
        "direction": {features[j]: direction[j] for j in order},
        "rows": int(idx.size),
        "sample": (contrib, Xt[idx]),
    }


# --- MLflow -------------------------------------------------------------------------------------


def _jsonable(evaluation: dict) -> dict:
    """The evaluation exactly as evaluation.json will hold it (dates as ISO strings)."""
    return json.loads(json.dumps(evaluation, default=str))


def _log_to_mlflow(cfg, spec, fit, calibrator, features, metrics, evaluation, split, test_df, shap_sample):
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    from wobble.card import write_card
    from wobble.tracking import setup

    exp_id = setup(cfg)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{spec.name}-{split.data_end}") as run:
        mlflow.log_params({f"lgbm.{k}": v for k, v in fit.params.items()})
        mlflow.log_params({
            "model_name": spec.name, "target": spec.target.kind,
            "horizon_days": spec.target.horizon_days, "calibration": spec.calibration,
            "train_as_ofs": ",".join(d.isoformat() for d in split.train),
            "test_as_ofs": ",".join(d.isoformat() for d in split.test),
            "gap_days": split.gap_days, "rows_train": evaluation["training"]["rows"],
            "rows_test": evaluation["rows"], "n_features": len(features), "seed": cfg.wobble.seed,
            "best_iteration": fit.best_iteration, "candidates": len(fit.candidates),
            "capacity_per_team": spec.capacity_per_team,
            "bootstrap_replicates": spec.evaluation.bootstrap_replicates,
            "champion_compared": (evaluation["champion"] or {}).get("version", "none"),
        })
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_metrics(_subgroup_metrics(evaluation))
        example = test_df.select(features).head(5).cast(pl.Float64).to_pandas()  # scoring passes doubles
        signature = infer_signature(example, fit.predict(example.to_numpy(dtype=np.float64)))
        info = mlflow.lightgbm.log_model(
            fit.booster, name="model", signature=signature, input_example=example,
            pip_requirements=["lightgbm>=4.7,<5"], registered_model_name=spec.name,
        )
        version = str(info.registered_model_version)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            with open(d / "calibrator.pkl", "wb") as f:
                pickle.dump(calibrator, f)
            (d / "features.json").write_text(json.dumps(features))
            (d / "evaluation.json").write_text(json.dumps(evaluation, indent=1, default=str))
            (d / "shap_summary.json").write_text(json.dumps(evaluation["shap"], indent=1))
            (d / f"{spec.name}.yml").write_text((cfg.models_dir / f"{spec.name}.yml").read_text())
            mlflow.log_artifacts(tmp, artifact_path="wobble")
        card_md, card_html = write_card(cfg, spec=spec, evaluation=evaluation, version=version,
                                        shap_sample=shap_sample, run_id=run.info.run_id)
    return version, run.info.run_id, card_md, card_html


def _subgroup_metrics(evaluation: dict) -> dict[str, float]:
    out = {}
    for g in evaluation["subgroups"]:
        for m in ("auroc", "observed_to_expected", "fnr_at_capacity", "fpr_at_capacity"):
            e = g["metrics"].get(m)
            if e and e["value"] is not None:
                name = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in f"{g['attribute']}.{g['group']}")
                out[f"subgroup.{name}.{m}"] = e["value"]
    return out
