"""Monitor: is the champion model still looking at the population it learned from, and is it right?

Reads `feature_snapshots` (the current as-of date and the model's training as-of dates), `scores`,
`huddle_lists`, `huddle_outcomes`, `contacts`, `tags`, `persons` and the model version's MLflow run
(its card figures and training dates); writes one report, Markdown and HTML, under
`<outputs>/monitor/<as_of>/`. It never retrains, re-approves or republishes: it only says what needs
a human look and why. (It first copies into `huddle_outcomes` the decisions recorded on the review
page since the last run, as publish does; if snapshots it needs are missing it builds them, as the
features stage would; nothing else in the warehouse changes.)

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

import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

from wobble.core.calendar import as_of_for
from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.render import markdown_to_html, render
from wobble.core.vocab import FAIRNESS_ATTRIBUTES
from wobble.core.warehouse import connect
from wobble.features import build_features, dates_to_build, dates_without_rows, load_catalogue
from wobble.lists.service import pull_outcomes
from wobble.models.approve import champion
from wobble.models.spec import load_spec
from wobble.models.tracking import client, load_version
from wobble.ops.monitor.drift import MIN_TEAM_PEOPLE, PSI_FLOOR, _drift, _drift_findings
from wobble.ops.monitor.findings import LEVELS, Finding, avg, num, pct
from wobble.ops.monitor.huddles import OUTCOME_WEEKS, _impact, _outcome_findings, _outcomes
from wobble.ops.monitor.matured import OE_RANGE, _matured, _performance_findings

__all__ = ["Finding", "MonitorResult", "monitor", "monitor_or_flag"]


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
            "lists_since": self.outcomes.get("since"), "lists_in_period": len(self.outcomes.get("lists", [])),
            "built_snapshots": [d.isoformat() for d in self.built_snapshots],
            "report_md": str(self.report_md), "report_html": str(self.report_html),
            "seconds": round(self.seconds, 2),
        }


def monitor(cfg: Config, *, model: str | None = None, as_of: date | None = None) -> MonitorResult:
    """Check drift, matured performance and huddle outcomes for the champion; write the report."""
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
    with connect(cfg.warehouse, wait_seconds=10) as con:
        # decisions recorded on the review page (or `wobble outcome record`) since the last publish:
        # the outcome figures are of every decision recorded so far, not of those publish copied
        pull_outcomes(cfg, con)
        # drift's reference is a sample of the training dates' rows: training builds those dates
        # for the people its fits read (at scale, a sample), which serves as well as everyone
        built = sorted(set(dates_to_build(con, [as_of]) + dates_without_rows(con, train_as_ofs)))
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


def monitor_or_flag(cfg: Config, *, model: str, as_of: date) -> dict:
    """The weekly path's monitoring: `monitor`'s run summary or, when monitoring cannot run (a
    WobbleError: no champion, no training dates on record, …), a summary that says so and is flagged.
    The lists are out either way, and a week nobody could check needs a human look. `wobble run`
    and the weekly flow both go through here, so they agree on what a failed monitor means."""
    try:
        return monitor(cfg, model=model, as_of=as_of).summary()
    except WobbleError as exc:
        finding = Finding("act", "monitor", f"Monitoring could not run: {exc}",
                          "The lists are out, but nobody has checked this week's against drift or what happened "
                          "since; fix the cause, then run `wobble monitor`.")
        return {"model_name": model, "model_version": None, "as_of": as_of.isoformat(), "level": "act",
                "flagged": True, "findings": [asdict(finding)], "error": str(exc), "report_md": None,
                "report_html": None}


def _write_report(cfg: Config, spec, r: MonitorResult) -> tuple[Path, Path]:
    """The report as Markdown and as HTML, under `<outputs>/monitor/<as_of>/`."""
    out = cfg.outputs / "monitor" / r.as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    context = {"r": r, "spec": spec, "m": cfg.monitor, "demo": cfg.wobble.demo, "name": cfg.wobble.name,
               "subgroups": FAIRNESS_ATTRIBUTES, "pct": pct, "num": num, "avg": avg, "psi_floor": PSI_FLOOR,
               "min_team_people": MIN_TEAM_PEOPLE,
               "oe_range": OE_RANGE, "outcome_weeks": OUTCOME_WEEKS}
    text = render("monitor.md.j2", **context)
    md_path = out / f"monitor-{spec.name}.md"
    md_path.write_text(text, encoding="utf-8")
    html_path = out / f"monitor-{spec.name}.html"
    html_path.write_text(render(
        "monitor.html.j2", body=markdown_to_html(text), level=r.level,
        title=f"Monitoring report: {spec.title}, {r.as_of.isoformat()}"), encoding="utf-8")
    return md_path, html_path
