"""Evaluation metrics. `*_score`: higher is better; `*_loss`: lower is better.

Thin wrappers over scikit-learn where it has the metric; the few it lacks (calibration slope
and intercept, precision at a per-group capacity) are written here and tested against slow,
obvious versions in tests/test_metrics.py.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score


def auroc_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < y.size else float("nan")


def auprc_score(y: np.ndarray, p: np.ndarray) -> float:
    return float(average_precision_score(y, p)) if y.sum() > 0 else float("nan")


def brier_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(brier_score_loss(y, p))


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Logistic recalibration: fit logit P(y) = a + b·logit(p); return (slope b, intercept a).

    A slope of 1 and intercept of 0 mean the probabilities need no correction.
    """
    from sklearn.linear_model import LogisticRegression

    eps = 1e-6
    q = np.clip(p, eps, 1 - eps)
    x = np.log(q / (1 - q)).reshape(-1, 1)
    if y.min() == y.max():
        return float("nan"), float("nan")
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(x, y)
    return float(lr.coef_[0, 0]), float(lr.intercept_[0])


def top_k_mask(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """True for the k highest scores within each group (ties broken by position)."""
    order = np.lexsort((np.arange(scores.size), -scores, groups))
    g = groups[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    rank = np.arange(g.size) - np.repeat(start, np.diff(np.r_[start, g.size]))
    mask = np.zeros(scores.size, dtype=bool)
    mask[order[rank < k]] = True
    return mask


def precision_recall_at_capacity(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, k: int
) -> tuple[float, float]:
    """Precision and recall when each group (team × as-of) flags its top k."""
    flagged = top_k_mask(p, groups, k)
    tp = float((y & flagged).sum())
    precision = tp / max(1, flagged.sum())
    recall = tp / max(1, y.sum())
    return precision, recall
