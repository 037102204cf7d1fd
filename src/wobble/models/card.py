"""The model card: what a governance board reads before approving a model version.

Rendered from the training run's evaluation (`wobble/evaluation.json` in the MLflow run) into
Markdown (the source of truth, with PNG figures beside it) and a self-contained HTML page with
the same content (figures inlined); both are written to `<outputs>/cards/` and attached to the
run under `card/`. `rerender` rebuilds a card for any registered version from its run alone, so
`wobble card` shows the current approval status without retraining.

The governance content (hazard log, ATRS fields, TRIPOD+AI checklist) is declared in
`templates/card.governance.yml`; this module fills its placeholders from the evaluation.
"""

from __future__ import annotations

import base64
import json
import math
import re
import textwrap
from datetime import date, datetime, timedelta
from pathlib import Path

import yaml

from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.render import markdown_to_html, plural, render, template_text
from wobble.core.vocab import system_label
from wobble.core.warehouse import connect
from wobble.models import figures as fig
from wobble.models.spec import ModelSpec, TimeSplit
from wobble.models.tracking import client, registered_version

SECTIONS = (
    "At a glance", "Model details", "Intended use and users", "Out of scope", "Data", "Target and horizon",
    "Validation design", "Performance", "At capacity", "Lead time",
    "Compared with the baseline and the current champion", "Fairness in the most deprived areas",
    "Subgroups", "What drives the predictions", "Limitations and caveats", "Hazard log (DCB0129)",
    "Algorithmic Transparency Recording Standard (ATRS)", "TRIPOD+AI checklist", "Approval",
)
METRIC_ROWS = (  # key, label, how to read it, format
    ("auroc", "AUROC", "chance a person who had the outcome is ranked above one who did not (0.5 = coin toss)", "num"),
    ("auprc", "AUPRC", "average precision across all list lengths (the outcome rate is the floor)", "num"),
    ("brier", "Brier score", "mean squared error of the probabilities (lower is better)", "num"),
    ("calibration_slope", "Calibration slope", "1 is ideal; below 1, risks are too extreme", "num"),
    ("calibration_intercept", "Calibration intercept", "0 is ideal; below 0, risk is over-estimated overall", "num"),
    ("ece", "Expected calibration error",
     "average gap between predicted and observed risk over tenths of people, in percentage points", "pp"),
    ("observed_to_expected", "Observed / expected", "outcomes seen per outcome predicted (1 is ideal)", "num"),
)
CAPACITY_ROWS = (
    ("precision_at_capacity", "Precision", "share of listed people who went on to have the outcome", "pct"),
    ("recall_at_capacity", "Recall", "share of people with the outcome who were listed that week", "pct"),
    ("nne_at_capacity", "Number needed to evaluate",
     "people discussed per person who went on to have the outcome", "num1"),
    ("alerts_per_1000_per_week", "Alerts per 1,000 people per week",
     "how many people are listed, per 1,000 in the cohort", "num1"),
    ("fpr_at_capacity", "False positive rate", "share of people without the outcome who were listed", "pct2"),
    ("fnr_at_capacity", "False negative rate", "share of people with the outcome who were not listed", "pct"),
)
ATTRIBUTE_LABELS = {"age_band": "Age band", "sex": "Sex", "ethnicity_group": "Ethnicity group",
                    "imd_quintile": "IMD quintile (1 = most deprived)"}
SCORER_LABELS = {"model": "this model", "baseline": "baseline", "oracle": "oracle", "champion": "champion"}



# --- formatting ---------------------------------------------------------------------------------


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


FORMATS = {  # kind → how the card prints a number of that kind
    "num": lambda v: f"{v:.3f}", "num1": lambda v: f"{v:.1f}", "int": lambda v: f"{int(v):,}",
    "pct": lambda v: f"{100 * v:.1f}%", "pct2": lambda v: f"{100 * v:.2f}%",
    "pp": lambda v: f"{100 * v:.1f} points", "days": lambda v: f"{v:.0f} days",
}


