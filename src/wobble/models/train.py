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

import json
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

import wobble.models.tracking  # noqa: F401  (environment defaults for MLflow and LightGBM, set before either loads)
from wobble.core.calendar import data_end
from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.sql import date_literal, in_list
from wobble.core.warehouse import connect
from wobble.features import build_features, data_start, load_catalogue
from wobble.models.card import write_card
from wobble.models.cohort import drawn_people_sql, fitting_rows, held_out_people_sql, held_out_share, load_rows
from wobble.models.data_summary import summarise
from wobble.models.evaluate import EvaluationRows, LeadEvents, evaluate
from wobble.models.explain import shap_summary
from wobble.models.fit import (
    feature_matrix,
    fit_calibrator,
    fit_lightgbm,
    own_columns,
    sample_sql,
    samples_everyone,
)
from wobble.models.grading import burn_in, comparator_spec, fit_best_observable, fit_comparator, grade_lists
from wobble.models.metrics import Capacity
from wobble.models.scorers import _champion, _scorers
from wobble.models.spec import ModelSpec, TimeSplit, load_spec, timesplit
from wobble.models.tracking import setup


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
    champ = _champion(cfg, spec, cat) if register else None  # first: a store it cannot open fails at once
    compared = comparator_spec(cfg, spec)
    with connect(cfg.warehouse, read_only=True) as con:
        split = _split(con, cfg, spec, cat)
        share = held_out_share(con, spec, split)
        n_fit = fitting_rows(con, spec, split, share)
        compared_fit = fitting_rows(con, compared[1], split, share) if compared else None
    samples = [(spec, n_fit)] + ([(compared[1], compared_fit)] if compared else [])
    people = _people_to_build(share, samples)
    say(f"features for {len(split.train)} training as-of dates"
        + (" for the training people the fits read" if people else "")
        + f", and {len(split.test)} test dates for the {share:.0%} of people held out")
    build_features(cfg, split.train, people=people)
    # Only test people's rows are read at test dates (team sizes come from the registrations),
    # so only theirs are built: at 1,000,000 people, 50,000 rather than everyone.
    build_features(cfg, burn_in(split) + split.test, people=held_out_people_sql(share))
    say("the crisis-now ranking the lists are compared with")
    comparator = fit_comparator(cfg, compared, split, share, cat, compared_fit)
    say("outcomes")
    read = features + (champ.features if champ else [])
    train_df = _examples(cfg, spec, split, read, share, n_fit)
    X = feature_matrix(train_df, features)
    # From here on X holds the features: the frame keeps only what else is read of it, copied so it
    # holds none of them (`own_columns`; at 1,000,000 people, over a gigabyte each).
    train_df = own_columns(train_df, *(c for c in train_df.columns if c not in set(read) - set(spec.baseline.features)))
    y = train_df["label"].to_numpy().astype(int)
    draw = train_df["person_draw"].to_numpy()

    say(f"LightGBM on up to {min(train_df.height, spec.estimator.max_rows):,} rows, "
        f"{len(spec.estimator.search) + 1} candidate(s)")
    fit = fit_lightgbm(spec, X, y, draw, features, cfg.wobble.seed, dask=dask, n_fit=n_fit)
    val = fit.validation
    calibrator = fit_calibrator(spec.calibration, fit.predict(X[val]), y[val])
    best = fit_best_observable(cfg, key, spec, split, train_df, X, features, n_fit)
    del X  # the last fit is made: nothing after this is held beside it (at 1,000,000 people, 1.7 GB)
    # the test rows are read only now, so they are not held during the fits (at 1,000,000 people, a gigabyte)
    test_df = _test_rows(cfg, spec, split, read, share)
    say("baseline, oracle and champion")
    scorers, oracle_note = _scorers(cfg, key, spec, fit, calibrator, train_df, test_df, features, champ)

    say(f"evaluation ({spec.evaluation.bootstrap_replicates} bootstrap replicates)")
    evaluation = _evaluate(cfg, spec, split, test_df, scorers)
    evaluation.update(_training_facts(cfg, spec, split, share, champ, fit, train_df, y, features, dask),
                      oracle_note=oracle_note)
    say("SHAP summary")
    shap = shap_summary(fit.booster, test_df, features, cat, cfg.wobble.seed, fit.best_iteration)
    evaluation["shap"] = {k: v for k, v in shap.items() if k != "sample"}
    with connect(cfg.warehouse, read_only=True) as con:
        evaluation["data"] = summarise(con, spec, split, train_df, test_df)
    rows_test, head = test_df.height, test_df.head(5)
    del test_df  # the grading reads rows of its own (at 1,000,000 people the test rows were a gigabyte)
    say("lists: this model's beside today's crisis-now ranking and the truth")
    evaluation["lists"] = grade_lists(cfg, key, spec, split, share, fit, features, cat, best, comparator)
    evaluation = _jsonable(evaluation)
    metrics = flat_metrics(evaluation)
    version = run_id = ""
    if register:
        say("MLflow")
        version, run_id, card_md, card_html = _log_to_mlflow(
            cfg, spec, fit, calibrator, features, metrics, evaluation, split, head, shap["sample"])
    else:
        card_md, card_html = write_card(cfg, spec=spec, evaluation=evaluation, version=None,
                                        shap_sample=shap["sample"])
    return TrainResult(spec.name, version, run_id, metrics, split, train_df.height, rows_test, card_md,
                       card_html, shap["families"], time.perf_counter() - t0, evaluation)


