"""Explaining a model: TreeSHAP contributions, summarised for the card.

LightGBM's own `pred_contrib` computes exact TreeSHAP values for its trees (as shap's
TreeExplainer does, at the same speed); the listed people's contributions are computed when lists
are scored (`wobble.lists.score`), and a sample of test rows' here for the card's global summary.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from wobble.models.fit import feature_matrix


def shap_summary(booster, rows: pl.DataFrame, features: list[str], cat, seed: int, iteration: int) -> dict:
    """Mean |SHAP| per feature and family, and each feature's direction, on a sample of test rows
    (`rows`: one per test example, holding the `features`; only the sample's are made a matrix).

    TreeSHAP through LightGBM's own `pred_contrib` (exact for trees). Direction: the sign of the
    correlation between a feature's value and its contribution (+1: higher values raise risk).
    """
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(rows.height, size=min(5000, rows.height), replace=False))
    Xs = feature_matrix(rows[idx], features)
    contrib = booster.predict(Xs, pred_contrib=True, num_iteration=iteration)[:, :-1]
    mean_abs = np.abs(contrib).mean(axis=0)
    direction = []
    for j in range(len(features)):
        x, c = Xs[:, j], contrib[:, j]
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
        "sample": (contrib, Xs),
    }




def change_reasons(contrib: np.ndarray, X: np.ndarray, features: list[str], cat) -> np.ndarray:
    """Per row, the column (index into `features`) of its strongest reason about change: a change
    feature (`rises_at` in the catalogue) whose value reads as a rise and which raises concern
    (positive contribution); −1 where a row has none. `contrib` and `X` are rows × features."""
    rises = np.array([cat.get(f).rises_at if cat.get(f).rises_at is not None else np.inf for f in features])
    ok = (contrib > 0) & (np.nan_to_num(X, nan=-np.inf) >= rises)
    strongest = np.where(ok, contrib, -np.inf).argmax(axis=1)
    return np.where(ok.any(axis=1), strongest, -1)