def fmt(v, kind: str = "num") -> str:
    """One number as the card prints it; 'n/a' when missing. A value that rounds to zero has no
    sign: '-0.000' reads as a tiny loss."""
    if not _ok(v):
        return "n/a"
    text = FORMATS[kind](v)
    return text[1:] if text.startswith("-") and not any(c in "123456789" for c in text) else text


def fmt_est(e: dict | None, kind: str = "num") -> str:
    """'0.803 (0.795 to 0.811)': an estimate with its 95% interval."""
    if not e or not _ok(e.get("value")):
        return "n/a"
    if not _ok(e.get("low")):
        return fmt(e["value"], kind)
    lo, hi = fmt(e["low"], kind), fmt(e["high"], kind)
    for unit in ("%", " points", " days"):
        if lo.endswith(unit) and hi.endswith(unit):
            lo = lo[: -len(unit)]
    return f"{fmt(e['value'], kind)} ({lo} to {hi})"


def fmt_count(n, threshold: int) -> str:
    return f"<{threshold}" if n is None else f"{int(n):,}"


# --- the view the template renders --------------------------------------------------------------


def _governance() -> dict:
    return yaml.safe_load(template_text("card.governance.yml"))


def _verdict(diff: dict | None, higher_is_better: bool = True) -> str:
    if not diff or not _ok(diff.get("low")):
        return "not estimated"
    lo, hi = diff["low"], diff["high"]
    if lo > 0 or hi < 0:
        side = "above" if lo > 0 else "below"
        better = (lo > 0) == higher_is_better
        return f"{'better' if better else 'worse'} (the interval is {side} zero)"
    return "no clear difference (the interval includes zero)"


def _side(diff: dict | None) -> int | None:
    """+1 when a paired difference's interval is above zero, -1 below, 0 when it includes zero; None if missing."""
    if not diff or not _ok(diff.get("low")):
        return None
    return 1 if diff["low"] > 0 else -1 if diff["high"] < 0 else 0


CONCLUSIONS = {  # (precision at capacity, AUROC) sides → what the board should conclude
    (1, 1): "it does better than a plain count-based list at the list's job; the board can weigh approval on the "
            "rest of this card (fairness, data, hazards).",
    (1, 0): "its lists hold more people who go on to have the outcome than a count-based list; its overall "
            "ranking is not clearly better. Weigh approval on the rest of this card.",
    (0, 1): "it ranks people better overall, but this test period cannot show that its lists, at the team's "
            "capacity, are better than a plain count-based list. Approve it, if at all, for what the rest of "
            "this card shows (reasons, what its lists hold), not for proven gain at the list's job.",
    (0, 0): "this test period cannot show that it does better than a plain count-based baseline. Do not approve "
            "it for its performance; approve it, if at all, for what else this card shows, or ask for a longer "
            "test period.",
}


