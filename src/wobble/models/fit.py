"""Fitting: LightGBM with early stopping and a choice among candidate settings, its calibrator, and
the logistic baseline it is compared with.

Fits are deterministic: LightGBM with `deterministic`, `force_row_wise`, a seed and a fixed
thread count gives the same trees run to run.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl

from wobble.core.errors import WobbleError
from wobble.models.metrics import logit
from wobble.models.spec import ModelSpec

# LightGBM is deterministic for a given seed *and* thread count, so the count is fixed.
THREADS = 2


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
                 seed: int, dask: str | None = None, n_fit: int | None = None) -> Fit:
    """Fit each candidate setting with early stopping on the validation slice; keep the best.

    `draw` is each row's person draw in [0, 1): people below validation_share (vs) validate,
    the rest fit. A share s of people means draws in [0, vs·s) validate and [vs, vs + (1 − vs)·s)
    fit, so both slices shrink together. The kept model fits at most `max_rows` rows; candidates
    are compared on at most `search_rows`, and the winner is refitted if they used fewer.
    With `dask` (a scheduler's address) each fit runs on that cluster (`_fit_one_dask`).
    `n_fit`: how many fitting rows (draw ≥ vs) there are in all, when the rows given are only the
    sample `sample_sql` read; the shares, and so the rows used, are then those of all the rows.
    """
    fit_one = partial(_fit_one_dask, dask) if dask else _fit_one
    est = spec.estimator
    vs = est.validation_share

    def people(share: float) -> tuple[np.ndarray, np.ndarray]:
        (lo, hi), (_, val_hi) = _draw_ranges(vs, share)
        return (draw >= lo) & (draw < hi), draw < val_hi

    fit_share, search_share = _shares(est, n_fitting(spec, draw) if n_fit is None else n_fit)
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


def feature_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """`frame`'s `columns` as the float64 matrix LightGBM reads (rows of `frame` × columns, nulls
    as NaN), made once: `astype` copies only when polars gave another dtype (at 1,000,000 people a
    second copy of the training features was over a gigabyte)."""
    return frame.select(columns).to_numpy().astype(np.float64, copy=False)


def own_columns(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """`frame`'s `columns` (a frame read from DuckDB, as `.pl()` gives) copied into buffers of
    their own, same rows in the same order.

    Such a frame's columns share the Arrow batches DuckDB handed over, and a batch is freed only
    when none of its columns is held: keeping three narrow columns of a scoring group kept all its
    features too (at 5,000,000 people, about 0.9 GB a group of teams)."""
    return frame.select(pl.col(*columns).gather(pl.int_range(pl.len())))


def predict_rows(model, frame: pl.DataFrame, columns: list[str], rows_at_once: int = 200_000) -> np.ndarray:
    """`model.predict` (a `Fit` or a booster) for each row of `frame` from its `columns`, a slice at
    a time: one row's prediction does not depend on the others, and a million rows' float64 matrix
    is not held whole."""
    return np.concatenate([model.predict(feature_matrix(frame.slice(i, rows_at_once), columns))
                           for i in range(0, frame.height, rows_at_once)] or [np.zeros(0)])


def _shares(est, n_fit: int) -> tuple[float, float]:
    """The shares of the `n_fit` fitting rows' people the kept model fits on (at most `max_rows`
    rows) and the candidates are compared on (at most `search_rows`)."""
    n_fit = max(1, n_fit)
    fit_share = min(1.0, est.max_rows / n_fit)
    return fit_share, min(fit_share, est.search_rows / n_fit)


def _draw_ranges(vs: float, share: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The person draws [lo, hi) that fit and that validate, for a share of people."""
    return (vs, vs + (1 - vs) * share), (0.0, vs * share)


def n_fitting(spec: ModelSpec, draw: np.ndarray) -> int:
    """How many of the training rows with these draws fit (rather than validate): `fit_lightgbm`'s `n_fit`."""
    return int((draw >= spec.estimator.validation_share).sum())


def samples_everyone(spec: ModelSpec, n_fit: int) -> bool:
    """True when `fit_lightgbm` of `spec` uses every training row, of which `n_fit` fit (`n_fitting`):
    `sample_sql` is then true of them all."""
    return _shares(spec.estimator, n_fit)[0] >= 1.0


def sample_sql(spec: ModelSpec, n_fit: int) -> str:
    """SQL over `person_draw`: true of exactly the rows `fit_lightgbm` of `spec` would use from
    training rows of which `n_fit` fit (`n_fitting`; every candidate's and the kept model's), so
    they can be read alone and given to it with `n_fit`."""
    (lo, hi), (_, val_hi) = _draw_ranges(spec.estimator.validation_share,
                                         _shares(spec.estimator, n_fit)[0])
    return (f"(person_draw < '{val_hi!r}'::DOUBLE "
            f"OR (person_draw >= '{lo!r}'::DOUBLE AND person_draw < '{hi!r}'::DOUBLE))")


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


    return _Calibrator(LogisticRegression(C=1e6, max_iter=1000).fit(logit(raw).reshape(-1, 1), y), platt=True)


class _Calibrator:
    """Maps LightGBM's raw probability to a calibrated one (isotonic or Platt)."""

    def __init__(self, model, platt: bool = False):
        self.model = model
        self.platt = platt

    def predict(self, raw: np.ndarray) -> np.ndarray:
        if self.platt:
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


