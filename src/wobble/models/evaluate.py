"""Evaluate: every test-period figure a governance board reads, each with a 95% interval.

Reads test rows (one per person and test as-of date: the outcome, who the person is, their team
and week) and the scores of each scorer (the model, the baseline, the simulator's oracle, the
current champion); returns plain, JSON-ready data: metrics per scorer, the model's differences
from the others, the skill ratio, a subgroup table with small numbers suppressed and gaps
flagged, lead time, and the curves the card draws.

Intervals come from a person bootstrap: people are drawn with replacement and every row of a
person drawn twice counts twice (`metrics.person_counts`), because one person's rows at several
as-of dates rise and fall together; resampling rows would make the intervals too narrow.

"At capacity" means what a team's real list would do: each team lists its `capacity` highest
scores each week. The test sample holds only some of a team's people, so its share of the list
is scaled to its share of the team (see `metrics.Capacity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wobble.models.metrics import (
    METRICS,
    Capacity,
    Estimate,
    Measures,
    Ranking,
    calibration_curve,
    person_counts,
    weighted_quantiles,
)

# Metrics whose subgroup gaps are judged, with the tolerance field that judges them.
GAPS = {"auroc": "auroc", "fnr_at_capacity": "fnr_at_capacity", "fpr_at_capacity": "fpr_at_capacity"}
CAPACITY_METRICS = tuple(m for m in METRICS if m.endswith("_at_capacity") or m.startswith("alerts"))


@dataclass
class Scorer:
    """One way of ranking the test rows."""

    name: str  # model | baseline | oracle | champion
    rank: np.ndarray  # orders each team's list, highest first
    prob: np.ndarray  # the probability shown to people; NaN where this scorer has none


@dataclass
class EvaluationRows:
    y: np.ndarray  # 1 if the outcome happened
    person: np.ndarray  # person code, 0 … people − 1
    team_week: np.ndarray  # one code per (team, as-of): the groups that each get a list
    cohort: np.ndarray  # per row: how many people the team's whole cohort had that week
    attributes: dict[str, np.ndarray] = field(default_factory=dict)  # fairness attribute → labels

    @property
    def people(self) -> int:
        return int(self.person.max()) + 1 if self.person.size else 0


@dataclass
class LeadEvents:
    """Dated outcomes of test people, and for each scorer the days since their first listing."""

    person: np.ndarray  # person code of each event
    lead_days: dict[str, np.ndarray]  # scorer → days from first listing to the event; NaN: not listed


def evaluate(
    rows: EvaluationRows, scorers: list[Scorer], *, capacity: int, bins: int, replicates: int, seed: int,
    threshold: int, tolerance: dict[str, float], lead: LeadEvents | None = None,
) -> dict:
    """Point estimates and person-bootstrap intervals for every scorer, subgroup and lead time."""
    if not scorers or scorers[0].name != "model":
        raise ValueError("the first scorer must be the model")
    prepared = {}
    for s in scorers:
        ok = np.isfinite(s.prob) & np.isfinite(s.rank)
        cap = Capacity(np.where(ok, s.rank, -np.inf), rows.team_week, capacity, rows.cohort)
        prepared[s.name] = (None if ok.all() else np.flatnonzero(ok),
                            Measures(rows.y[ok], s.rank[ok], s.prob[ok], bins=bins), cap)
    model = scorers[0]
    groups = {(attr, str(g)): np.flatnonzero(labels == g) for attr, labels in rows.attributes.items()
              for g in sorted(set(labels.tolist()), key=str)}
    group_measures = {k: Measures(rows.y[i], model.rank[i], model.prob[i], bins=bins)
                      for k, i in groups.items() if i.size}
    lead_prep = _prepare_lead(lead) if lead is not None else {}

    def measure(counts: np.ndarray | None) -> dict:
        """Every figure with each person counted `counts` times (None: the sample itself)."""
        w = None if counts is None else counts[rows.person]
        out: dict = {}
        flags = {}
        for name, (ok, meas, cap) in prepared.items():
            flags[name] = cap.flagged(w)
            out[name] = meas(w, flags[name]) if ok is None else meas(
                None if w is None else w[ok], flags[name][ok])
        out["groups"] = {k: gm(None if w is None else w[groups[k]], flags["model"][groups[k]])
                         for k, gm in group_measures.items()}
        out["lead"] = {name: _lead_stats(p, np.ones(rows.people) if counts is None else counts)
                       for name, p in lead_prep.items()}
        return out

    point = measure(None)
    reps = [measure(c) for c in person_counts(rows.people, replicates, seed)]
    flagged = prepared["model"][2].listed()

    def est(path: tuple, fn=None) -> Estimate:
        get = fn or (lambda d: _dig(d, path))
        return Estimate.of(get(point), [get(r) for r in reps])

    out = {
        "rows": int(rows.y.size), "people": rows.people, "outcomes": int(rows.y.sum()),
        "prevalence": float(rows.y.mean()) if rows.y.size else float("nan"),
        "capacity": capacity, "listed_rows": int(flagged.sum()), "replicates": replicates, "seed": seed,
        "scorers": {s.name: {m: est((s.name, m)).to_dict() for m in point[s.name]} for s in scorers},
        "differences": {
            other.name: {m: est((), lambda d, o=other.name, m=m: d["model"][m] - d[o][m]).to_dict()
                         for m in ("auroc", "auprc", "brier", "precision_at_capacity", "recall_at_capacity")}
            for other in scorers[1:] if other.name != "oracle"
        },
        "skill_ratio": None,
        "subgroups": _subgroups(rows, groups, point, est, flagged, threshold, tolerance),
        "lead_time": {name: {k: est(("lead", name, k)).to_dict() for k in point["lead"][name]}
                      | {"events": int(lead.person.size)} for name in lead_prep} if lead else None,
        "curves": _curves(rows, scorers, bins, {name: cap.listed() for name, (_, _, cap) in prepared.items()}),
    }
    if "oracle" in point:
        out["skill_ratio"] = est((), lambda d: (d["model"]["auroc"] - 0.5) / (d["oracle"]["auroc"] - 0.5)).to_dict()
    return out


def _dig(d: dict, path: tuple):
    for key in path:
        d = d[key]
    return d


def _subgroups(rows: EvaluationRows, groups: dict, point: dict, est, flagged: np.ndarray, threshold: int,
               tolerance: dict[str, float]) -> list[dict]:
    """One row per (attribute, group): counts, shares, metrics with intervals, suppression, flags.

    Counts below `threshold` show as None. A group's metrics are shown only with at least
    `threshold` people, people with the outcome and people without it; its share of the listed
    rows only with at least `threshold` people listed; its at-capacity metrics only with at least
    `threshold` people listed and `threshold` listed people with the outcome.
    """
    overall = point["model"]
    total_rows, total_out, total_listed = rows.y.size, rows.y.sum(), flagged.sum()
    out = []
    for (attr, g), i in groups.items():
        person, y, listed_rows = rows.person[i], rows.y[i], flagged[i]
        people = np.unique(person).size
        cases = np.unique(person[y == 1]).size
        non_cases = np.unique(person[y == 0]).size
        listed = np.unique(person[listed_rows]).size
        listed_cases = np.unique(person[listed_rows & (y == 1)]).size
        shown = min(people, cases, non_cases) >= threshold
        capacity_shown = shown and min(listed, listed_cases) >= threshold
        entry = {
            "attribute": attr, "group": g,
            "people": _count(people, threshold), "people_with_outcome": _count(cases, threshold),
            "people_listed": _count(listed, threshold),
            "share_of_rows": float(i.size / total_rows) if shown else None,
            "share_of_outcomes": float(y.sum() / total_out) if shown and total_out else None,
            "share_of_listed": float(listed_rows.sum() / total_listed)
            if shown and listed >= threshold and total_listed else None,
            "suppressed": not shown, "capacity_suppressed": not capacity_shown, "metrics": {}, "flags": [],
        }
        if shown and (attr, g) in point["groups"]:
            for metric in point["groups"][(attr, g)]:
                if metric in CAPACITY_METRICS and not capacity_shown:
                    continue
                entry["metrics"][metric] = est(("groups", (attr, g), metric)).to_dict()
            entry["flags"] = _flags(entry["metrics"], overall, tolerance)
        out.append(entry)
    return out


def _count(n: int, threshold: int) -> int | None:
    return int(n) if n >= threshold else None


def _flags(metrics: dict, overall: dict, tolerance: dict[str, float]) -> list[dict]:
    """Gaps beyond tolerance: AUROC and at-capacity error rates against everyone; O/E against 1."""
    flags = []
    for metric, tol_key in GAPS.items():
        if metric not in metrics or metrics[metric]["value"] is None:
            continue
        e, ref = metrics[metric], overall[metric]
        gap = e["value"] - ref
        if abs(gap) > tolerance[tol_key]:
            clear = e["low"] is not None and not (e["low"] <= ref <= e["high"])
            flags.append({"metric": metric, "value": e["value"], "reference": ref, "gap": gap,
                          "tolerance": tolerance[tol_key], "interval_excludes_reference": clear})
    e = metrics.get("observed_to_expected")
    if e and e["value"] is not None and abs(e["value"] - 1) > tolerance["observed_to_expected"]:
        clear = e["low"] is not None and not (e["low"] <= 1 <= e["high"])
        flags.append({"metric": "observed_to_expected", "value": e["value"], "reference": 1.0,
                      "gap": e["value"] - 1, "tolerance": tolerance["observed_to_expected"],
                      "interval_excludes_reference": clear})
    return flags


def _prepare_lead(lead: LeadEvents) -> dict[str, tuple]:
    prepared = {}
    for name, days in lead.lead_days.items():
        listed = np.isfinite(days)
        order = np.argsort(days[listed], kind="stable")
        prepared[name] = (lead.person, listed, days[listed][order], lead.person[listed][order])
    return prepared


def _lead_stats(prep: tuple, counts: np.ndarray) -> dict[str, float]:
    person, listed, days_sorted, person_sorted = prep
    w = counts[person]
    total = w.sum()
    q1, median, q3 = weighted_quantiles(days_sorted, counts[person_sorted], (0.25, 0.5, 0.75))
    share = float(w[listed].sum() / total) if total > 0 else float("nan")
    return {"share_preceded_by_listing": share, "median_days": median, "q1_days": q1, "q3_days": q3}


def _curves(rows: EvaluationRows, scorers: list[Scorer], bins: int, listed: dict[str, np.ndarray],
            points: int = 200) -> dict:
    """Calibration bins and ROC points (at most `points` per scorer) for the card's figures; with each scorer's
    calibration, one more point for the rows it listed at capacity (`listed`: a mask per scorer), whose risks
    lie above most tenths'."""
    out: dict = {"calibration": {}, "roc": {}}
    for s in scorers:
        ok = np.isfinite(s.prob) & np.isfinite(s.rank)
        if not ok.any():
            continue
        out["calibration"][s.name] = calibration_curve(rows.y[ok], s.prob[ok], bins=bins)
        on_list = ok & listed[s.name]
        if on_list.any():
            out["calibration"][s.name]["listed"] = calibration_curve(rows.y[on_list], s.prob[on_list], bins=1)
        fpr, tpr = Ranking(rows.y[ok], s.rank[ok]).roc_curve()
        keep = np.unique(np.linspace(0, fpr.size - 1, min(points, fpr.size)).round().astype(int))
        out["roc"][s.name] = {"fpr": fpr[keep].round(5).tolist(), "tpr": tpr[keep].round(5).tolist()}
    return out
