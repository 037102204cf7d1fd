"""Matured performance: for lists whose horizon has passed, what actually happened, beside the card.

AUROC, calibration and precision at capacity on the people scored at each matured list, overall
and per fairness group, next to the figures and 95% intervals of the version's model card (read
from the card's own evaluation, so labels and intervals are the card's). A matured AUROC below the
card's is a finding only beyond the monitor's tolerance and beyond chance (`below_card`).
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import polars as pl

from wobble.core.config import Config
from wobble.core.sql import in_dates
from wobble.core.vocab import FAIRNESS_ATTRIBUTES
from wobble.core.warehouse import scalar
from wobble.models import metrics as M
from wobble.models.cohort import attributes_sql, label_sql
from wobble.models.tracking import load_evaluation
from wobble.ops.monitor.findings import Finding

OE_RANGE = (0.8, 1.25)  # observed / expected crises outside this: watch
Z95 = 1.96  # a drop within this many standard errors is within chance


def _matured(con, cfg: Config, spec, as_of: date) -> dict:
    """Per model version with lists whose horizon has passed: what actually happened, beside its card."""
    h = spec.target.horizon_days
    last_matured = as_of - timedelta(days=h)
    lists = con.execute(
        "SELECT model_version, list(DISTINCT as_of ORDER BY as_of) FROM huddle_lists WHERE model_name = ? "
        "AND as_of <= ? GROUP BY ALL ORDER BY ALL", [spec.name, last_matured]).fetchall()
    pending = scalar(con, "SELECT min(as_of) FROM huddle_lists WHERE model_name = ? AND as_of > ?",
                     [spec.name, last_matured])
    out = {"horizon_days": h, "matured_before": last_matured.isoformat(), "versions": [],
           "outcome": spec.target.outcome_phrase,  # what "went on to" means: a crisis, or a rise
           "next_matures": (pending + timedelta(days=h)).isoformat() if pending else None}
    for version, as_ofs in lists:
        frame = _matured_rows(con, spec, version, as_ofs)
        if frame.height == 0:
            continue
        card = card_figures(load_evaluation(cfg, spec.name, version))
        out["versions"].append({
            "version": version, "as_ofs": [d.isoformat() for d in as_ofs], "overall": _performance(frame),
            "subgroups": _subgroups(frame, card, cfg.wobble.small_number_threshold),
            "card": {k: e["value"] for k, e in card["overall"].items()},
            "card_intervals": {k: (e["low"], e["high"]) if e["low"] is not None else None
                               for k, e in card["overall"].items()},
        })
    return out


def _matured_rows(con, spec, version: str, as_ofs: list[date]) -> pl.DataFrame:
    """One row per person scored at the matured lists: risk, outcome, listed or not, fairness groups."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _matured AS
        SELECT s.person_id, s.as_of, s.team_id, s.risk FROM scores s
        WHERE s.model_name = ? AND s.model_version = ? AND s.as_of IN {in_dates(as_ofs)}
          AND s.cohort_rule IS NULL""", [spec.name, version])
    attrs = ", ".join(f"{sql} AS {a}" for a, sql in attributes_sql("m.as_of").items())
    return con.sql(f"""
        SELECT m.person_id, m.as_of, m.team_id, m.risk, l.label::INTEGER AS label,
               (h.person_id IS NOT NULL)::INTEGER AS listed, {attrs}
        FROM _matured m JOIN ({label_sql(spec, '_matured')}) l
          ON l.person_id = m.person_id AND l.as_of = m.as_of
        JOIN persons p ON p.person_id = m.person_id
        LEFT JOIN (SELECT DISTINCT team_id, as_of, person_id FROM huddle_lists
                   WHERE model_name = ? AND model_version = ? AND section = 'capacity') h
          ON h.team_id = m.team_id AND h.as_of = m.as_of AND h.person_id = m.person_id
    """, params=[spec.name, version]).pl()


def _subgroups(frame: pl.DataFrame, card: dict, small: int) -> dict[str, list[dict]]:
    """Per fairness attribute and group: the matured figures (suppressed below `small`) and the card's AUROC."""
    groups = {}
    for col in FAIRNESS_ATTRIBUTES:
        rows = []
        for (value,), part in frame.group_by([col], maintain_order=False):
            r = _performance(part) if part.height >= small and part["label"].sum() >= small else None
            card_auroc = card["subgroups"].get((col, str(value)), {}).get("auroc")
            rows.append({"value": str(value), "people": part.height, "crises": int(part["label"].sum()),
                         "metrics": r, "card_auroc": card_auroc})
        groups[col] = sorted(rows, key=lambda r: r["value"])
    return groups


CARD_METRICS = ("auroc", "brier", "calibration_slope", "calibration_intercept", "precision_at_capacity")