def _glance(ev: dict) -> list[str]:
    """The verdict that opens 'At a glance': this model against the count baseline at the list's job (precision
    at capacity) and on AUROC, with the paired intervals, what the board should conclude, and the flagged
    subgroups by name."""
    m, base = ev["scorers"]["model"], ev["scorers"]["baseline"]
    diff = ev["differences"].get("baseline", {})
    prec, auroc = diff.get("precision_at_capacity"), diff.get("auroc")
    sides = (_side(prec), _side(auroc))

    def said(side):
        return {1: "better", -1: "worse", 0: "no clear difference", None: "not estimated"}[side]

    facts = (f"At the list's job, precision at the team's capacity, {fmt(m['precision_at_capacity']['value'], 'pct')}"
             f" of the people it lists went on to have the outcome, against "
             f"{fmt(base['precision_at_capacity']['value'], 'pct')} for a plain count-based baseline: a paired "
             f"difference of {fmt_est(prec, 'pp')} ({said(sides[0])}). On AUROC, {fmt(m['auroc']['value'])} "
             f"against {fmt(base['auroc']['value'])}: {fmt_est(auroc)} ({said(sides[1])}).")
    if None in sides:
        conclusion = "the comparison with the baseline could not be estimated: do not approve it on performance."
    elif -1 in sides:
        worse = " and ".join(n for n, side in zip(("at the list's job", "on AUROC"), sides, strict=True)
                             if side == -1)
        conclusion = (f"it does worse than a plain count-based baseline {worse}. Do not approve it unless the rest "
                      "of this card gives a reason that outweighs this.")
    else:
        conclusion = CONCLUSIONS[sides]
    lines = [f"**Verdict:** {facts} **The board should conclude:** {conclusion}"]
    names = {"auroc": "AUROC", "observed_to_expected": "observed/expected", "fnr_at_capacity": "missed",
             "fpr_at_capacity": "false positives"}
    kinds = {"fnr_at_capacity": "pct", "fpr_at_capacity": "pct2"}
    clear, unsure = [], []
    for g in ev["subgroups"]:
        for sure, bucket in ((True, clear), (False, unsure)):
            fs = [f for f in g["flags"] if bool(f["interval_excludes_reference"]) == sure]
            if fs:
                bucket.append(f"{ATTRIBUTE_LABELS.get(g['attribute'], g['attribute'])} {g['group']} ("
                              + ", ".join(f"{names[f['metric']]} {fmt(f['value'], kinds.get(f['metric'], 'num'))}"
                                          for f in fs) + ")")
    if clear or unsure:
        lines.append("**Flagged subgroups** (beyond the spec's tolerances; see [Subgroups](#subgroups)): "
                     + (f"clearly: {'; '.join(clear)}" if clear else "none clearly")
                     + (f". Perhaps by chance (the interval includes everyone's figure): {'; '.join(unsure)}"
                        if unsure else "") + ".")
    else:
        lines.append("**Flagged subgroups:** none beyond the spec's tolerances.")
    return lines


def _flag_text(f: dict) -> str:
    names = {"auroc": "AUROC", "observed_to_expected": "observed/expected", "fnr_at_capacity": "false negative rate",
             "fpr_at_capacity": "false positive rate"}
    kind = "pct2" if f["metric"] == "fpr_at_capacity" else "pct" if f["metric"] == "fnr_at_capacity" else "num"
    ref = "1 (perfect)" if f["metric"] == "observed_to_expected" else f"{fmt(f['reference'], kind)} for everyone"
    sure = "" if f["interval_excludes_reference"] else "; its interval includes the reference, so it may be chance"
    return f"{names[f['metric']]} {fmt(f['value'], kind)} vs {ref}{sure}"


def _subgroup_rows(ev: dict, threshold: int) -> list[dict]:
    rows = []
    for g in ev["subgroups"]:
        m = g["metrics"]
        rows.append({
            "attribute": ATTRIBUTE_LABELS.get(g["attribute"], g["attribute"]), "key": g["attribute"],
            "group": g["group"], "people": fmt_count(g["people"], threshold),
            "outcomes": fmt_count(g["people_with_outcome"], threshold),
            "listed": fmt_count(g["people_listed"], threshold),
            "auroc": "suppressed" if g["suppressed"] else fmt_est(m.get("auroc")),
            "oe": "suppressed" if g["suppressed"] else fmt_est(m.get("observed_to_expected")),
            "precision": "suppressed" if g["capacity_suppressed"] else fmt_est(m.get("precision_at_capacity"), "pct"),
            "fnr": "suppressed" if g["capacity_suppressed"] else fmt_est(m.get("fnr_at_capacity"), "pct"),
            "fpr": "suppressed" if g["capacity_suppressed"] else fmt_est(m.get("fpr_at_capacity"), "pct2"),
            "flags": "; ".join(_flag_text(f) for f in g["flags"]) or ("—" if not g["suppressed"] else ""),
            "flagged": bool(g["flags"]),
        })
    return rows


