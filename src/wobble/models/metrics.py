"""Evaluation metrics. `*_score`: higher is better; `*_loss` and `*_error`: lower is better.

Every metric takes an optional weight per row, `w`. Weights are how the person bootstrap works:
drawing people with replacement gives each person a count (0, 1, 2, …), and giving each of that
person's rows their count as weight is exactly the resampled data set, without building it. So a
point estimate and its bootstrap replicates run through the same code.

Two prepared objects keep a replicate cheap at a million rows: `Ranking` sorts a score once, after
which weighted AUROC and average precision cost one pass; `Capacity` sorts each team's rows once,
after which the top-k list under any weights costs one pass. tests/test_metrics.py checks all of
this against scikit-learn and against slow, obvious versions on tiny hand-computed arrays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

EPS = 1e-6


def _arrays(y, p, w=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate once at the boundary: same length, y in {0, 1}, finite p, non-negative w."""
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(f"y and p must be 1-d and the same length (got {y.shape} and {p.shape})")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    if not np.isfinite(p).all():
        raise ValueError("p holds NaN or infinite values")
    w = np.ones(y.size) if w is None else np.asarray(w, dtype=np.float64)
    if w.shape != y.shape or (w < 0).any():
        raise ValueError("w must be non-negative and the same length as y")
    return y.astype(np.float64), p, w


# --- discrimination ---------------------------------------------------------------------------