def card_figures(evaluation: dict) -> dict:
    """The model card's figures, from the evaluation it was rendered from: `overall` (metric →
    value, low, high; and the outcome rate as `prevalence`) and `subgroups` ((attribute, group) →
    metric → value, for groups the card did not suppress)."""
    model = evaluation["scorers"]["model"]
    overall = {k: {"value": model[k]["value"], "low": model[k].get("low"), "high": model[k].get("high")}
               for k in CARD_METRICS if k in model}
    overall["prevalence"] = {"value": evaluation.get("prevalence"), "low": None, "high": None}
    subgroups = {(g["attribute"], str(g["group"])): {m: e["value"] for m, e in g["metrics"].items() if e}
                 for g in evaluation.get("subgroups", []) if not g.get("suppressed")}
    return {"overall": overall, "subgroups": subgroups}


def _performance(frame: pl.DataFrame) -> dict:
    y = frame["label"].to_numpy().astype(int)
    p = frame["risk"].to_numpy()
    listed = frame["listed"].to_numpy().astype(bool)
    slope, intercept = M.calibration_slope_intercept(y, p)
    crises = int(y.sum())
    auroc = M.auroc_score(y, p)
    return {
        "people": frame.height, "crises": crises, "observed_rate": float(y.mean()),
        "mean_risk": float(p.mean()), "observed_to_expected": crises / max(float(p.sum()), 1e-9),
        "auroc": auroc, "auroc_se": M.auroc_standard_error(y, p),
        "brier": M.brier_loss(y, p), "calibration_slope": slope,
        "calibration_intercept": intercept, "listed": int(listed.sum()),
        "listed_crises": int((y.astype(bool) & listed).sum()),
        "precision_at_capacity": float(y[listed].mean()) if listed.any() else float("nan"),
        "recall_at_capacity": float(y[listed].sum() / crises) if crises else float("nan"),
    }


def below_card(card_auroc: float | None, observed: dict, auroc_drop: float) -> bool:
    """Whether a matured AUROC (`observed`: `_performance`'s figures) is below the card's by more than
    `auroc_drop` and by more than chance gives over that many people (Z95 standard errors): a list
    of 100 crises among 7,000 people may read 0.05 below its card by chance alone."""
    if card_auroc is None or math.isnan(observed["auroc"]):
        return False
    drop = card_auroc - observed["auroc"]
    se = observed.get("auroc_se", float("nan"))
    return drop > auroc_drop and (math.isnan(se) or drop > Z95 * se)


def _within(o: dict) -> str:
    """' (95% interval 0.675–0.789)' for a matured AUROC with its standard error, else ''."""
    se = o.get("auroc_se", float("nan"))
    return "" if math.isnan(se) else f" (95% interval {o['auroc'] - Z95 * se:.3f}–{o['auroc'] + Z95 * se:.3f})"


def _performance_findings(matured: dict, m) -> list[Finding]:
    out = []
    lo, hi = m.calibration_slope
    outcome = matured.get("outcome", "a crisis")
    for v in matured["versions"]:
        o, card = v["overall"], v["card"]
        dates = v["as_ofs"]
        when = f"lists from {dates[0]} to {dates[-1]}" if len(dates) > 1 else f"the list of {dates[0]}"
        if o["crises"] < m.min_crises:
            continue
        if below_card(card.get("auroc"), o, m.auroc_drop):
            out.append(Finding(
                "act", "performance",
                f"Version {v['version']} ranks people less well than its model card says: AUROC {o['auroc']:.3f}"
                f"{_within(o)} on {when}, against {card['auroc']:.3f} on the card.",
                f"People who went on to {outcome} were less often near the top of the lists than the board "
                "was told. Look at the drift section for a cause; the data team decides whether to retrain "
                "and the governance board whether to approve a new version."))
        if not math.isnan(o["calibration_slope"]) and not lo <= o["calibration_slope"] <= hi:
            sense = ("the risks shown are more extreme than what happened" if o["calibration_slope"] < lo
                     else "the risks shown are flatter than what happened")
            out.append(Finding(
                "act", "performance",
                f"Version {v['version']}'s risks are miscalibrated on {when}: calibration slope "
                f"{o['calibration_slope']:.2f} (expected between {lo} and {hi}); {sense}.",
                "Huddles read the risk as a chance ('about 1 in 4'); if it is wrong, so is that sentence."))
        oe = o["observed_to_expected"]
        if not OE_RANGE[0] <= oe <= OE_RANGE[1]:
            out.append(Finding(
                "watch", "performance",
                f"On {when}, {o['crises']:,} people went on to {outcome} where the risks implied about "
                f"{o['crises'] / oe:,.0f} (observed ÷ expected {oe:.2f}).",
                "Risks are running " + ("low" if oe > 1 else "high") + ": either need has changed or the "
                "recording has."))
        for col, rows in v["subgroups"].items():
            for r in rows:
                mr, card_auroc = r["metrics"], r["card_auroc"]
                if mr and r["crises"] >= m.min_crises and below_card(card_auroc, mr, m.auroc_drop):
                    out.append(Finding(
                        "watch", "performance",
                        f"For {FAIRNESS_ATTRIBUTES[col]} {r['value']}, version {v['version']} ranks people "
                        f"less well than its card says: AUROC {mr['auroc']:.3f}{_within(mr)} on {when}, "
                        f"against {card_auroc:.3f} on the card ({r['people']:,} person-dates, "
                        f"{r['crises']:,} with the outcome).",
                        "A group for whom the model has got worse is a fairness question for the governance "
                        "board."))
    return out