def _deprivation(ev: dict, threshold: int) -> dict | None:
    """The one-screen answer to 'is it fair to people in the most deprived areas?'."""
    rows = [g for g in ev["subgroups"] if g["attribute"] == "imd_quintile"]
    if not rows:
        return None
    most = next((g for g in rows if g["group"] == "1"), None)
    shares = _listed_against_outcomes(rows)
    if most is None:
        present = sorted(g["group"] for g in rows if g["group"] != "unknown")
        return {"answer": "Cannot tell from this test period: its people live only in areas of deprivation "
                          f"{'quintile' if len(present) == 1 else 'quintiles'} {' and '.join(present) or 'unknown'} "
                          "(the neighbourhoods this area covers), none "
                          "in the most deprived fifth of areas in England.",
                "lines": shares, "table": _deprivation_table(rows), "rows": rows}
    overall = ev["scorers"]["model"]
    rep = {g["group"]: g for g in ev["data"]["representation"]["groups"] if g["attribute"] == "imd_quintile"}
    lines = []
    if most["suppressed"]:
        lines.append(f"Too few people in the most deprived fifth of areas (fewer than {threshold} with or "
                     "without the outcome) to report their figures.")
    else:
        m = most["metrics"]
        lines.append(
            f"People from the most deprived fifth of areas (IMD quintile 1) are {fmt(most['share_of_rows'], 'pct')} "
            f"of the cohort and {fmt(most['share_of_outcomes'], 'pct')} of those who had the outcome"
            + (f"; they are {fmt(most['share_of_listed'], 'pct')} of the people listed." if _ok(most["share_of_listed"])
               else "; too few were listed to report their share."))
        if not most["capacity_suppressed"]:
            lines.append(
                f"Of people from these areas whom the list named, {fmt_est(m.get('precision_at_capacity'), 'pct')} "
                f"went on to have the outcome (everyone: {fmt(overall['precision_at_capacity']['value'], 'pct')}). "
                f"Of those who had the outcome, the list missed {fmt_est(m.get('fnr_at_capacity'), 'pct')} "
                f"(everyone: {fmt(overall['fnr_at_capacity']['value'], 'pct')}).")
        oe = m.get("observed_to_expected") or {}
        if _ok(oe.get("value")):
            if _ok(oe.get("low")) and oe["low"] > 1:
                judged = "too low: more outcomes happened than it predicted"
            elif _ok(oe.get("high")) and oe["high"] < 1:
                judged = "too high: fewer outcomes happened than it predicted"
            else:
                judged = "about right on average"
            lines.append(f"Its risk estimates for them are {judged} (observed/expected {fmt_est(oe)}).")
        lines.append(f"It ranks people within these areas with AUROC {fmt_est(m.get('auroc'))} "
                     f"(everyone: {fmt(overall['auroc']['value'])}).")
        r1, rall = rep.get("1"), ev["data"]["representation"]["overall"]
        if r1 and _ok(r1.get("share_no_records")):
            lines.append(f"Their records: {fmt(r1['share_no_records'], 'pct')} had no contact recorded in the year "
                         f"before {ev['data']['representation']['as_of']} "
                         f"(everyone: {fmt(rall['share_no_records'], 'pct')}).")
    flags = most["flags"]
    if most["suppressed"]:
        answer = "Cannot tell from this test period: too few people."
    elif not flags:
        answer = ("On this test period, no gap beyond the tolerances this model's spec sets was found for people in "
                  "the most deprived areas.")
    else:
        answer = "Gaps beyond tolerance were found for people in the most deprived areas: " + "; ".join(
            _flag_text(f) for f in flags) + "."
    return {"answer": answer, "lines": lines + shares, "table": _deprivation_table(rows), "rows": rows}


def _listed_against_outcomes(rows: list[dict]) -> list[str]:
    """Each quintile's share of the people listed beside its share of those who had the outcome: a list fair to
    an area lists it about as often as its people have the outcome."""
    parts = [f"quintile {g['group']}: {fmt(g['share_of_listed'], 'pct')} of those listed against "
             f"{fmt(g['share_of_outcomes'], 'pct')} of those who had the outcome"
             for g in rows if g["group"] != "unknown" and _ok(g["share_of_listed"]) and _ok(g["share_of_outcomes"])]
    if not parts:
        return []
    return ["Listed against outcomes, by deprivation quintile: " + "; ".join(parts) + ". A quintile listed much "
            "more (or less) often than its share of outcomes is over- (or under-) listed for this target."]