def _training_facts(cfg: Config, spec: ModelSpec, split: TimeSplit, share: float, champ, fit, train_df, y,
                    features: list[str], dask: str | None) -> dict:
    """What the card says of how the model was trained: the split, the rows, the candidates."""
    val = fit.validation
    return dict(
        test_share=share, demo=cfg.wobble.demo, trained_at=datetime.now().strftime("%Y-%m-%d %H:%M"),
        split={"train": split.train, "test": split.test, "last_label_date": split.last_label_date,
               "data_end": split.data_end, "gap_days": split.gap_days},
        champion={"version": champ.version, "note": champ.note} if champ else None,
        training={"rows": train_df.height, "people": train_df["person_id"].n_unique(), "outcomes": int(y.sum()),
                  "validation_rows": int(val.sum()), "features": features, "candidates": fit.candidates,
                  "chosen": fit.chosen, "best_iteration": fit.best_iteration, "search_share": fit.search_share,
                  "fit_share": fit.fit_share, "params": fit.params, "baseline_features": spec.baseline.features,
                  "estimator": "lightgbm.dask.DaskLGBMClassifier" if dask else "lightgbm.LGBMClassifier",
                  "monotone": dict(spec.estimator.monotone)},
    )


def _split(con, cfg: Config, spec: ModelSpec, cat) -> TimeSplit:
    """The spec's schedule as dates on this warehouse's data: training starts no earlier than the
    history the features and the label read (`timesplit`) after contacts and tags both begin."""
    starts = [d for d in (data_start(con, "contacts"), data_start(con, "tags")) if d is not None]
    return timesplit(spec.schedule, spec.target.horizon_days, data_end(con, cfg), data_start=max(starts, default=None),
                     history_days=max(cat.lookback_days, spec.target.history_days))


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


def _people_to_build(share: float, samples: list[tuple[ModelSpec, int]]) -> str | None:
    """SQL over `person_id`: the training people whose rows at the training dates some fit reads,
    for each (spec, its fitting rows: `fitting_rows`) in `samples` (this model and its comparator; see
    `sample_sql`); None when the fits read every training person's, and so everyone's are built.

    A fit reads at most `max_rows` rows: at 1,000,000 people and 33 training dates, a million of
    25 million, so building the snapshots of the rest would be work nobody reads."""
    if all(samples_everyone(s, d) for s, d in samples):
        return None
    return " OR ".join(f"({drawn_people_sql(share, sample_sql(s, d))})" for s, d in samples)


def _examples(cfg: Config, spec: ModelSpec, split: TimeSplit, features: list[str], share: float,
              n_fit: int) -> pl.DataFrame:
    """The training rows, `share` of people held out for test; or an error saying there are too
    few rows to learn from. `n_fit`: how many training rows fit in all (`fitting_rows`).

    The training rows are those the fit will use (`sample_sql`): at 1,000,000 people and 33 dates,
    a million or so of 25 million, read without reading the rest."""
    columns = list(dict.fromkeys(features + spec.baseline.features))
    with connect(cfg.warehouse, read_only=True) as con:
        train_df = load_rows(con, spec, split, columns, share, test=False, draws=sample_sql(spec, n_fit))
    if train_df.height < 200 or train_df["label"].sum() < 5:
        raise _too_little(spec, "train", train_df)
    return train_df


def _test_rows(cfg: Config, spec: ModelSpec, split: TimeSplit, features: list[str], share: float) -> pl.DataFrame:
    """The test rows (test dates, held-out people) with `features`; or an error if they hold too
    few outcomes to evaluate on."""
    columns = list(dict.fromkeys(features + spec.baseline.features))
    with connect(cfg.warehouse, read_only=True) as con:
        test_df = load_rows(con, spec, split, columns, share, train=False)
    if test_df["label"].sum() < 5:
        raise _too_little(spec, "test", test_df)
    return test_df


