"""Monitor: is the champion model still looking at the population it learned from, and is it right?

Reads `feature_snapshots` (the current as-of date and the model's training as-of dates), `scores`,
`huddle_lists`, `huddle_outcomes`, `contacts`, `tags`, `persons` and the model version's MLflow run
(its card figures and training dates); writes one report, Markdown and HTML, under
`<outputs>/monitor/<as_of>/`. It never retrains, re-approves or republishes: it only says what needs
a human look and why. (If snapshots it needs are missing it builds them, as the features stage
would; nothing else in the warehouse changes.)

Four questions, one section each:
- drift: the population stability index (PSI) of every model feature and of the risk score, the
  current as-of date against the training window. PSI = Σ (now − then) · ln(now / then) over ten
  bins cut at the training window's deciles (plus one bin for "missing"); shares below 1 in 10,000
  count as 1 in 10,000 so an empty bin cannot give an infinite index.
- matured performance: for lists whose horizon has passed, AUROC, calibration and precision at
  capacity on what actually happened, overall and per subgroup, beside the model card's figures.
- huddle outcomes: the share of listed people discussed, decisions by kind, and crises among
  people the huddle marked "not a concern".
- relational impact: discussed people against comparable listed people not yet discussed, 90 days
  before and after the list; an observational comparison, reported with its counts.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import jinja2
import numpy as np
import polars as pl

from wobble.config import Config
from wobble.errors import WobbleError
from wobble.vocab import CRISIS_SERVICES, age_band_sql, sql_list
from wobble.warehouse import connect, scalar

LEVELS = ("ok", "watch", "act")
PSI_FLOOR = 1e-4
DECILES = [i / 10 for i in range(1, 10)]
MIN_TEAM_PEOPLE = 500  # smaller teams' PSI is mostly noise: shown, not judged
SAMPLE_ROWS = 200_000  # rows scored for the score's PSI, per side: a deterministic sample by person
OUTCOME_WEEKS = 26  # huddle outcomes are summarised over lists from the last half year
IMPACT_DAYS = 90
OE_RANGE = (0.8, 1.25)  # observed / expected crises outside this: watch
DISCUSSED_SHARE = 0.5  # fewer of the listed people discussed than this: watch
SUBGROUPS = {"age_band": "age band", "sex": "sex", "ethnicity_group": "ethnicity group",
             "imd_quintile": "deprivation quintile (1 = most deprived)"}
# Outcome kinds are compared after normalising ("Not a concern" → not_a_concern).
OUTCOME_KIND = "lower(regexp_replace(trim(outcome), '[^A-Za-z]+', '_', 'g'))"
NOT_A_CONCERN = "not_a_concern"
NOT_DISCUSSED = "deferred"

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
)


@dataclass
class Finding:
    """One thing that needs a human look: what it is, in plain words, and why it matters."""

    level: str  # watch | act
    area: str  # drift | performance | outcomes
    what: str
    why: str


@dataclass
class MonitorResult:
    model_name: str
    model_version: str
    as_of: date
    fail_on: str
    findings: list[Finding]
    drift: dict
    matured: dict
    outcomes: dict
    impact: dict
    built_snapshots: list[date]
    report_md: Path
    report_html: Path
    seconds: float = 0.0

    @property
    def level(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="ok")

    @property
    def flagged(self) -> bool:
        """True when something reached the configured level (`[monitor] fail_on`, default act)."""
        return LEVELS.index(self.level) >= LEVELS.index(self.fail_on)

    def summary(self) -> dict:
        return {
            "model_name": self.model_name, "model_version": self.model_version,
            "as_of": self.as_of.isoformat(), "level": self.level, "flagged": self.flagged,
            "findings": [asdict(f) for f in self.findings],
            "score_psi": self.drift.get("score", {}).get("psi"),
            "features_watch": sum(f["level"] == "watch" for f in self.drift.get("features", [])),
            "features_act": sum(f["level"] == "act" for f in self.drift.get("features", [])),
            "matured_lists": [m["as_ofs"] for m in self.matured.get("versions", [])],
            "outcomes_recorded": self.outcomes.get("recorded", 0),
            "built_snapshots": [d.isoformat() for d in self.built_snapshots],
            "report_md": str(self.report_md), "report_html": str(self.report_html),
            "seconds": round(self.seconds, 2),
        }


def monitor(cfg: Config, *, model: str | None = None, as_of: date | None = None) -> MonitorResult:
    """Check drift, matured performance and huddle outcomes for the champion; write the report."""
    from wobble.approve import champion
    from wobble.features import build_features, dates_to_build, load_catalogue
    from wobble.pipeline import as_of_for
    from wobble.spec import load_spec
    from wobble.tracking import client, load_version

    t0 = time.perf_counter()
    model = model or cfg.wobble.models[0]
    as_of = as_of_for(cfg, as_of)
    spec = load_spec(cfg.models_dir, model)
    version = champion(cfg, model)
    booster, calibrator, features, run_id = load_version(cfg, model, version)
    run = client(cfg).get_run(run_id)
    train_as_ofs = [date.fromisoformat(d) for d in run.data.params.get("train_as_ofs", "").split(",") if d]
    if not train_as_ofs:
        raise WobbleError(f"model {model} v{version} does not record its training as-of dates "
                          "(MLflow param train_as_ofs): retrain it with this version of wobble")
    with connect(cfg.warehouse, read_only=True) as con:
        built = dates_to_build(con, [*train_as_ofs, as_of])
    if built:
        build_features(cfg, built)
    cat = load_catalogue(cfg.features_dir)
    m = cfg.monitor
    with connect(cfg.warehouse, read_only=True) as con:
        cohort = f"age BETWEEN {spec.cohort.min_age} AND {spec.cohort.max_age}"
        drift = _drift(con, features, cat, train_as_ofs, as_of, cohort, booster, calibrator, m)
        matured = _matured(con, cfg, spec, as_of)
        outcomes = _outcomes(con, model, as_of, spec.target.horizon_days)
        impact = _impact(con, model, as_of, cfg.wobble.small_number_threshold)
    findings = sorted(_drift_findings(drift, m) + _performance_findings(matured, m)
                      + _outcome_findings(outcomes, spec.target.horizon_days),
                      key=lambda f: -LEVELS.index(f.level))
    result = MonitorResult(model, version, as_of, m.fail_on, findings, drift, matured, outcomes,
                           impact, built, Path(), Path())
    result.report_md, result.report_html = _write_report(cfg, spec, result)
    result.seconds = time.perf_counter() - t0
    return result


# --- drift ------------------------------------------------------------------------------------


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI between two count vectors over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1), PSI_FLOOR)
    a = np.maximum(actual / max(actual.sum(), 1), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _level(psi: float, m) -> str:
    return "act" if psi >= m.psi_act else "watch" if psi >= m.psi_watch else "ok"


def _dates_sql(dates: list[date]) -> str:
    return "(" + ", ".join(f"DATE '{d.isoformat()}'" for d in dates) + ")"


def _person_sample(n_rows: int, keep: int = SAMPLE_ROWS) -> str:
    """A SQL filter keeping about `keep` of `n_rows`, by person: pseudonyms are uniform hex."""
    if n_rows <= keep:
        return "true"
    cut = max(1, int(16**6 * keep / n_rows))
    return f"substr(person_id, 1, 6) < '{cut:06x}'"


def _drift(con, features, cat, ref_dates, as_of, cohort, booster, calibrator, m) -> dict:
    present = {r[0] for r in con.execute("DESCRIBE feature_snapshots").fetchall()}
    missing = [f for f in features if f not in present]
    if missing:
        raise WobbleError(f"feature_snapshots lacks model features {', '.join(missing[:5])}: the feature "
                          "catalogue changed since this model was trained; retrain it")
    ref = f"as_of IN {_dates_sql(ref_dates)} AND {cohort}"
    cur = f"as_of = DATE '{as_of.isoformat()}' AND {cohort}"
    n_ref = scalar(con, f"SELECT count(*) FROM feature_snapshots WHERE {ref}")
    n_cur = scalar(con, f"SELECT count(*) FROM feature_snapshots WHERE {cur}")
    if not n_ref or not n_cur:
        raise WobbleError(f"no one in the cohort at {as_of if not n_cur else 'the training dates'}")
    # bin edges: the training window's deciles, computed on a sample of people when it is large
    edges_row = con.execute(
        "SELECT " + ", ".join(f"quantile_disc({f}::DOUBLE, {DECILES})" for f in features)
        + f" FROM feature_snapshots WHERE {ref} AND {_person_sample(n_ref, 10 * SAMPLE_ROWS)}").fetchall()[0]
    edges = {f: sorted({e for e in (row or []) if e is not None}) for f, row in zip(features, edges_row, strict=True)}

    def binned(f: str) -> str:
        steps = " + ".join(f"({f}::DOUBLE > {e!r})::INT" for e in edges[f]) or "0"
        return f"CASE WHEN {f} IS NULL THEN -1 ELSE {steps} END"

    aggs = ", ".join(f"histogram({binned(f)}), avg({f}::DOUBLE), avg(({f} IS NULL)::DOUBLE)" for f in features)
    sides = {}
    for side, where in (("ref", ref), ("cur", cur)):  # one scan per side: every team, and all teams
        result = con.execute(f"SELECT grouping(team_id), team_id, count(*), {aggs} FROM feature_snapshots "
                             f"WHERE {where} GROUP BY GROUPING SETS ((team_id), ())").fetchall()
        sides[side] = {None if r[0] else r[1]: r[3:] for r in result}
        sizes = {None if r[0] else r[1]: r[2] for r in result}  # the current side's, after the loop

    def compare(team: str | None) -> list[dict]:
        rows = []
        for i, f in enumerate(features):
            (h_ref, mean_ref, miss_ref), (h_cur, mean_cur, miss_cur) = (
                sides[s][team][3 * i: 3 * i + 3] for s in ("ref", "cur"))
            bins = sorted(set(h_ref) | set(h_cur))
            psi = _psi(np.array([h_ref.get(b, 0) for b in bins], float),
                       np.array([h_cur.get(b, 0) for b in bins], float))
            rows.append({"feature": f, "description": _description(cat, f), "psi": round(psi, 4),
                         "level": _level(psi, m), "ref_mean": mean_ref, "cur_mean": mean_cur,
                         "ref_missing": miss_ref, "cur_missing": miss_cur})
        return sorted(rows, key=lambda r: -r["psi"])

    score = _score_drift(con, features, ref, cur, n_ref, n_cur, booster, calibrator, m)
    gaps = _feed_gaps(con, as_of)
    teams = []
    for t in score.pop("teams"):
        if t["team"] in sides["ref"] and t["team"] in sides["cur"]:
            judged = sizes[t["team"]] >= MIN_TEAM_PEOPLE
            t["features"] = [r for r in compare(t["team"]) if r["level"] != "ok"] if judged else []
            t["people"], t["judged"] = sizes[t["team"]], judged
            t["feed_gap"] = gaps.get(t["team"], "none")
            if not judged:
                t["level"] = "ok"
            teams.append(t)
    return {"ref_dates": [d.isoformat() for d in ref_dates], "as_of": as_of.isoformat(),
            "n_ref": int(n_ref), "n_cur": int(n_cur), "features": compare(None), "score": score,
            "teams": teams}


def _feed_gaps(con, as_of: date) -> dict[str, str]:
    """Per team at `as_of`: 'ongoing' when one of its usual feeds is quiet in the last 30 days,
    'resumed' when one went quiet earlier in the last year and has since come back (yearly inputs
    still show the hole), 'none' otherwise; by the same rule as the team_feed_gap features."""
    from wobble.features import team_feed_sql

    rows = con.execute(team_feed_sql(f"[DATE '{as_of.isoformat()}']")).fetchall()
    return {team: "ongoing" if 0 in quiet else "resumed" if quiet else "none"
            for team, _, quiet in rows if quiet is not None}


def _description(cat, feature: str) -> str:
    try:
        return cat.get(feature).description
    except KeyError:
        return feature


def _score_drift(con, features, ref, cur, n_ref, n_cur, booster, calibrator, m) -> dict:
    """PSI of the calibrated risk, overall and per team, on a sample of people from each side."""

    def risks(where: str, n: int) -> pl.DataFrame:
        frame = con.sql(f"SELECT team_id, {', '.join(features)} FROM feature_snapshots "
                        f"WHERE {where} AND {_person_sample(n)} ORDER BY as_of, person_id").pl()
        X = frame.select(features).to_numpy().astype(np.float64)
        return frame.select("team_id").with_columns(pl.Series("risk", calibrator.predict(booster.predict(X))))

    then, now = risks(ref, n_ref), risks(cur, n_cur)
    edges = np.unique(np.quantile(then["risk"].to_numpy(), DECILES))

    def psi_of(a: np.ndarray, b: np.ndarray) -> float:
        k = edges.size + 1
        return _psi(np.bincount(np.searchsorted(edges, a, "left"), minlength=k).astype(float),
                    np.bincount(np.searchsorted(edges, b, "left"), minlength=k).astype(float))

    overall = psi_of(then["risk"].to_numpy(), now["risk"].to_numpy())
    teams = []
    for team in sorted(set(now["team_id"].to_list()) & set(then["team_id"].to_list())):
        a = then.filter(pl.col("team_id") == team)["risk"].to_numpy()
        b = now.filter(pl.col("team_id") == team)["risk"].to_numpy()
        p = psi_of(a, b)
        teams.append({"team": team, "psi": round(p, 4), "level": _level(p, m), "ref_mean": float(a.mean()),
                      "cur_mean": float(b.mean()), "people": int(b.size)})
    return {"psi": round(overall, 4), "level": _level(overall, m), "ref_mean": float(then["risk"].mean()),
            "cur_mean": float(now["risk"].mean()), "sampled_ref": then.height, "sampled_cur": now.height,
            "teams": teams}


def _drift_findings(drift: dict, m) -> list[Finding]:
    out = []
    s = drift["score"]
    if s["level"] != "ok":
        out.append(Finding(
            s["level"], "drift",
            f"The risk scores have shifted since the training window: PSI {s['psi']:.2f} "
            f"(average risk {_pct(s['ref_mean'])} then, {_pct(s['cur_mean'])} now).",
            "The model now sees a population unlike the one it learned from, so its risks may no longer "
            "be calibrated. Look at the features below to see what moved; ask whether a source changed "
            "(a new system, a coding change, a missing feed) or the population really changed."))
    for t in drift["teams"]:
        levels = [t["level"]] + [f["level"] for f in t["features"]]
        if all(lv == "ok" for lv in levels):
            continue
        moved = "; ".join(_moved(f) for f in t["features"][:3])
        n = len(t["features"])
        head = (f"the risk scores shifted (PSI {t['psi']:.2f}, average risk {_pct(t['ref_mean'])} then, "
                f"{_pct(t['cur_mean'])} now)" if t["level"] != "ok" else
                f"{n} input{'s' if n > 1 else ''} shifted though the risk scores held (PSI {t['psi']:.2f})")
        text = f"In team {t['team']}, {head}" + (f"; the inputs that moved most there: {moved}" if moved else "")
        if t["level"] == "ok" and t.get("feed_gap") == "resumed":
            # The scores held and the cause is known and over: its lists already carry the caveat.
            out.append(Finding(
                "watch", "drift",
                text + ". One of the team's data feeds went quiet earlier in the year and has since resumed, "
                "so inputs that look back a year still show the hole.",
                "Its lists already say some contacts may be missing. Ask the source whether it can send the "
                "missing months; the shift fades as the gap leaves the 12-month window."))
            continue
        out.append(Finding(
            "act" if "act" in levels else "watch", "drift", text + ".",
            "A change in one team usually means one of its data feeds changed or stopped, not its people; "
            "check the team's sources before trusting its list."))
    for level in ("act", "watch"):
        moved = [f for f in drift["features"] if f["level"] == level]
        if not moved:
            continue
        listed = "; ".join(_moved(f) for f in moved[:5])
        more = f"; and {len(moved) - 5} more" if len(moved) > 5 else ""
        bound = m.psi_act if level == "act" else m.psi_watch
        out.append(Finding(
            level, "drift",
            f"{len(moved)} model input{'s' if len(moved) > 1 else ''} shifted by a PSI of {bound} or more: "
            f"{listed}{more}.",
            "Inputs that move this much change who reaches the top of the lists. Check whether the change "
            "is real (people's needs) or in the data (recording, coding, late or missing extracts)."))
    return out


def _moved(f: dict) -> str:
    return f"{f['description']} (PSI {f['psi']:.2f}: average {_num(f['ref_mean'])} → {_num(f['cur_mean'])})"


# --- matured performance ----------------------------------------------------------------------


def _matured(con, cfg: Config, spec, as_of: date) -> dict:
    """Per model version with lists whose horizon has passed: what actually happened."""
    from wobble import metrics as M
    from wobble.tracking import client
    from wobble.train import label_sql

    h = spec.target.horizon_days
    last_matured = as_of - timedelta(days=h)
    lists = con.execute(
        "SELECT model_version, list(DISTINCT as_of ORDER BY as_of) FROM huddle_lists WHERE model_name = ? "
        "AND as_of <= ? GROUP BY ALL ORDER BY ALL", [spec.name, last_matured]).fetchall()
    pending = scalar(con, "SELECT min(as_of) FROM huddle_lists WHERE model_name = ? AND as_of > ?",
                     [spec.name, last_matured])
    out = {"horizon_days": h, "matured_before": last_matured.isoformat(), "versions": [],
           "next_matures": (pending + timedelta(days=h)).isoformat() if pending else None}
    small = cfg.wobble.small_number_threshold
    for version, dates in lists:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _matured AS
            SELECT s.person_id, s.as_of, s.team_id, s.risk FROM scores s
            WHERE s.model_name = ? AND s.model_version = ? AND s.as_of IN {_dates_sql(dates)}""",
                    [spec.name, version])
        frame = con.sql(f"""
            SELECT m.person_id, m.as_of, m.team_id, m.risk, l.label::INTEGER AS label,
                   (h.person_id IS NOT NULL)::INTEGER AS listed,
                   {age_band_sql('(year(m.as_of) - p.birth_year)')} AS age_band, p.sex, p.ethnicity_group,
                   ((p.imd_decile + 1) // 2)::INTEGER::VARCHAR AS imd_quintile
            FROM _matured m JOIN ({label_sql(spec, '_matured')}) l
              ON l.person_id = m.person_id AND l.as_of = m.as_of
            JOIN persons p ON p.person_id = m.person_id
            LEFT JOIN (SELECT DISTINCT team_id, as_of, person_id FROM huddle_lists
                       WHERE model_name = '{spec.name}' AND model_version = '{version}') h
              ON h.team_id = m.team_id AND h.as_of = m.as_of AND h.person_id = m.person_id
        """).pl()
        if frame.height == 0:
            continue
        overall = _performance(M, frame)
        groups = {}
        for col in SUBGROUPS:
            rows = []
            for (value,), part in frame.group_by([col], maintain_order=False):
                r = _performance(M, part) if part.height >= small and part["label"].sum() >= small else None
                rows.append({"value": "not recorded" if value is None else str(value), "people": part.height,
                             "crises": int(part["label"].sum()), "metrics": r})
            groups[col] = sorted(rows, key=lambda r: r["value"])
        c = client(cfg)
        card = c.get_run(c.get_model_version(spec.name, version).run_id).data.metrics
        for col, rows in groups.items():
            for r in rows:
                r["card_auroc"] = _card_subgroup(card, col, r["value"], "auroc")
        out["versions"].append({
            "version": version, "as_ofs": [d.isoformat() for d in dates], "overall": overall,
            "subgroups": groups, "card": {k: card.get(k) for k in _CARD_METRICS},
            "card_intervals": {k: _interval(card, k) for k in _CARD_METRICS},
        })
    return out


