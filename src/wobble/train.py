"""Train: feature snapshots + outcomes → a calibrated LightGBM model in MLflow, and its card.

Reads `feature_snapshots` (built here for the spec's as-of dates), `persons` and `contacts`
(for outcomes); writes an MLflow run (params, metrics, model, calibrator, feature list, card)
and a registered model version under the spec's name. One row per (person_id, as_of) is one
training example; its label is whether the target happened in [as_of, as_of + horizon).

Validation is temporal and by person: the model is fitted on earlier as-of dates for one set of
people and tested on later dates, never seen in training, for a different set of people; the
last training outcome ends before the first test date (`TimeSplit.gap_days`).
"""

from __future__ import annotations

import json
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl

from wobble import metrics as M
from wobble.config import Config
from wobble.errors import WobbleError
from wobble.features import build_features, load_catalogue
from wobble.spec import ModelSpec, TimeSplit, load_spec, monday_on_or_before, timesplit
from wobble.vocab import age_band_sql, sql_list
from wobble.warehouse import connect, scalar

SEED_OFFSET = 0


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
    from datetime import timedelta

    return monday_on_or_before(last + timedelta(days=1))


def label_sql(spec: ModelSpec, snapshots: str = "feature_snapshots") -> str:
    """(person_id, as_of, label): did the target happen in [as_of, as_of + horizon)?"""
    h = spec.target.horizon_days
    services = sql_list(spec.target.services)
    if spec.target.kind == "crisis":
        return f"""
            SELECT f.person_id, f.as_of, count(c.person_id) > 0 AS label
            FROM {snapshots} f LEFT JOIN contacts c
              ON c.person_id = f.person_id AND c.service IN {services}
             AND c.occurred_at >= f.as_of AND c.occurred_at < f.as_of + INTERVAL {h} DAY
            GROUP BY f.person_id, f.as_of"""
    # escalation: contacts in the horizon at least double the person's own rate over the
    # previous 180 days, and at least min_contacts of them
    return f"""
        SELECT f.person_id, f.as_of,
               count(c.person_id) FILTER (WHERE c.occurred_at >= f.as_of) AS after_n,
               count(c.person_id) FILTER (WHERE c.occurred_at < f.as_of) AS before_n,
               after_n >= {spec.target.min_contacts}
                 AND after_n >= 2 * before_n * {h} / 180.0 AS label
        FROM {snapshots} f LEFT JOIN contacts c
          ON c.person_id = f.person_id AND c.service IN {services}
         AND c.occurred_at >= f.as_of - INTERVAL 180 DAY
         AND c.occurred_at < f.as_of + INTERVAL {h} DAY
        GROUP BY f.person_id, f.as_of"""


def load_frame(con, spec: ModelSpec, as_ofs: list[date], features: list[str]) -> pl.DataFrame:
    """Features, label and fairness attributes for the cohort at `as_ofs`."""
    dates = "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in as_ofs) + "]"
    cols = ", ".join(f"f.{c}" for c in features)
    q = f"""
        WITH f AS (SELECT * FROM feature_snapshots WHERE as_of IN (SELECT unnest({dates}))),
        l AS ({label_sql(spec, 'f')})
        SELECT f.person_id, f.as_of, f.team_id, {cols}, l.label::INTEGER AS label,
               {age_band_sql('f.age')} AS age_band, p.sex,
               p.ethnicity_group, ((p.imd_decile + 1) // 2)::INTEGER AS imd_quintile
        FROM f JOIN l USING (person_id, as_of) JOIN persons p USING (person_id)
        WHERE f.age BETWEEN {spec.cohort.min_age} AND {spec.cohort.max_age}
        ORDER BY f.as_of, f.person_id
    """
    return con.sql(q).pl()


def person_bucket(person_id: pl.Expr, offset: int) -> pl.Expr:
    """A number in [0, 1) from the pseudonym's hex digits: a stable split of people."""
    return person_id.str.slice(offset, 8).str.to_integer(base=16) / 2**32