class Ranking:
    """One score's blocks of tied values, numbered from the highest, for weighted AUROC and AP.

    Found once (one sort); after that any weighting costs two weighted counts. With `max_blocks`,
    adjacent values are merged into at most that many blocks of about equal size, and pairs
    within a block count as ties: with 65,536 blocks that moves AUROC by under 1e-5 (the share
    of pairs that fall in one block), and makes a bootstrap replicate of millions of rows cheap.
    """

    def __init__(self, y, score, max_blocks: int | None = None):
        y, score, _ = _arrays(y, score)
        self.y = y
        values, block = np.unique(-score, return_inverse=True)
        if max_blocks and values.size > max_blocks:
            before = np.cumsum(np.bincount(block, minlength=values.size)) - np.bincount(block, minlength=values.size)
            _, block = np.unique((before * max_blocks // y.size)[block], return_inverse=True)
        self.block = block.ravel()
        self.n_blocks = int(self.block.max()) + 1 if y.size else 0

    def _blocks(self, w: np.ndarray | None, wy: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Weight of cases and of non-cases in each block, highest score first."""
        w = np.ones(self.y.size) if w is None else w
        pos = np.bincount(self.block, weights=w * self.y if wy is None else wy, minlength=self.n_blocks)
        return pos, np.bincount(self.block, weights=w, minlength=self.n_blocks) - pos

    def auroc(self, w: np.ndarray | None = None) -> float:
        """P(a random case outranks a random non-case); ties count half."""
        return self.scores(w)[0]

    def average_precision(self, w: np.ndarray | None = None) -> float:
        """Σ over thresholds of (recall gained) × precision, as scikit-learn defines it."""
        return self.scores(w)[1]

    def scores(self, w: np.ndarray | None = None, wy: np.ndarray | None = None) -> tuple[float, float]:
        """(AUROC, average precision) under weights w (and, if given, wy = w × y)."""
        pos, neg = self._blocks(w, wy)
        n_pos, n_neg = pos.sum(), neg.sum()
        if n_pos <= 0:
            return float("nan"), float("nan")
        tp, fp = np.cumsum(pos), np.cumsum(neg)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        ap = float((pos * precision).sum() / n_pos)
        if n_neg <= 0:
            return float("nan"), ap
        return float((pos * (n_neg - fp + 0.5 * neg)).sum() / (n_pos * n_neg)), ap

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate) at each distinct threshold, from (0, 0)."""
        pos, neg = self._blocks(None)
        tpr = np.r_[0, np.cumsum(pos)] / max(pos.sum(), 1)
        fpr = np.r_[0, np.cumsum(neg)] / max(neg.sum(), 1)
        return fpr, tpr


def auroc_score(y, p, w=None) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, p, w = _arrays(y, p, w)
    return Ranking(y, p).auroc(w)


def auroc_standard_error(y, p) -> float:
    """The standard error of the AUROC of scores `p` for outcomes `y` (DeLong et al., 1988, from each
    person's placement among the other class, ties counted half): how far a figure over this many
    people may stray by chance alone. NaN without both classes.

    e.g. 100 cases among 5,100 people, AUROC near 0.75: about 0.022, so 0.71 is within chance of 0.75."""
    y, p, _ = _arrays(y, p, None)
    pos = y.astype(bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 < 2 or n0 < 2:
        return float("nan")
    ranks = rankdata(p)
    v10 = (ranks[pos] - rankdata(p[pos])) / n0  # per case: the share of non-cases scored below it
    v01 = 1 - (ranks[~pos] - rankdata(p[~pos])) / n1  # per non-case: the share of cases scored above it
    return float(np.sqrt(v10.var(ddof=1) / n1 + v01.var(ddof=1) / n0))


def auprc_score(y, p, w=None) -> float:
    """Average precision (area under the precision-recall curve); NaN without cases."""
    y, p, w = _arrays(y, p, w)
    return Ranking(y, p).average_precision(w)


# --- calibration ------------------------------------------------------------------------------


def brier_loss(y, p, w=None) -> float:
    """Mean squared difference between the probability and what happened."""
    y, p, w = _arrays(y, p, w)
    total = w.sum()
    return float((w * (p - y) ** 2).sum() / total) if total > 0 else float("nan")


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q / (1 - q))


def _newton_logistic(x: np.ndarray, wy: np.ndarray, w: np.ndarray, *, fit_slope: bool,
                     start: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Weighted maximum likelihood for logit P(y) = a + b·x (b held at 1 unless fit_slope).

    Rows may be grouped: at each x, `w` is the total weight and `wy` the weight of the cases.
    Newton's method, its step halved whenever the likelihood would get worse.
    """
    def nll(a: float, b: float) -> float:
        eta = a + b * x
        return float((w * np.logaddexp(0, eta)).sum() - (wy * eta).sum())

    a, b = start
    loss = nll(a, b)
    for _ in range(100):
        mu = 0.5 * (1 + np.tanh(0.5 * (a + b * x)))  # the logistic function, without overflow
        r, v = wy - w * mu, w * mu * (1 - mu)
        if fit_slope:
            vx = v * x
            g0, g1 = r.sum(), (r * x).sum()
            h00, h01, h11 = v.sum(), vx.sum(), (vx * x).sum()
            det = h00 * h11 - h01 * h01
            if not det > 0:
                return float("nan"), float("nan")
            da, db = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        else:
            h = v.sum()
            if not h > 0:
                return float("nan"), float("nan")
            da, db = r.sum() / h, 0.0
        step, new = 1.0, nll(a + da, b + db)
        while step > 1e-6 and not new <= loss + 1e-12 * abs(loss):
            step /= 2
            new = nll(a + step * da, b + step * db)
        a, b, loss = a + step * da, b + step * db, new
        if not (np.isfinite(a) and np.isfinite(b)):
            return float("nan"), float("nan")
        if abs(step * da) + abs(step * db) < 1e-10:
            return b, a
    return float("nan"), float("nan")


def calibration_slope_intercept(y, p, w=None) -> tuple[float, float]:
    """(slope, intercept) of logistic recalibration; 1 and 0 mean nothing to correct.

    The slope b comes from fitting logit P(y) = a + b·logit(p): below 1, predictions are too
    extreme. The intercept is calibration-in-the-large on the log-odds scale, from fitting
    logit P(y) = a + logit(p) with the slope held at 1: below 0, risk is over-estimated overall.
    """
    y, p, w = _arrays(y, p, w)
    x, inv = np.unique(logit(p), return_inverse=True)
    slope, _, intercept = _recalibration(x, np.bincount(inv, weights=w * y), np.bincount(inv, weights=w))
    return slope, intercept


def _recalibration(x: np.ndarray, wy: np.ndarray, w: np.ndarray,
                   start: tuple[float, float, float] | None = None) -> tuple[float, float, float]:
    """(slope, the joint fit's intercept, the intercept with the slope held at 1), on rows grouped
    by x; `start`, a previous answer, warm-starts both fits."""
    cases, total = wy.sum(), w.sum()
    if total <= 0 or cases <= 0 or cases >= total:
        return float("nan"), float("nan"), float("nan")
    s = start if start is not None and all(np.isfinite(start)) else (1.0, 0.0, 0.0)
    slope, joint = _newton_logistic(x, wy, w, fit_slope=True, start=(s[1], s[0]))
    _, intercept = _newton_logistic(x, wy, w, fit_slope=False, start=(s[2], 1.0))
    return slope, joint, intercept


def observed_to_expected(y, p, w=None) -> float:
    """Calibration-in-the-large as a ratio: observed outcomes per outcome predicted (1 = right)."""
    y, p, w = _arrays(y, p, w)
    expected = (w * p).sum()
    return float((w * y).sum() / expected) if expected > 0 else float("nan")


def quantile_bins(p, bins: int) -> np.ndarray:
    """Bin index 0 … bins−1 for each p, with (about) equally many rows per bin."""
    p = np.asarray(p, dtype=np.float64)
    edges = np.quantile(p, np.linspace(0, 1, bins + 1)[1:-1]) if p.size else np.zeros(bins - 1)
    return np.searchsorted(edges, p, side="right")


def _binned_calibration(bin_ids: np.ndarray, w: np.ndarray, wy: np.ndarray, wp: np.ndarray, bins: int):
    """Per bin: total weight, weight of cases, weighted sum of p."""
    return tuple(np.bincount(bin_ids, weights=v, minlength=bins) for v in (w, wy, wp))


def _ece(n: np.ndarray, obs: np.ndarray, pred: np.ndarray) -> float:
    total = n.sum()
    return float(np.abs(obs - pred).sum() / total) if total > 0 else float("nan")


def expected_calibration_error(y, p, *, bins: int = 10, w=None, bin_ids: np.ndarray | None = None) -> float:
    """Σ_bins (share of rows) × |observed rate − mean predicted|, over equal-frequency bins of p.

    Equal-frequency bins, because with a rare outcome nearly everyone falls in the first of ten
    equal-width bins. `bin_ids` fixes the bins (the bootstrap keeps those of the full sample).
    """
    y, p, w = _arrays(y, p, w)
    ids = quantile_bins(p, bins) if bin_ids is None else bin_ids
    return _ece(*_binned_calibration(ids, w, w * y, w * p, bins))


def calibration_curve(y, p, *, bins: int = 10) -> dict[str, list[float]]:
    """Per equal-frequency bin: mean predicted, observed rate and its Wilson 95% interval, count."""
    y, p, w = _arrays(y, p)
    n, obs, pred = _binned_calibration(quantile_bins(p, bins), w, y, p, bins)
    keep = n > 0
    n, obs, pred = n[keep], obs[keep], pred[keep]
    rate, z = obs / n, 1.959964
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Mathematically low <= rate <= high; at a rate of 0 or 1 rounding can cross by 1e-18, and a
    # plotting library rightly refuses a negative error bar.
    low, high = np.minimum(centre - half, rate).clip(0, 1), np.maximum(centre + half, rate).clip(0, 1)
    return {"predicted": (pred / n).tolist(), "observed": rate.tolist(), "low": low.tolist(),
            "high": high.tolist(), "n": n.tolist()}


# --- the list: each team's top k --------------------------------------------------------------


class Capacity:
    """Each group's (team × as-of) top k by score, under any row weights.

    `cohort_size` (per group) scales k to a sample: a team of 4,000 that lists 20 people lists
    0.5% of its cohort, so a test sample holding 1,300 of those people lists 20 × 1,300 / 4,000
    = 6.5 of them: the top 6, and half of the 7th (its row counts half in every metric). Not
    rounding keeps the metrics smooth: rounding 1.4 listed people down to 1, while bootstrap
    samples round to 1 or 2, put estimates outside their own intervals. Without `cohort_size`,
    every group lists k. Ties are broken by row position.
    """

    def __init__(self, score, groups, k: int, cohort_size: np.ndarray | None = None):
        score = np.asarray(score, dtype=np.float64)
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        if k < 1:
            raise ValueError("capacity k must be at least 1")
        self.k = k
        self.order = np.lexsort((np.arange(score.size), -score, codes))
        g = codes[self.order]
        self.starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1] if g.size else np.zeros(0, int)
        self.sizes = np.diff(np.r_[self.starts, g.size])
        self.cohort = None
        if cohort_size is not None:
            per_row = np.asarray(cohort_size, dtype=np.float64)[self.order]
            self.cohort = per_row[self.starts] if g.size else np.zeros(0)

    def flagged(self, w: np.ndarray | None = None) -> np.ndarray:
        """How much of each row's weight is on its team's list (0 … w), in the rows' own order."""
        n = self.order.size
        ws = np.ones(n) if w is None else np.asarray(w, dtype=np.float64)[self.order]
        if n == 0:
            return ws
        cum = np.cumsum(ws)
        group_total = np.add.reduceat(ws, self.starts)
        offset = np.repeat(cum[self.starts] - ws[self.starts], self.sizes)
        before = cum - ws - offset
        places = self.k if self.cohort is None else self.k * group_total / self.cohort  # per group
        f = np.clip(np.repeat(np.broadcast_to(places, group_total.shape), self.sizes) - before, 0, ws)
        out = np.empty(n)
        out[self.order] = f
        return out

    def listed(self) -> np.ndarray:
        """Who is on the list, as yes or no: a shared last place counts when at least half is taken."""
        return self.flagged() >= 0.5


def capacity_metrics(y, flagged, w=None) -> dict[str, float]:
    """What a list at capacity does: precision, recall, false positive and negative rates,
    number needed to evaluate (people discussed per person who went on to have the outcome)
    and alerts per 1,000 people per weekly list."""
    return _capacity_metrics(*_arrays(y, flagged, w))


def _capacity_metrics(y: np.ndarray, f: np.ndarray, w: np.ndarray) -> dict[str, float]:
    tp, listed = (f * y).sum(), f.sum()
    pos, n = (w * y).sum(), w.sum()
    neg = n - pos
    nan = float("nan")
    precision = tp / listed if listed > 0 else nan
    recall = tp / pos if pos > 0 else nan
    return {
        "precision_at_capacity": precision,
        "recall_at_capacity": recall,
        "fnr_at_capacity": 1 - recall if pos > 0 else nan,
        "fpr_at_capacity": (listed - tp) / neg if neg > 0 else nan,
        "nne_at_capacity": 1 / precision if precision and precision > 0 else nan,
        "alerts_per_1000_per_week": 1000 * listed / n if n > 0 else nan,
    }


def top_k_mask(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """True for the k highest scores within each group (ties broken by position)."""
    return Capacity(scores, groups, k).listed()


def precision_recall_at_capacity(y: np.ndarray, p: np.ndarray, groups: np.ndarray, k: int) -> tuple[float, float]:
    """Precision and recall when each group (team × as-of) flags its top k."""
    m = capacity_metrics(y, Capacity(p, groups, k).flagged())
    return m["precision_at_capacity"], m["recall_at_capacity"]


# --- everything at once -----------------------------------------------------------------------

METRICS = ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece",
           "observed_to_expected", "precision_at_capacity", "recall_at_capacity", "fnr_at_capacity",
           "fpr_at_capacity", "nne_at_capacity", "alerts_per_1000_per_week")


class Measures:
    """Every metric of one score on one set of rows, prepared once for many weightings.

    `rank` orders the list (AUROC, AUPRC and, through `flagged`, the capacity metrics); `prob` is
    the calibrated probability (Brier, calibration). They differ when a calibrator ties people.
    For the recalibration fits, rows are grouped by logit(prob) rounded to 0.01: that adds noise
    of variance 0.01²/12 ≈ 8e-6 to a logit whose variance is about 1, so it moves the slope by
    about 1e-5, while each bootstrap replicate fits about a thousand points instead of every row;
    replicates start from the full sample's fit.
    """

    def __init__(self, y, rank, prob, *, bins: int = 10):
        y, prob, _ = _arrays(y, prob)
        self.y, self.prob, self.bins = y, prob, bins
        self.ranking = Ranking(y, rank)
        self.blocks = Ranking(y, rank, max_blocks=2**16)  # for bootstrap replicates
        self.bin_ids = quantile_bins(prob, bins)
        self.x, self.x_group = np.unique(np.round(logit(prob), 2), return_inverse=True)
        self.start = None
        self.start = self._recalibration(np.ones(y.size), y)

    def _recalibration(self, w: np.ndarray, wy: np.ndarray) -> tuple[float, float, float]:
        gw = np.bincount(self.x_group, weights=w, minlength=self.x.size)
        gwy = np.bincount(self.x_group, weights=wy, minlength=self.x.size)
        return _recalibration(self.x, gwy, gw, self.start)

    def __call__(self, w: np.ndarray | None = None, flagged: np.ndarray | None = None) -> dict[str, float]:
        """Every metric; with weights `w` (a bootstrap replicate), ranking uses merged blocks."""
        ranking = self.ranking if w is None else self.blocks
        w = np.ones(self.y.size) if w is None else w
        wy, wp = w * self.y, w * self.prob
        total, cases, expected = w.sum(), wy.sum(), wp.sum()
        slope, _, intercept = self._recalibration(w, wy)
        auroc, auprc = ranking.scores(w, wy)
        nan = float("nan")
        out = {
            "auroc": auroc, "auprc": auprc,
            # Σ w (p − y)² = Σ w p² − 2 Σ w p y + Σ w y, for y in {0, 1}
            "brier": float(((wp * self.prob).sum() - 2 * (wp * self.y).sum() + cases) / total)
            if total > 0 else nan,
            "calibration_slope": slope, "calibration_intercept": intercept,
            "ece": _ece(*_binned_calibration(self.bin_ids, w, wy, wp, self.bins)),
            "observed_to_expected": float(cases / expected) if expected > 0 else nan,
        }
        if flagged is not None:
            out.update(_capacity_metrics(self.y, flagged, w))
        return out


def weighted_quantiles(values, w, qs: tuple[float, ...]) -> list[float]:
    """Quantiles of `values` with frequency weights `w` (the smallest v with at least q of the weight
    at or below it); `values` must be sorted."""
    values, w = np.asarray(values, dtype=np.float64), np.asarray(w, dtype=np.float64)
    cum = np.cumsum(w)
    if not cum.size or cum[-1] <= 0:
        return [float("nan")] * len(qs)
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1] - 1e-9, side="left")
    return [float(values[min(i, values.size - 1)]) for i in idx]


# --- the person bootstrap ---------------------------------------------------------------------


def person_counts(n_people: int, replicates: int, seed: int) -> Iterator[np.ndarray]:
    """Per replicate, how many times each person is drawn when drawing n_people with replacement."""
    rng = np.random.default_rng(seed)
    for _ in range(replicates):
        yield np.bincount(rng.integers(0, n_people, n_people), minlength=n_people).astype(np.float64)


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap 95% interval (percentile method)."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, value: float, replicates: np.ndarray | list[float]) -> Estimate:
        r = np.asarray(replicates, dtype=np.float64)
        r = r[np.isfinite(r)]
        if not np.isfinite(value) or r.size < 10:
            return cls(float(value), float("nan"), float("nan"))
        lo, hi = np.percentile(r, [2.5, 97.5])
        return cls(float(value), float(lo), float(hi))

    def to_dict(self) -> dict[str, float | None]:
        return {k: (round(v, 6) if np.isfinite(v) else None)
                for k, v in (("value", self.value), ("low", self.low), ("high", self.high))}