_CARD_METRICS = ("auroc", "brier", "calibration_slope", "calibration_intercept", "precision_at_capacity",
                 "prevalence")


def _interval(metrics: dict, name: str) -> tuple[float, float] | None:
    """The card's 95% interval for a metric, under whichever naming the training run used."""
    for lo, hi in (("_ci_low", "_ci_high"), ("_lo", "_hi"), ("_lower", "_upper"), ("_ci_lower", "_ci_upper")):
        if name + lo in metrics and name + hi in metrics:
            return metrics[name + lo], metrics[name + hi]
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


def _card_subgroup(metrics: dict, group: str, value: str, metric: str) -> float | None:
    """The card's figure for one subgroup, found by group, value and metric in the MLflow metric name
    (e.g. `auroc.age_band.80+` or `subgroup_age_band_80_auroc`); None if the run has none."""
    want = [f"_{_slug(group)}_", f"_{_slug(value)}_", f"_{metric}_"]
    for name, v in sorted(metrics.items()):
        s = f"_{_slug(name)}_"
        if all(w in s for w in want) and not any(x in s for x in _NOT_A_POINT):
            return v
    return None


_NOT_A_POINT = ("_ci_", "_lo_", "_hi_", "_low_", "_high_", "_lower_", "_upper_", "_baseline_", "_oracle_",
                "_n_", "_count_")


