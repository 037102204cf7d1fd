"""The test-period evaluation: point estimates equal the metric functions, intervals come from
resampling people, small groups are suppressed, gaps beyond tolerance are flagged."""

from __future__ import annotations

import numpy as np
import pytest

from wobble.models import metrics as M
from wobble.models.evaluate import EvaluationRows, LeadEvents, Scorer, evaluate

TOL = {"auroc": 0.05, "observed_to_expected": 0.2, "fnr_at_capacity": 0.1, "fpr_at_capacity": 0.005}


def world(seed=0, people=600, weeks=4):
    """People seen at several weeks in two teams; group B's risk is under-estimated by the model."""
    rng = np.random.default_rng(seed)
    person = np.repeat(np.arange(people), weeks)
    week = np.tile(np.arange(weeks), people)
    team = person % 2
    frailty = rng.beta(1, 6, people)[person]
    p_true = np.clip(frailty + rng.normal(0, 0.02, person.size), 0.001, 0.99)
    y = (rng.random(person.size) < p_true).astype(float)
    group = np.where(person < 40, "B", np.where(person < 45, "tiny", "A"))
    model = np.where(group == "B", p_true / 2, p_true)
    baseline = np.clip(p_true + rng.normal(0, 0.15, person.size), 0.001, 0.99)
    rows = EvaluationRows(y=y, person=person, team_week=team * weeks + week, cohort=np.full(person.size, 1000.0),
                    attributes={"grp": group})
    return rows, [Scorer("model", model, model), Scorer("baseline", baseline, baseline)]


@pytest.fixture(scope="module")
def evaluated():
    rows, scorers = world()
    return rows, scorers, evaluate(rows, scorers, capacity=20, bins=10, replicates=100, seed=1, threshold=7,
                                   tolerance=TOL)


def test_point_estimates_are_the_metric_functions(evaluated):
    rows, scorers, ev = evaluated
    model = ev["scorers"]["model"]
    assert model["auroc"]["value"] == pytest.approx(M.auroc_score(rows.y, scorers[0].rank), abs=1e-6)
    assert model["brier"]["value"] == pytest.approx(M.brier_loss(rows.y, scorers[0].prob), abs=1e-6)
    flagged = M.Capacity(scorers[0].rank, rows.team_week, 20, rows.cohort).flagged()
    assert model["precision_at_capacity"]["value"] == pytest.approx(
        M.capacity_metrics(rows.y, flagged)["precision_at_capacity"], abs=1e-6)
    # 300 people per team-week of a team of 1,000 listing 20: 6 each, 8 team-weeks
    assert ev["listed_rows"] == 48
    diff = ev["differences"]["baseline"]["auroc"]
    base = ev["scorers"]["baseline"]["auroc"]["value"]
    assert diff["value"] == pytest.approx(model["auroc"]["value"] - base, abs=2e-6)


def test_intervals_bracket_the_estimate_and_separate_a_worse_scorer(evaluated):
    _, _, ev = evaluated
    for name in ("model", "baseline"):
        for metric, e in ev["scorers"][name].items():
            if e["low"] is not None and metric != "alerts_per_1000_per_week":
                assert e["low"] <= e["value"] <= e["high"], (name, metric)
    assert ev["differences"]["baseline"]["auroc"]["low"] > 0  # the noisy baseline is clearly worse


def test_resampling_people_widens_intervals_over_resampling_rows():
    """A person's rows are perfectly correlated here (same outcome every week): rows are not independent."""
    rng = np.random.default_rng(5)
    people, weeks = 400, 6
    person = np.repeat(np.arange(people), weeks)
    p = rng.uniform(0.05, 0.5, people)[person]
    y = (rng.random(people) < p[::weeks]).astype(float)[person]
    scorer = [Scorer("model", p, p)]
    kw = dict(capacity=5, bins=10, replicates=200, seed=2, threshold=7, tolerance=TOL)
    team, cohort = np.zeros(person.size, int), np.full(person.size, 800.0)
    by_person = evaluate(EvaluationRows(y, person, team, cohort), scorer, **kw)
    by_row = evaluate(EvaluationRows(y, np.arange(person.size), team, cohort), scorer, **kw)

    def width(ev):
        return ev["scorers"]["model"]["auroc"]["high"] - ev["scorers"]["model"]["auroc"]["low"]

    assert width(by_person) > 1.8 * width(by_row)


def test_small_groups_are_suppressed_and_gaps_are_flagged(evaluated):
    _, _, ev = evaluated
    groups = {g["group"]: g for g in ev["subgroups"]}
    tiny = groups["tiny"]  # 5 people: below the threshold of 7
    assert tiny["suppressed"] and tiny["people"] is None and tiny["metrics"] == {}
    b = groups["B"]
    assert not b["suppressed"] and b["people"] == 40
    oe = next(f for f in b["flags"] if f["metric"] == "observed_to_expected")
    assert oe["value"] > 1.5 and oe["interval_excludes_reference"]
    a = groups["A"]
    assert not any(f["metric"] == "observed_to_expected" for f in a["flags"])


def test_same_seed_same_numbers():
    rows, scorers = world(seed=3, people=200)
    kw = dict(capacity=10, bins=5, replicates=30, seed=4, threshold=7, tolerance=TOL)
    assert evaluate(rows, scorers, **kw) == evaluate(rows, scorers, **kw)


def test_lead_time_share_and_median():
    rows, scorers = world(seed=2, people=100)
    lead = LeadEvents(person=np.array([0, 0, 1, 2, 3]),
                      lead_days={"model": np.array([10.0, 24.0, np.nan, 3.0, np.nan]),
                                 "baseline": np.array([np.nan] * 5)})
    ev = evaluate(rows, scorers, capacity=10, bins=5, replicates=30, seed=4, threshold=7, tolerance=TOL, lead=lead)
    lt = ev["lead_time"]["model"]
    assert lt["share_preceded_by_listing"]["value"] == pytest.approx(3 / 5)
    assert lt["median_days"]["value"] == 10.0
    assert ev["lead_time"]["baseline"]["share_preceded_by_listing"]["value"] == 0
    assert ev["lead_time"]["model"]["events"] == 5