def train(
    cfg: Config, model_name: str, *, key: bytes | None = None,
    progress: Callable[[str], None] | None = None, register: bool = True,
) -> TrainResult:
    """Train, evaluate, log and register `models/<model_name>.yml`; write its model card."""
    import lightgbm as lgb

    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    spec = load_spec(cfg.models_dir, model_name)
    cat = load_catalogue(cfg.features_dir)
    features = spec.features or cat.predictors
    unknown = [f for f in features + spec.baseline.features if f not in cat.columns]
    if unknown:
        raise WobbleError(f"{model_name}.yml names features not in the catalogue: {', '.join(unknown)}")
    with connect(cfg.warehouse, read_only=True) as con:
        end = data_end(con, cfg)
    split = timesplit(spec.schedule, spec.target.horizon_days, end)
    say(f"features for {len(split.train) + len(split.test)} as-of dates")
    build_features(cfg, split.train + split.test)
    with connect(cfg.warehouse, read_only=True) as con:
        frame = load_frame(con, spec, split.train + split.test, features)
    frame = frame.with_columns(
        person_bucket(pl.col("person_id"), 0).alias("_b_test"),
        person_bucket(pl.col("person_id"), 8).alias("_b_val"),
    )
    share = spec.schedule.test_share_of_people
    train_df = frame.filter(pl.col("as_of").is_in(split.train) & (pl.col("_b_test") >= share))
    test_df = frame.filter(pl.col("as_of").is_in(split.test) & (pl.col("_b_test") < share))
    val_mask = (train_df["_b_val"] < spec.estimator.validation_share).to_numpy()
    if train_df.height < 200 or test_df["label"].sum() < 5:
        raise WobbleError(
            f"too little data to train {model_name}: {train_df.height} training rows, "
            f"{int(test_df['label'].sum())} test outcomes"
        )
    X = train_df.select(features).to_numpy().astype(np.float64)
    y = train_df["label"].to_numpy().astype(int)
    Xt = test_df.select(features).to_numpy().astype(np.float64)
    yt = test_df["label"].to_numpy().astype(int)

    say(f"LightGBM on {int((~val_mask).sum())} rows")
    params = dict(spec.estimator.params)
    model = lgb.LGBMClassifier(
        **params, random_state=cfg.wobble.seed, deterministic=True, force_row_wise=True,
        n_jobs=2, verbose=-1,
    )
    model.fit(
        X[~val_mask], y[~val_mask], eval_X=(X[val_mask],), eval_y=(y[val_mask],), eval_metric="binary_logloss",
        feature_name=features,
        callbacks=[lgb.early_stopping(spec.estimator.early_stopping_rounds, verbose=False)],
    )
    booster = model.booster_
    raw_val = booster.predict(X[val_mask], num_iteration=model.best_iteration_)
    calibrator = _fit_calibrator(spec.calibration, raw_val, y[val_mask])
    p_test = calibrator.predict(booster.predict(Xt, num_iteration=model.best_iteration_))

    say("baseline and metrics")
    baseline = _fit_baseline(train_df.select(spec.baseline.features).to_numpy(), y)
    p_base = baseline.predict_proba(test_df.select(spec.baseline.features).to_numpy())[:, 1]
    groups = (test_df["team_id"] + "|" + test_df["as_of"].cast(pl.String)).to_numpy()
    k = spec.capacity_per_team
    prec, rec = M.precision_recall_at_capacity(yt.astype(bool), p_test, groups, k)
    bprec, brec = M.precision_recall_at_capacity(yt.astype(bool), p_base, groups, k)
    slope, intercept = M.calibration_slope_intercept(yt, p_test)
    metrics: dict[str, float] = {
        "auroc": M.auroc_score(yt, p_test), "auprc": M.auprc_score(yt, p_test),
        "brier": M.brier_loss(yt, p_test), "calibration_slope": slope,
        "calibration_intercept": intercept, "precision_at_capacity": prec,
        "recall_at_capacity": rec, "baseline_auroc": M.auroc_score(yt, p_base),
        "baseline_auprc": M.auprc_score(yt, p_base), "baseline_precision_at_capacity": bprec,
        "prevalence": float(yt.mean()), "best_iteration": float(model.best_iteration_ or 0),
    }
    oracle = _oracle_scores(cfg, key, test_df) if key else None
    if oracle is not None:
        ok = ~np.isnan(oracle)
        metrics["oracle_auroc"] = M.auroc_score(yt[ok], oracle[ok])
        metrics["skill_ratio"] = (metrics["auroc"] - 0.5) / (metrics["oracle_auroc"] - 0.5)

    say("SHAP summary")
    shap_features, shap_families = _shap_summary(booster, Xt, features, cat, cfg.wobble.seed)

    from wobble.card import render_card

    card_md, card_html = render_card(
        cfg, spec=spec, metrics=metrics, split=split, rows_train=train_df.height,
        rows_test=test_df.height, shap_features=shap_features, shap_families=shap_families,
        cat=cat, version=None,
    )
    version, run_id = "", ""
    if register:
        say("MLflow")
        version, run_id, card_md, card_html = _log_to_mlflow(
            cfg, spec, booster, calibrator, features, metrics, split, X[:5], params,
            model.best_iteration_, shap_features, shap_families, train_df.height, test_df.height, cat,
        )
    return TrainResult(
        spec.name, version, run_id, metrics, split, train_df.height, test_df.height, card_md,
        card_html, shap_families, time.perf_counter() - t0,
    )


def _fit_calibrator(method: str, raw: np.ndarray, y: np.ndarray):
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        return _Calibrator(IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, y))
    from sklearn.linear_model import LogisticRegression

    eps = 1e-6
    z = np.log(np.clip(raw, eps, 1 - eps) / (1 - np.clip(raw, eps, 1 - eps))).reshape(-1, 1)
    return _Calibrator(LogisticRegression(C=1e6, max_iter=1000).fit(z, y), platt=True)