def _performance(M, frame: pl.DataFrame) -> dict:
    y = frame["label"].to_numpy().astype(int)
    p = frame["risk"].to_numpy()
    listed = frame["listed"].to_numpy().astype(bool)
    slope, intercept = M.calibration_slope_intercept(y, p)
    crises = int(y.sum())
    return {
        "people": frame.height, "crises": crises, "observed_rate": float(y.mean()),
        "mean_risk": float(p.mean()), "observed_to_expected": crises / max(float(p.sum()), 1e-9),
        "auroc": M.auroc_score(y, p), "brier": M.brier_loss(y, p), "calibration_slope": slope,
        "calibration_intercept": intercept, "listed": int(listed.sum()),
        "listed_crises": int((y.astype(bool) & listed).sum()),
        "precision_at_capacity": float(y[listed].mean()) if listed.any() else float("nan"),
        "recall_at_capacity": float(y[listed].sum() / crises) if crises else float("nan"),
    }


def _performance_findings(matured: dict, m) -> list[Finding]:
    out = []
    lo, hi = m.calibration_slope
    for v in matured["versions"]:
        o, card = v["overall"], v["card"]
        dates = v["as_ofs"]
        when = f"lists from {dates[0]} to {dates[-1]}" if len(dates) > 1 else f"the list of {dates[0]}"
        if o["crises"] < m.min_crises:
            continue
        if card.get("auroc") is not None and card["auroc"] - o["auroc"] > m.auroc_drop:
            out.append(Finding(
                "act", "performance",
                f"Version {v['version']} ranks people less well than its model card says: AUROC {o['auroc']:.3f} "
                f"on {when}, against {card['auroc']:.3f} on the card.",
                "People who went on to a crisis were less often near the top of the lists than the board "
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
                f"On {when}, {o['crises']:,} people had a crisis where the risks implied about "
                f"{o['crises'] / oe:,.0f} (observed ÷ expected {oe:.2f}).",
                "Risks are running " + ("low" if oe > 1 else "high") + ": either need has changed or the "
                "recording of crises has."))
        for col, rows in v["subgroups"].items():
            for r in rows:
                mr, card_auroc = r["metrics"], r["card_auroc"]
                if mr and card_auroc is not None and r["crises"] >= m.min_crises \
                        and card_auroc - mr["auroc"] > m.auroc_drop:
                    out.append(Finding(
                        "watch", "performance",
                        f"For {SUBGROUPS[col]} {r['value']}, version {v['version']} ranks people less well than "
                        f"its card says: AUROC {mr['auroc']:.3f} on {when}, against {card_auroc:.3f} on the card "
                        f"({r['people']:,} person-dates, {r['crises']:,} crises).",
                        "A group for whom the model has got worse is a fairness question for the governance "
                        "board."))
    return out


