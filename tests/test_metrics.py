"""Metric code against slow, obvious reference implementations and tiny hand-computed arrays.

The fast versions sort once and take weights, so that a person bootstrap costs one pass per
replicate; the references loop over pairs, rows and groups. The key identity: weighting each
row by how often its person was drawn gives exactly the metric of the resampled data set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from wobble.models import metrics as M

# --- slow references ------------------------------------------------------------------------------


def slow_auroc(y, p, w):
    """Σ over (case, non-case) pairs of w_i w_j [p_i > p_j] + ½[p_i = p_j], normalised."""
    num = den = 0.0
    for i in range(len(y)):
        for j in range(len(y)):
            if y[i] == 1 and y[j] == 0:
                pair = w[i] * w[j]
                den += pair
                num += pair * (1.0 if p[i] > p[j] else 0.5 if p[i] == p[j] else 0.0)
    return num / den


def slow_average_precision(y, p, w):
    """Σ over distinct thresholds t (high to low) of (recall gained at t) × precision at t."""
    total_pos = sum(wi for yi, wi in zip(y, w, strict=True) if yi)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(p), reverse=True):
        tp = sum(wi for yi, pi, wi in zip(y, p, w, strict=True) if pi >= t and yi)
        fp = sum(wi for yi, pi, wi in zip(y, p, w, strict=True) if pi >= t and not yi)
        recall = tp / total_pos
        if tp + fp > 0:
            ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def slow_recalibration(y, p, w, fit_slope):
    """Maximum likelihood by a general-purpose optimiser: logit P(y) = a + b·logit(p)."""
    x = np.log(p / (1 - p))

    def nll(theta):
        a, b = (theta[0], theta[1]) if fit_slope else (theta[0], 1.0)
        eta = a + b * x
        return float(np.sum(w * (np.logaddexp(0, eta) - y * eta)))

    res = minimize(nll, [0.0, 1.0] if fit_slope else [0.0], method="BFGS", options={"gtol": 1e-10})
    return (res.x[1], res.x[0]) if fit_slope else (1.0, res.x[0])


def slow_top_k(scores, groups, k, cohort=None):
    """Per group, sort rows by score (ties: earlier row first) and take the first k (or k scaled,
    the last place shared in part)."""
    flagged = np.zeros(len(scores))
    for g in set(groups):
        rows = [i for i in range(len(scores)) if groups[i] == g]
        rows.sort(key=lambda i: (-scores[i], i))
        places = k if cohort is None else k * len(rows) / cohort[rows[0]]
        for i in rows:
            flagged[i] = min(1.0, max(0.0, places))
            places -= 1
    return flagged


def random_case(rng, n=60, ties=True):
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    p = rng.random(n)
    if ties:
        p = np.round(p * 8) / 8 * 0.98 + 0.01  # few distinct values: many ties
    w = rng.integers(0, 4, n).astype(float)
    w[:2] = 1
    return y, p, w


# --- tiny hand-computed arrays -------------------------------------------------------------------


def test_auroc_by_hand():
    # cases at 0.35 and 0.8; non-cases at 0.1 and 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) = 3/4
    assert M.auroc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # a tie between a case and a non-case counts half: (1 + 0.5) / 2
    assert M.auroc_score([0, 1, 0], [0.2, 0.5, 0.5]) == pytest.approx(0.75)
    assert math.isnan(M.auroc_score([1, 1], [0.2, 0.3]))


def test_average_precision_by_hand():
    # ranked 0.8 (case), 0.4 (non-case), 0.35 (case), 0.1: AP = ½·1 + ½·(2/3)
    assert M.auprc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)


def test_brier_and_observed_to_expected_by_hand():
    assert M.brier_loss([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
    assert M.observed_to_expected([0, 1, 1, 0], [0.5, 0.5, 0.25, 0.25]) == pytest.approx(2 / 1.5)


def test_capacity_metrics_by_hand():
    # 6 people in one team, capacity 2: the two highest (rows 0 and 3) are listed; row 0 a case
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.1, 0.8, 0.3, 0.05])
    flagged = M.Capacity(p, np.zeros(6), 2).flagged()
    assert flagged.tolist() == [1, 0, 0, 1, 0, 0]
    m = M.capacity_metrics(y, flagged)
    assert m["precision_at_capacity"] == pytest.approx(0.5)
    assert m["recall_at_capacity"] == pytest.approx(1 / 3)
    assert m["fnr_at_capacity"] == pytest.approx(2 / 3)
    assert m["fpr_at_capacity"] == pytest.approx(1 / 3)
    assert m["nne_at_capacity"] == pytest.approx(2.0)
    assert m["alerts_per_1000_per_week"] == pytest.approx(1000 * 2 / 6)


def test_capacity_scales_to_the_sample_share_of_the_team():
    # a team of 40 lists 20 (half); a sample holding 6 of its people lists 3 of them
    flagged = M.Capacity(np.arange(6.0), np.zeros(6), 20, cohort_size=np.full(6, 40)).flagged()
    assert flagged.tolist() == [0, 0, 0, 1, 1, 1]
    # a team of 60 lists a third: 2⅓ of a sample of 7, so the third-highest counts a third
    flagged = M.Capacity(np.arange(7.0), np.zeros(7), 20, cohort_size=np.full(7, 60)).flagged()
    assert flagged.tolist() == pytest.approx([0, 0, 0, 0, 1 / 3, 1, 1])


def test_ece_by_hand():
    # two bins of two: predicted 0.1 and 0.1 with one case (gap 0.4); 0.6 and 0.6 with one case (gap 0.1)
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.1, 0.6, 0.6])
    assert M.expected_calibration_error(y, p, bins=2) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)


def test_weighted_quantiles_by_hand():
    assert M.weighted_quantiles([1, 2, 3, 4], [1, 1, 1, 1], (0.5,)) == [2.0]
    assert M.weighted_quantiles([1, 2, 3], [0, 0, 5], (0.25, 0.5)) == [3.0, 3.0]


def test_inputs_are_validated_at_the_boundary():
    with pytest.raises(ValueError, match="only 0 and 1"):
        M.auroc_score([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same length"):
        M.brier_loss([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        M.auroc_score([0, 1], [0.1, float("nan")])


# --- against references ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_ranking_metrics_match_slow_references_and_scikit_learn(seed):
    y, p, w = random_case(np.random.default_rng(seed))
    assert M.auroc_score(y, p, w) == pytest.approx(slow_auroc(y, p, w))
    assert M.auroc_score(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    assert M.auprc_score(y, p, w) == pytest.approx(slow_average_precision(y, p, w))
    assert M.auprc_score(y, p, w) == pytest.approx(average_precision_score(y, p, sample_weight=w))
    assert M.brier_loss(y, p, w) == pytest.approx(brier_score_loss(y, p, sample_weight=w))


@pytest.mark.parametrize("seed", range(4))
def test_weights_are_the_resampled_data_set(seed):
    """Weight k on a row = that row repeated k times: the identity the person bootstrap rests on."""
    y, p, w = random_case(np.random.default_rng(seed), ties=seed % 2 == 0)
    idx = np.repeat(np.arange(y.size), w.astype(int))
    ye, pe = y[idx], p[idx]
    assert M.auroc_score(y, p, w) == pytest.approx(M.auroc_score(ye, pe))
    assert M.auprc_score(y, p, w) == pytest.approx(M.auprc_score(ye, pe))
    for a, b in zip(M.calibration_slope_intercept(y, p, w), M.calibration_slope_intercept(ye, pe), strict=True):
        assert a == pytest.approx(b, rel=1e-6)
    bins = M.quantile_bins(p, 5)
    assert M.expected_calibration_error(y, p, bins=5, w=w, bin_ids=bins) == pytest.approx(
        M.expected_calibration_error(ye, pe, bins=5, bin_ids=bins[idx]))
    groups = np.arange(y.size) % 3
    fw = M.Capacity(p, groups, 4).flagged(w)
    fe = M.Capacity(pe, groups[idx], 4).flagged()
    assert M.capacity_metrics(y, fw, w) == pytest.approx(M.capacity_metrics(ye, fe))


@pytest.mark.parametrize("seed", range(4))
def test_calibration_slope_and_intercept_match_a_general_optimiser(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.6, 400)
    y = (rng.random(400) < np.clip(p * 1.3, 0, 1)).astype(int)
    w = rng.integers(1, 3, 400).astype(float)
    slope, intercept = M.calibration_slope_intercept(y, p, w)
    ref_slope, _ = slow_recalibration(y, p, w, fit_slope=True)
    _, ref_intercept = slow_recalibration(y, p, w, fit_slope=False)
    assert slope == pytest.approx(ref_slope, abs=1e-5)
    assert intercept == pytest.approx(ref_intercept, abs=1e-5)


def test_calibrated_probabilities_have_slope_one_and_intercept_zero():
    rng = np.random.default_rng(1)
    p = rng.beta(1, 8, 200_000)
    y = (rng.random(p.size) < p).astype(int)
    slope, intercept = M.calibration_slope_intercept(y, p)
    assert slope == pytest.approx(1, abs=0.03) and intercept == pytest.approx(0, abs=0.02)
    assert M.observed_to_expected(y, p) == pytest.approx(1, abs=0.02)
    assert M.expected_calibration_error(y, p) < 0.005
    # probabilities pushed towards the extremes: slope below one
    q = 1 / (1 + np.exp(-2 * M.logit(p)))
    assert M.calibration_slope_intercept(y, q)[0] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_a_slow_sort_per_group(seed):
    rng = np.random.default_rng(seed)
    n = 80
    scores = np.round(rng.random(n), 1)  # ties, broken by position
    groups = rng.integers(0, 4, n)
    assert (M.top_k_mask(scores, groups, 5) == (slow_top_k(scores, groups, 5) > 0)).all()
    cohort = np.array([60, 90, 45, 100])[groups]
    fast = M.Capacity(scores, groups, 10, cohort_size=cohort).flagged()
    assert fast == pytest.approx(slow_top_k(scores, groups, 10, cohort))


@pytest.mark.parametrize("seed", range(3))
def test_measures_give_the_same_numbers_as_the_functions(seed):
    rng = np.random.default_rng(seed)
    y, p, w = random_case(rng, n=500, ties=seed == 0)
    rank = p + rng.normal(0, 0.05, p.size)
    flagged = M.Capacity(rank, np.arange(p.size) % 4, 5).flagged(w)
    got = M.Measures(y, rank, p, bins=5)(w, flagged)
    slope, intercept = M.calibration_slope_intercept(y, p, w)
    want = {"auroc": M.auroc_score(y, rank, w), "auprc": M.auprc_score(y, rank, w), "brier": M.brier_loss(y, p, w),
            "calibration_slope": slope, "calibration_intercept": intercept,
            "ece": M.expected_calibration_error(y, p, bins=5, w=w),
            "observed_to_expected": M.observed_to_expected(y, p, w),
            **M.capacity_metrics(y, flagged, w)}
    assert got.keys() == want.keys()
    for k in want:  # the recalibration fits group logit(p) on a grid of 0.01: nearly exact
        assert got[k] == pytest.approx(want[k], abs=1e-3 if k.startswith("calibration") else 1e-12), k


def test_weighted_quantiles_match_numpy_on_the_expanded_data():
    rng = np.random.default_rng(3)
    v = np.sort(rng.integers(0, 90, 50).astype(float))
    w = rng.integers(0, 4, 50).astype(float)
    expanded = np.repeat(v, w.astype(int))
    for q in (0.25, 0.5, 0.75):
        assert M.weighted_quantiles(v, w, (q,))[0] == np.quantile(expanded, q, method="inverted_cdf")


def test_person_counts_draw_people_with_replacement_reproducibly():
    a = list(M.person_counts(50, 3, seed=9))
    b = list(M.person_counts(50, 3, seed=9))
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert all(c.sum() == 50 and c.size == 50 for c in a)
    assert not (a[0] == a[1]).all()


def test_estimate_is_a_percentile_interval():
    e = M.Estimate.of(0.5, np.linspace(0, 1, 1001))
    assert (e.value, e.low, e.high) == pytest.approx((0.5, 0.025, 0.975))
    assert math.isnan(M.Estimate.of(0.5, [0.1, 0.2]).low)  # too few replicates: no interval


@settings(max_examples=200, deadline=None)
@given(n=st.integers(10, 3000), positives=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_calibration_intervals_hold_their_observed_rate_inside_zero_and_one(n, positives, seed):
    # A bin with no crises (or all crises) once gave a Wilson bound of -3e-18, which matplotlib
    # refused to draw as an error bar: the card's calibration figure failed in CI.
    rng = np.random.default_rng(seed)
    y = np.zeros(n)
    y[rng.choice(n, min(positives, n), replace=False)] = 1
    curve = M.calibration_curve(y, rng.random(n))
    low, obs, high = (np.array(curve[k]) for k in ("low", "observed", "high"))
    assert (low >= 0).all() and (high <= 1).all()
    assert (low <= obs).all() and (obs <= high).all()


@pytest.mark.parametrize("auroc_target, cases, non_cases", [(0.75, 100, 5000), (0.65, 40, 2000), (0.85, 400, 4000)])
def test_the_auroc_standard_error_matches_the_spread_over_data_sets_drawn_afresh(auroc_target, cases, non_cases):
    """DeLong's standard error against the slow, obvious estimate: the spread of the AUROC over data
    sets drawn afresh from the same population (binormal scores with that separation)."""
    from scipy.stats import norm

    rng = np.random.default_rng(5)
    shift = np.sqrt(2) * norm.ppf(auroc_target)  # binormal: AUROC = Φ(shift / √2)
    y = np.r_[np.ones(cases, int), np.zeros(non_cases, int)]
    draws, ses = [], []
    for _ in range(400):
        p = np.r_[rng.normal(shift, 1, cases), rng.normal(0, 1, non_cases)]
        draws.append(M.auroc_score(y, p))
        ses.append(M.auroc_standard_error(y, p))
    assert np.mean(ses) == pytest.approx(np.std(draws), rel=0.1)


def test_the_auroc_standard_error_by_hand():
    """Two cases, two non-cases, scores 0.1, 0.4 (non-cases) and 0.35, 0.8 (cases): the case at 0.35
    is above one non-case of two (½), the one at 0.8 above both (1); the non-case at 0.1 is below
    both cases (1), the one at 0.4 below one (½). Variances ⅛ and ⅛ (ddof 1), over 2 each: √⅛."""
    assert M.auroc_standard_error([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(math.sqrt(1 / 8))
    assert np.isnan(M.auroc_standard_error([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.4]))  # one case: no spread