class _Calibrator:
    """Maps LightGBM's raw probability to a calibrated one (isotonic or Platt)."""

    def __init__(self, model, platt: bool = False):
        self.model = model
        self.platt = platt

    def predict(self, raw: np.ndarray) -> np.ndarray:
        if self.platt:
            eps = 1e-6
            q = np.clip(raw, eps, 1 - eps)
            return self.model.predict_proba(np.log(q / (1 - q)).reshape(-1, 1))[:, 1]
        return self.model.predict(raw)


def _fit_baseline(X: np.ndarray, y: np.ndarray):
    """Logistic regression on log counts: what most existing risk tools amount to."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return make_pipeline(
        FunctionTransformer(lambda a: np.log1p(np.nan_to_num(np.clip(a, 0, None)))),
        StandardScaler(),
        LogisticRegression(max_iter=2000),
    ).fit(X, y)


def _oracle_scores(cfg: Config, key: bytes, test_df: pl.DataFrame) -> np.ndarray | None:
    """The simulator's true p_crisis for each test row, where the world is synthetic."""
    truth = cfg.truth
    if truth is None or not (truth / "risk.parquet").exists():
        return None
    import duckdb

    from wobble.identifiers import pseudonymise_many

    dates = sorted(set(test_df["as_of"].to_list()))
    lst = "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in dates) + "]"
    con = duckdb.connect()
    risk = con.sql(
        f"SELECT nhs_number, as_of, p_crisis FROM read_parquet('{truth / 'risk.parquet'}') "
        f"WHERE as_of IN (SELECT unnest({lst}))"
    ).pl()
    con.close()
    nhs = risk["nhs_number"].unique().to_list()
    mapping = pl.DataFrame({"nhs_number": nhs, "person_id": pseudonymise_many(key, nhs)})
    risk = risk.join(mapping, on="nhs_number").select("person_id", "as_of", "p_crisis")
    joined = test_df.select("person_id", "as_of").join(risk, on=["person_id", "as_of"], how="left",
                                                        maintain_order="left")
    return joined["p_crisis"].to_numpy().astype(float)


def _shap_summary(booster, Xt: np.ndarray, features: list[str], cat, seed: int):
    """Mean |SHAP| per feature and per family on a sample of test rows (TreeSHAP, exact)."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(Xt.shape[0], size=min(5000, Xt.shape[0]), replace=False)
    contrib = booster.predict(Xt[idx], pred_contrib=True)[:, :-1]
    mean_abs = np.abs(contrib).mean(axis=0)
    per_feature = dict(sorted(zip(features, mean_abs.tolist(), strict=True), key=lambda kv: -kv[1]))
    fam: dict[str, float] = {}
    for f, v in per_feature.items():
        fam[cat.get(f).family] = fam.get(cat.get(f).family, 0.0) + v
    return per_feature, dict(sorted(fam.items(), key=lambda kv: -kv[1]))


def _log_to_mlflow(cfg, spec, booster, calibrator, features, metrics, split, example, params,
                   best_iteration, shap_features, shap_families, rows_train, rows_test, cat):
    import mlflow
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    from wobble.card import render_card
    from wobble.tracking import setup

    exp_id = setup(cfg)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{spec.name}-{split.data_end}") as run:
        mlflow.log_params({f"lgbm.{k}": v for k, v in params.items()})
        mlflow.log_params({
            "model_name": spec.name, "target": spec.target.kind,
            "horizon_days": spec.target.horizon_days, "calibration": spec.calibration,
            "train_as_ofs": ",".join(d.isoformat() for d in split.train),
            "test_as_ofs": ",".join(d.isoformat() for d in split.test),
            "gap_days": split.gap_days, "rows_train": rows_train, "rows_test": rows_test,
            "n_features": len(features), "seed": cfg.wobble.seed, "best_iteration": best_iteration,
        })
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        signature = infer_signature(example, booster.predict(example))
        info = mlflow.lightgbm.log_model(
            booster, name="model", signature=signature, input_example=example,
            pip_requirements=["lightgbm>=4.7,<5"],
            registered_model_name=spec.name if True else None,
        )
        version = str(info.registered_model_version)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            with open(d / "calibrator.pkl", "wb") as f:
                pickle.dump(calibrator, f)
            (d / "features.json").write_text(json.dumps(features))
            (d / "shap_summary.json").write_text(json.dumps(
                {"features": shap_features, "families": shap_families}, indent=2))
            mlflow.log_artifacts(tmp, artifact_path="wobble")
        card_md, card_html = render_card(
            cfg, spec=spec, metrics=metrics, split=split, rows_train=rows_train,
            rows_test=rows_test, shap_features=shap_features, shap_families=shap_families,
            cat=cat, version=version,
        )
        mlflow.log_artifact(str(card_md), artifact_path="card")
        if card_html:
            mlflow.log_artifact(str(card_html), artifact_path="card")
    return version, run.info.run_id, card_md, card_html