def _deprivation_table(rows: list[dict]) -> list[dict]:
    def capacity(g, key):
        return "suppressed" if g["capacity_suppressed"] else fmt_est(g["metrics"].get(key), "pct")

    names = {"1": "1 (most deprived)", "5": "5 (least deprived)"}
    return [{"group": names.get(g["group"], g["group"]), "cohort": fmt(g["share_of_rows"], "pct"),
             "outcomes": fmt(g["share_of_outcomes"], "pct"),
             "listed": fmt(g["share_of_listed"], "pct") if _ok(g["share_of_listed"]) else "suppressed",
             "precision": capacity(g, "precision_at_capacity"), "fnr": capacity(g, "fnr_at_capacity"),
             "oe": "suppressed" if g["suppressed"] else fmt_est(g["metrics"].get("observed_to_expected")),
             "flag": "yes" if g["flags"] else "no"}
            for g in rows if g["group"] != "unknown"]


def _shap_words(shap: dict) -> list[str]:
    total = sum(shap["families"].values()) or 1.0
    words = []
    for f in list(shap["features"])[:8]:
        desc = shap.get("descriptions", {}).get(f, f)
        d = shap["direction"].get(f, 0)
        how = ("more of it raises the estimated risk" if d > 0 else "more of it lowers the estimated risk"
               if d < 0 else "its effect goes both ways")
        words.append(f"**{desc}**: {how}.")
    families = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in shap["families"].items())
    return [families, *words]


def _hazards(gov: dict, ctx: dict) -> list[dict]:
    out = []
    severities, likelihoods = gov["severities"], gov["likelihoods"]
    for h in gov["hazards"]:
        h = dict(h)
        if h["id"] == "H6":  # likelihood follows what this card found
            h["likelihood"] = "Medium" if ctx["clear_flags"] else "Low"
        h["controls"] = h["controls"].format(**ctx)
        if h["likelihood"] not in likelihoods or h["severity"] not in severities:
            raise ValueError(f"hazard {h['id']}: unknown severity or likelihood")
        out.append({**h, "rating": gov["matrix"][h["likelihood"]][severities.index(h["severity"])]})
    return out


def build_view(*, spec: ModelSpec, evaluation: dict, version: str | None, run_id: str | None, demo: bool,
               approvals: list[dict], figures: dict[str, str]) -> dict:
    """Everything the template needs, formatted, from the evaluation alone."""
    ev = evaluation
    thr = spec.small_number_threshold
    m = ev["scorers"]["model"]
    scorers = [s for s in ("model", "baseline", "oracle", "champion") if s in ev["scorers"]]
    split = TimeSplit(**_split_dates(ev["split"]))
    subgroup_rows = _subgroup_rows(ev, thr)
    flagged = [r for r in subgroup_rows if r["flagged"]]
    clear_flags = sum(f["interval_excludes_reference"] for g in ev["subgroups"] for f in g["flags"])
    data = ev["data"]
    gov = _governance()
    ctx = {
        "title": spec.title, "description": " ".join(spec.description.split()), "owner": spec.owner,
        "capacity": spec.capacity_per_team, "horizon": spec.target.horizon_days, "calibration": spec.calibration,
        "min_age": spec.cohort.min_age, "max_age": spec.cohort.max_age, "name": spec.name,
        "version": version or "(unregistered)", "auroc": fmt_est(m["auroc"]),
        "precision_at_capacity": fmt_est(m["precision_at_capacity"], "pct"),
        "recall_at_capacity": fmt(m["recall_at_capacity"]["value"], "pct"),
        "nne_at_capacity": fmt(m["nne_at_capacity"]["value"], "num1"),
        "calibration_slope": fmt_est(m["calibration_slope"]),
        "alerts": fmt(m["alerts_per_1000_per_week"]["value"], "num1"),
        "systems": ", ".join(system_label(s["system"]) for s in data["systems"]) or "no systems",
        "sources": ", ".join(s["source"] for s in data["sources"]) or "no sources recorded",
        "flags": len([f for g in ev["subgroups"] for f in g["flags"]]), "clear_flags": clear_flags,
        "threshold": thr, "completeness_gaps": len(data["completeness"]["gaps"]),
    }
    atrs = [{**f, "value": f["value"].format(**ctx) if f["value"] else None} for f in gov["atrs"]]
    return {
        "spec": spec, "ev": ev, "m": m, "version": version, "run_id": run_id, "demo": demo, "split": split,
        "scorers": scorers, "scorer_labels": SCORER_LABELS, "metric_rows": METRIC_ROWS, "capacity_rows": CAPACITY_ROWS,
        "subgroups": subgroup_rows, "flagged": flagged, "deprived": _deprivation(ev, thr),
        "shap_words": _shap_words(ev["shap"]), "hazards": _hazards(gov, ctx), "atrs": atrs,
        "tripod": gov["tripod"], "approvals": approvals, "figures": figures, "threshold": thr,
        "diff_base": ev["differences"].get("baseline", {}), "diff_champ": ev["differences"].get("champion"),
        "verdict": _verdict, "fmt": fmt, "fmt_est": fmt_est, "fmt_count": fmt_count, "ok": _ok,
        "anchor": _anchor, "tol": spec.fairness_tolerance, "rendered_at": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "attribute_labels": ATTRIBUTE_LABELS, "thinnest": _thinnest(data["representation"]),
        "lists": _lists_view(ev.get("lists")), "glance": _glance(ev), "plural": plural,
        "label": lambda f: ev["shap"].get("descriptions", {}).get(f, f),
        "shap_top": list(ev["shap"]["features"].items())[:15],
        "lead_end": max(split.test) + timedelta(days=spec.target.horizon_days),
    }