# --- huddle outcomes --------------------------------------------------------------------------


def _outcomes(con, model: str, as_of: date, horizon: int) -> dict:
    since = as_of - timedelta(weeks=OUTCOME_WEEKS)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _decided AS
        SELECT l.team_id, l.as_of, l.person_id, o.kind, o.recorded_at
        FROM (SELECT DISTINCT team_id, as_of, person_id FROM huddle_lists
              WHERE model_name = ? AND as_of > ? AND as_of <= ?) l
        LEFT JOIN (SELECT team_id, as_of, person_id, {OUTCOME_KIND} AS kind, recorded_at FROM huddle_outcomes
                   QUALIFY row_number() OVER (PARTITION BY team_id, as_of, person_id
                                              ORDER BY recorded_at DESC, outcome_id DESC) = 1) o
          USING (team_id, as_of, person_id)""", [model, since, as_of])
    per_list = con.sql(f"""
        SELECT as_of, count(DISTINCT team_id) AS teams, count(*) AS listed, count(kind) AS recorded,
               count(*) FILTER (WHERE kind IS NOT NULL AND kind <> '{NOT_DISCUSSED}') AS discussed
        FROM _decided GROUP BY as_of ORDER BY as_of""").pl()
    per_team = con.sql(f"""
        SELECT team_id, count(*) AS listed,
               count(*) FILTER (WHERE kind IS NOT NULL AND kind <> '{NOT_DISCUSSED}') AS discussed
        FROM _decided WHERE as_of < ? GROUP BY team_id ORDER BY team_id""", params=[as_of]).pl()
    kinds = con.sql("SELECT kind, count(*) AS n FROM _decided WHERE kind IS NOT NULL GROUP BY kind "
                    "ORDER BY n DESC, kind").pl()
    # crises (recorded before the as-of date) within the horizon of a "not a concern" decision
    nac = con.sql(f"""
        SELECT d.team_id, d.as_of, d.person_id, count(c.person_id) AS crises FROM _decided d
        LEFT JOIN contacts c ON c.person_id = d.person_id AND c.service IN {sql_list(CRISIS_SERVICES)}
         AND c.occurred_at >= d.as_of AND c.occurred_at < d.as_of + INTERVAL {horizon} DAY AND c.recorded_at < ?
        WHERE d.kind = '{NOT_A_CONCERN}' GROUP BY ALL""", params=[as_of]).pl()
    with_crisis = nac.filter(pl.col("crises") > 0)
    nac_teams = with_crisis.group_by("team_id").agg(pl.col("person_id").n_unique().alias("people")).sort("team_id")
    past = per_list.filter(pl.col("as_of") < as_of)
    return {
        "since": since.isoformat(), "lists": per_list.to_dicts(), "teams": per_team.to_dicts(),
        "kinds": kinds.to_dicts(), "recorded": int(per_list["recorded"].sum()),
        "listed_past": int(past["listed"].sum()), "discussed_past": int(past["discussed"].sum()),
        "recorded_past": int(past["recorded"].sum()),
        "not_a_concern": nac.height, "not_a_concern_with_crisis": with_crisis.height,
        "not_a_concern_crises": int(nac["crises"].sum()), "not_a_concern_teams": nac_teams.to_dicts(),
    }


def _outcome_findings(o: dict, horizon: int) -> list[Finding]:
    out = []
    if o["not_a_concern_with_crisis"]:
        teams = ", ".join(f"{t['team_id']}: {t['people']}" for t in o["not_a_concern_teams"])
        out.append(Finding(
            "watch", "outcomes",
            f"{o['not_a_concern_with_crisis']} of {o['not_a_concern']} people a huddle marked 'not a concern' "
            f"had a crisis within {horizon} days ({teams}).",
            "Worth a look back at the next huddle: was there a sign the data or the team could have seen? "
            "This is for learning, not blame; the data sees only part of a person's life."))
    if o["listed_past"] and o["recorded_past"] == 0:
        out.append(Finding(
            "watch", "outcomes",
            f"No huddle outcomes are recorded for the {o['listed_past']:,} people listed since {o['since']}.",
            "Without outcomes nobody can tell whether the lists help; ask the teams whether they record "
            "decisions (review page or `wobble outcome record`)."))
    elif o["listed_past"] and o["discussed_past"] / o["listed_past"] < DISCUSSED_SHARE:
        out.append(Finding(
            "watch", "outcomes",
            f"Huddles discussed {o['discussed_past']:,} of {o['listed_past']:,} listed people "
            f"({_pct(o['discussed_past'] / o['listed_past'])}) since {o['since']}.",
            "Lists longer than a huddle can discuss hide the people at the bottom; ask the teams whether "
            "their capacity in wobble.toml ([teams]) is right."))
    return out


# --- relational impact ------------------------------------------------------------------------


def _impact(con, model: str, as_of: date, small: int) -> dict:
    """Discussed vs listed-not-yet-discussed people, 90 days before and after their first listing."""
    d = IMPACT_DAYS
    rows = con.sql(f"""
        WITH listed AS (
            SELECT DISTINCT team_id, as_of, person_id, risk FROM huddle_lists
            WHERE model_name = ? AND as_of + INTERVAL {d} DAY <= ?),
        decided AS (
            SELECT DISTINCT team_id, as_of, person_id FROM huddle_outcomes
            WHERE {OUTCOME_KIND} <> '{NOT_DISCUSSED}'),
        grp AS (
            SELECT 'discussed' AS grp, l.person_id, min(l.as_of) AS start, arg_min(l.risk, l.as_of) AS risk
            FROM listed l JOIN decided USING (team_id, as_of, person_id) GROUP BY l.person_id
            UNION ALL
            SELECT 'not yet discussed', person_id, min(as_of), arg_min(risk, as_of) FROM listed
            WHERE person_id NOT IN (SELECT person_id FROM decided) GROUP BY person_id),
        win AS (
            SELECT g.grp, g.person_id, c.occurred_at < g.start AS before, c.service, c.professional_id, c.status
            FROM grp g JOIN contacts c ON c.person_id = g.person_id AND c.recorded_at < ?
             AND c.occurred_at >= g.start - INTERVAL {d} DAY AND c.occurred_at < g.start + INTERVAL {d} DAY),
        crises AS (
            SELECT grp, person_id, before, count(*) AS n FROM win
            WHERE service IN {sql_list(CRISIS_SERVICES)} GROUP BY ALL),
        seen AS (
            SELECT grp, person_id, before, professional_id, count(*) AS n FROM win
            WHERE professional_id IS NOT NULL AND status = 'attended' GROUP BY ALL),
        upc AS (  -- usual provider of care: share of attended contacts with the most-seen professional
            SELECT grp, person_id, before, max(n)::DOUBLE / sum(n) AS upc FROM seen
            GROUP BY ALL HAVING sum(n) >= 2),
        strengths AS (
            SELECT g.grp, g.person_id, t.recorded_at < g.start AS before, count(*) AS n
            FROM grp g JOIN tags t ON t.person_id = g.person_id AND t.polarity = 'strength'
             AND t.recorded_at < ? AND t.recorded_at >= g.start - INTERVAL {d} DAY
             AND t.recorded_at < g.start + INTERVAL {d} DAY
            GROUP BY ALL),
        sides AS (SELECT grp, person_id, risk, b AS before FROM grp CROSS JOIN (VALUES (true), (false)) v(b))
        SELECT s.grp, s.before, count(*) AS people, avg(s.risk) AS risk,
               avg(coalesce(c.n, 0)) AS crises, avg((coalesce(c.n, 0) > 0)::DOUBLE) AS with_crisis,
               avg(coalesce(t.n, 0)) AS strengths, avg(u.upc) AS upc, count(u.upc) AS with_upc
        FROM sides s LEFT JOIN crises c USING (grp, person_id, before)
        LEFT JOIN strengths t USING (grp, person_id, before) LEFT JOIN upc u USING (grp, person_id, before)
        GROUP BY ALL ORDER BY s.grp, s.before DESC
    """, params=[model, as_of, as_of, as_of]).pl()
    groups = {}
    for (grp,), part in rows.group_by(["grp"], maintain_order=True):
        before = part.filter(pl.col("before")).to_dicts()[0]
        after = part.filter(~pl.col("before")).to_dicts()[0]
        groups[grp] = {"people": before["people"], "risk": before["risk"], "suppressed": before["people"] < small,
                       "before": before, "after": after}
    return {"days": d, "groups": groups, "small_number_threshold": small,
            "comparable": all(g in groups and not groups[g]["suppressed"] for g in ("discussed", "not yet discussed"))}


# --- report -----------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def _write_report(cfg: Config, spec, r: MonitorResult) -> tuple[Path, Path]:
    import markdown

    out = cfg.outputs / "monitor" / r.as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    context = {"r": r, "spec": spec, "m": cfg.monitor, "demo": cfg.wobble.demo, "name": cfg.wobble.name,
               "subgroups": SUBGROUPS, "pct": _pct, "num": _num, "psi_floor": PSI_FLOOR,
               "oe_range": OE_RANGE, "outcome_weeks": OUTCOME_WEEKS}
    text = _ENV.get_template("monitor.md.j2").render(**context)
    md_path = out / f"monitor-{spec.name}.md"
    md_path.write_text(text, encoding="utf-8")
    html_path = out / f"monitor-{spec.name}.html"
    html_path.write_text(_ENV.get_template("monitor.html.j2").render(
        body=markdown.markdown(text, extensions=["tables"]), level=r.level,
        title=f"Monitoring report: {spec.title}, {r.as_of.isoformat()}"), encoding="utf-8")
    return md_path, html_path