def _too_little(spec: ModelSpec, step: str, rows: pl.DataFrame) -> WobbleError:
    """The one line for too few rows or outcomes to `step` ("train" or "test") on: it names the outcome,
    since a target the data rarely show (few concern tags, say) is mended in the model's spec."""
    which = "training" if step == "train" else step
    return WobbleError(f"too little data to {step} {spec.name}: {rows.height} {which} rows with "
                       f"{int(rows['label'].sum())} outcomes ({spec.target.outcome_phrase}); if the data "
                       f"rarely show that, change its target in models/{spec.name}.yml")


# --- evaluation ---------------------------------------------------------------------------------


def _evaluate(cfg: Config, spec: ModelSpec, split: TimeSplit, test_df: pl.DataFrame, scorers) -> dict:
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
    (by each scorer) at a test as-of within the horizon before it: the longest such lead."""
    h = spec.target.horizon_days
    people = test_df.select("person_id").with_columns(pl.Series("code", person_codes)).unique("person_id")
    frames = [test_df.filter(pl.Series(mask)).select("person_id", "as_of").with_columns(pl.lit(name).alias("scorer"))
              for name, mask in listed.items()]
    status = f"AND c.status IN {in_list(spec.target.statuses)}" if spec.target.statuses else ""
    first, last = split.test[0], split.test[-1] + timedelta(days=h)
    with connect(cfg.warehouse, read_only=True) as con:
        con.register("_people", people)
        con.register("_listed", pl.concat(frames))
        ev = con.sql(f"""
            WITH ev AS (
                SELECT DISTINCT c.person_id, c.occurred_at::DATE AS day
                FROM contacts c SEMI JOIN _people p ON c.person_id = p.person_id
                WHERE c.service IN {in_list(spec.target.services)} {status}
                  AND c.occurred_at >= {date_literal(first)} AND c.occurred_at < {date_literal(last)}
            )
            SELECT ev.person_id, ev.day, p.code,
                   {", ".join(f"max(CASE WHEN l.scorer = '{n}' THEN ev.day - l.as_of END) AS lead_{n}"
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
    """The headline numbers as one flat dict (run summary, CLI, MLflow): value, _low, _high; and
    each graded list's figures as `list_<list>_<figure>` (`grading.figures`), with `_people` where
    a median is over people."""
    out: dict[str, float] = {}

    def put(key: str, e: dict) -> None:
        if e["value"] is None:
            return
        out[key] = e["value"]
        if e["low"] is not None:
            out[f"{key}_low"], out[f"{key}_high"] = e["low"], e["high"]

    for name, metrics in evaluation["scorers"].items():
        prefix = "" if name == "model" else f"{name}_"
        for m, e in metrics.items():
            put(prefix + m, e)
    for other, diffs in evaluation["differences"].items():
        for m, e in diffs.items():
            put(f"diff_{other}_{m}", e)
    if evaluation.get("skill_ratio"):
        put("skill_ratio", evaluation["skill_ratio"])
    out["prevalence"] = evaluation["prevalence"]
    out["best_iteration"] = float(evaluation["training"]["best_iteration"])
    for name, lt in (evaluation.get("lead_time") or {}).items():
        prefix = "" if name == "model" else f"{name}_"
        for k in ("share_preceded_by_listing", "median_days"):
            if lt[k]["value"] is not None:
                out[f"{prefix}lead_{k}"] = lt[k]["value"]
    for name, figures in ((evaluation.get("lists") or {}).get("lists") or {}).items():
        for f, e in figures.items():
            if not isinstance(e, dict):  # how many rows and people it listed
                out[f"list_{name}_{f}"] = float(e)
                continue
            put(f"list_{name}_{f}", e)
            if "people" in e:
                out[f"list_{name}_{f}_people"] = float(e["people"])
    return out


# --- MLflow -------------------------------------------------------------------------------------


def _jsonable(evaluation: dict) -> dict:
    """The evaluation exactly as evaluation.json will hold it (dates as ISO strings)."""
    return json.loads(json.dumps(evaluation, default=str))


def _log_to_mlflow(cfg, spec, fit, calibrator, features, metrics, evaluation, split, head, shap_sample):
    """Log the run, register the model (`head`: a few test rows, its input example) and write its card."""
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature


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
        example = head.select(features).cast(pl.Float64).to_pandas()  # scoring passes doubles
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