LIST_LABELS = {"model": "this model's list", "crisis_now": "today's crisis-now list",
               "best": "best list from the same data", "truth": "ranked by the hidden truth"}


def _lists_view(graded: dict | None) -> dict | None:
    """The card's 'What the lists hold' table: one column per graded list (`grading.grade_lists`),
    and this list's share rising as a share of the best list's."""
    if not graded:
        return None
    lists = graded["lists"]
    names = [n for n in LIST_LABELS if n in lists]
    rising = {n: (lists[n].get("rising") or {}).get("value") for n in names}
    ratio = (rising["model"] / rising["best"] if _ok(rising.get("model")) and _ok(rising.get("best"))
             and rising["best"] > 0 else None)
    return {"names": names, "labels": [LIST_LABELS[n] for n in names], "lists": lists,
            "notes": graded.get("notes", {}), "truth": graded.get("truth", False),
            "burn_in_weeks": graded.get("burn_in_weeks", 0), "of_best": ratio,
            "into_rise": any("days_into_rise" in lists[n] for n in names)}


def _thinnest(rep: dict) -> list[str]:
    """Per attribute, the group whose people have the fewest records, when below everyone's median."""
    out = []
    for attr in dict.fromkeys(g["attribute"] for g in rep["groups"]):
        groups = [g for g in rep["groups"] if g["attribute"] == attr and _ok(g["median_records"])]
        if not groups:
            continue
        low = min(groups, key=lambda g: (g["median_records"], -(g["share_no_records"] or 0)))
        if low["median_records"] < rep["overall"]["median_records"]:
            out.append(f"{ATTRIBUTE_LABELS.get(attr, attr)} {low['group']} (median {fmt(low['median_records'], 'num1')}"
                       f" records; {fmt(low['share_no_records'], 'pct')} with none)")
    return out


def _split_dates(s: dict) -> dict:
    def d(x):
        return date.fromisoformat(x) if isinstance(x, str) else x

    return {"train": [d(x) for x in s["train"]], "test": [d(x) for x in s["test"]],
            "last_label_date": d(s["last_label_date"]), "data_end": d(s["data_end"])}


def _short(text: str, width: int = 36) -> str:
    """A feature's description for a plot's axis: the brackets' asides dropped, on at most two lines of whole
    words, cut with '…' beyond them."""
    text = re.sub(r"\s*\([^)]*\)", "", text).strip()
    return textwrap.fill(text, width=width, max_lines=2, placeholder=" …")


def _anchor(title: str) -> str:
    """The id Python-Markdown's toc extension (and GitHub) give a heading."""
    slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[\s]+", "-", slug)


# --- writing ------------------------------------------------------------------------------------


def write_card(cfg: Config, *, spec: ModelSpec, evaluation: dict, version: str | None, run_id: str | None = None,
               shap_sample=None) -> tuple[Path, Path]:
    """Draw the figures, write `<outputs>/cards/<name>-v<version>.md` and `.html`, attach them to the run."""
    out = cfg.outputs / "cards"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{spec.name}-v{version}" if version else f"{spec.name}-unregistered"
    ev = evaluation
    paths = {
        "calibration": fig.calibration_figure(ev["curves"]["calibration"], out / f"{stem}-calibration.png"),
        "roc": fig.roc_figure(ev["curves"]["roc"], {k: v["auroc"]["value"] for k, v in ev["scorers"].items()},
                              out / f"{stem}-roc.png"),
    }
    imd = [g for g in ev["subgroups"] if g["attribute"] == "imd_quintile" and not g["suppressed"]]
    if imd:
        paths["deprivation"] = fig.deprivation_figure(imd, out / f"{stem}-deprivation.png")
    if shap_sample is not None:
        contrib, X = shap_sample
        names = [_short(ev["shap"].get("descriptions", {}).get(f, f)) for f in ev["training"]["features"]]
        paths["shap"] = fig.shap_figure(contrib, X, names, out / f"{stem}-shap.png")
    elif (out / f"{stem}-shap.png").exists():
        paths["shap"] = out / f"{stem}-shap.png"
    approvals = _approvals(cfg, spec.name, version)
    view = dict(spec=spec, evaluation=ev, version=version, run_id=run_id, demo=bool(ev.get("demo", cfg.wobble.demo)),
                approvals=approvals)
    text = render("card.md.j2", **build_view(**view, figures={k: p.name for k, p in paths.items()}))
    inline = {k: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode() for k, p in paths.items()}
    body = markdown_to_html(render("card.md.j2", **build_view(**view, figures=inline)), toc=True)
    md_path, html_path = out / f"{stem}.md", out / f"{stem}.html"
    md_path.write_text(text, encoding="utf-8")
    html_path.write_text(render("card.html.j2", title=f"Model card: {spec.title}", body=body), encoding="utf-8")
    if run_id:
        c = client(cfg)
        for p in (md_path, html_path, *paths.values()):
            c.log_artifact(run_id, str(p), artifact_path="card")
    return md_path, html_path


def _approvals(cfg: Config, model: str, version: str | None) -> list[dict]:
    if not version or not cfg.warehouse.exists():
        return []

    with connect(cfg.warehouse, read_only=True) as con:
        tables = con.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = 'approvals'")
        if not tables.fetchall()[0][0]:
            return []
        return con.sql(
            "SELECT approved_by, approved_at::VARCHAR AS approved_at, note, demo FROM approvals "
            "WHERE model_name = ? AND model_version = ? ORDER BY approved_at", params=[model, str(version)]
        ).pl().to_dicts()


def rerender(cfg: Config, model: str, version: str | None = None) -> tuple[str, Path, Path]:
    """Rebuild the card of a registered version (default: the latest) from its MLflow run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mv = registered_version(cfg, model, version)
    version = str(mv.version)
    local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="wobble"))
    if not (local / "evaluation.json").exists():
        raise WobbleError(f"{model} version {version} was trained before cards were kept; retrain it")
    evaluation = json.loads((local / "evaluation.json").read_text())
    spec = ModelSpec(**yaml.safe_load((local / f"{model}.yml").read_text()))
    out = cfg.outputs / "cards"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{model}-v{version}"
    try:
        cards = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=f"card/{stem}-shap.png"))
        (out / f"{stem}-shap.png").write_bytes(cards.read_bytes())
    except (MlflowException, OSError):
        pass
    md, html = write_card(cfg, spec=spec, evaluation=evaluation, version=str(version), run_id=mv.run_id)
    return str(version), md, html
