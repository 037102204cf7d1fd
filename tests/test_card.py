"""The model card: every section, for a tiny world; self-contained HTML; small numbers suppressed;
`wobble card` re-renders a version from its MLflow run alone."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pytest
from conftest import TEST_KEY, run_wobble

from wobble.models.card import SECTIONS, fmt_est
from wobble.models.spec import load_spec


def _unapproved_card(cfg, result) -> str:
    """The card as training wrote it, before any approval: rendered again from the run's evaluation, since other
    tests approve version 1 of this shared model and `wobble approve` re-renders the card file."""
    from wobble.core.render import render
    from wobble.models.card import build_view

    view = build_view(spec=load_spec(cfg.models_dir, "crisis_90d"), evaluation=result.evaluation, version="1",
                      run_id=result.run_id, demo=False, approvals=[],
                      figures={"calibration": "c.png", "roc": "r.png", "shap": "s.png", "deprivation": "d.png"})
    return render("card.md.j2", **view)


def test_card_renders_for_a_tiny_world_with_every_section(tiny_trained):
    cfg, result = tiny_trained
    md = _unapproved_card(cfg, result)
    for section in SECTIONS:
        assert re.search(rf"^##+ {re.escape(section)}$", md, re.M), section
    html = unescape(result.card_html.read_text())
    for section in SECTIONS:
        assert f">{section}</h" in html, section
    for phrase in ("Status: not approved", "wobble approve --model crisis_90d --version 1", "**Verdict:**",
                   "**The board should conclude:**", "Flagged subgroups", "| 8c |", "| 9c |",
                   "skill ratio", "Precision", "Number needed to evaluate", "Alerts per 1,000 people per week",
                   "false negative rate", "observed / expected", "Expected calibration error",
                   "share of crisis days preceded by a listing", "✎ to complete", "H1", "27c"):
        assert phrase in md, phrase


def test_html_card_is_self_contained(tiny_trained):
    _, result = tiny_trained
    raw = result.card_html.read_text()
    assert raw.startswith("<!doctype html>") and '<html lang="en">' in raw
    assert "<script" not in raw and "http://" not in raw and "https://" not in raw
    images = re.findall(r'<img alt="([^"]+)" src="([^"]+)"', raw)
    assert len(images) >= 3 and all(src.startswith("data:image/png;base64,") and alt for alt, src in images)
    ids = set(re.findall(r'id="([^"]+)"', raw))
    links = set(re.findall(r'href="#([^"]+)"', raw))
    assert links and links <= ids, links - ids  # every "where is it answered" link lands on a heading
    md = result.card_md.read_text()
    for name in re.findall(r"\]\(([^)#]+\.png)\)", md):
        assert (result.card_md.parent / name).stat().st_size > 1000, name


def test_small_numbers_are_suppressed(tiny_trained):
    cfg, result = tiny_trained
    md = result.card_md.read_text()
    thr = load_spec(cfg.models_dir, "crisis_90d").small_number_threshold
    rows = [g for g in result.evaluation["subgroups"] if g["people_listed"] is None]
    assert rows, "the tiny world should have groups with fewer than 7 people listed"
    assert f"<{thr}" in md and "suppressed" in md
    for g in result.evaluation["subgroups"]:
        for key in ("people", "people_with_outcome", "people_listed"):
            assert g[key] is None or g[key] >= thr
        if g["capacity_suppressed"]:
            assert "precision_at_capacity" not in g["metrics"]


def test_the_card_and_evaluation_are_in_the_mlflow_run(tiny_trained):
    from wobble.models.tracking import client

    cfg, result = tiny_trained
    c = client(cfg)
    names = {a.path for a in c.list_artifacts(result.run_id, "card")}
    for suffix in (".md", ".html", "-calibration.png", "-roc.png", "-shap.png"):
        assert f"card/crisis_90d-v1{suffix}" in names, suffix
    wobble = {a.path for a in c.list_artifacts(result.run_id, "wobble")}
    assert {"wobble/evaluation.json", "wobble/calibrator.pkl", "wobble/features.json",
            "wobble/crisis_90d.yml"} <= wobble
    run = c.get_run(result.run_id)
    assert run.data.metrics["auroc"] == pytest.approx(result.metrics["auroc"])
    assert "auroc_low" in run.data.metrics and "baseline_precision_at_capacity" in run.data.metrics
    mv = c.get_model_version("crisis_90d", "1")
    from mlflow.models import get_model_info

    info = get_model_info(f"models:/crisis_90d/{mv.version}")
    assert info.signature.inputs.input_names() == result.evaluation["training"]["features"]
    assert info.saved_input_example_info is not None


def test_wobble_card_rerenders_a_version_with_its_approval(tiny_trained):
    from wobble.models.approve import approve

    cfg, result = tiny_trained
    approve(cfg, model="crisis_90d", version="1", by="Ms B Card-Reader, Caldicott Guardian", note="card re-read")
    env = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
    proc = run_wobble("card", "--config", str(cfg.root / "wobble.toml"), "--model", "crisis_90d", "--version", "1",
                      "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = json.loads(proc.stdout)["stages"]["card"]
    md = Path(st["model_card"]).read_text()
    assert "Status: approved" in md and "Ms B Card-Reader, Caldicott Guardian" in md
    for section in ("Fairness in the most deprived areas", "Hazard log (DCB0129)", "TRIPOD+AI checklist"):
        assert f"## {section}" in md
    missing = run_wobble("card", "--config", str(cfg.root / "wobble.toml"), "--model", "crisis_90d",
                         "--version", "99", env=env)
    assert missing.returncode == 2 and "has no version 99" in missing.stderr and "Traceback" not in missing.stderr


def test_differences_are_judged_by_their_interval():
    from wobble.models.card import _verdict

    assert _verdict({"value": 0.01, "low": 0.003, "high": 0.02}).startswith("better (the interval is above zero")
    assert _verdict({"value": -0.01, "low": -0.02, "high": -0.001}, higher_is_better=False).startswith(
        "better (the interval is below zero")
    assert _verdict({"value": 0.1, "low": -0.02, "high": 0.2}).startswith("no clear difference")
    assert _verdict({"value": -0.05, "low": -0.09, "high": -0.01}).startswith("worse")


def test_estimates_print_with_their_interval():
    assert fmt_est({"value": 0.8031, "low": 0.79, "high": 0.812}) == "0.803 (0.790 to 0.812)"
    assert fmt_est({"value": 0.5, "low": 0.25, "high": 0.75}, "pct") == "50.0% (25.0 to 75.0%)"
    assert fmt_est({"value": None, "low": None, "high": None}) == "n/a"


def test_numbers_that_round_to_zero_carry_no_sign():
    from wobble.models.card import fmt, fmt_est

    assert fmt(-0.0001) == "0.000" and fmt(-0.002) == "-0.002" and fmt(-0.0004, "pp") == "0.0 points"
    assert fmt_est({"value": -0.001, "low": -0.0021, "high": -0.0001}) == "-0.001 (-0.002 to 0.000)"
    assert fmt(None) == "n/a"


def _est(value, low, high) -> dict:
    return {"value": value, "low": low, "high": high}


def _ev(precision_diff, auroc_diff, flags=()) -> dict:
    """The parts of an evaluation the verdict reads: this model and the baseline, their paired differences, and
    subgroups with `flags` [(attribute, group, metric, value, interval excludes the reference)]."""
    scorer = {"precision_at_capacity": _est(0.41, 0.15, 0.6), "auroc": _est(0.68, 0.6, 0.76)}
    base = {"precision_at_capacity": _est(0.34, 0.04, 0.6), "auroc": _est(0.61, 0.52, 0.71)}
    subgroups = [{"attribute": a, "group": g, "flags": [{"metric": m, "value": v, "interval_excludes_reference": c}]}
                 for a, g, m, v, c in flags]
    return {"scorers": {"model": scorer, "baseline": base}, "subgroups": subgroups,
            "differences": {"baseline": {"precision_at_capacity": precision_diff, "auroc": auroc_diff}}}


@pytest.mark.parametrize(("precision", "auroc", "words"), [
    (_est(0.075, -0.24, 0.24), _est(0.066, 0.013, 0.124), ["7.5 points (-24.0 to 24.0 points) (no clear difference)",
                                                           "0.066 (0.013 to 0.124) (better)",
                                                           "cannot show that its lists"]),
    (_est(0.1, 0.02, 0.2), _est(0.05, 0.01, 0.09), ["(better). On AUROC", "does better than a plain count-based list"]),
    (_est(-0.1, -0.2, -0.02), _est(0.0, -0.03, 0.03), ["(worse)", "does worse than a plain count-based baseline at "
                                                       "the list's job. Do not approve"]),
    (_est(0.01, -0.05, 0.07), _est(-0.01, -0.04, 0.02), ["cannot show that it does better", "Do not approve it for"]),
])
def test_at_a_glance_opens_with_a_verdict_against_the_baseline(precision, auroc, words):
    from wobble.models.card import _glance

    verdict, flagged = _glance(_ev(precision, auroc))
    assert verdict.startswith("**Verdict:** At the list's job, precision at the team's capacity, 41.0% ")
    assert "against 34.0% for a plain count-based baseline" in verdict and "0.680 against 0.610" in verdict
    for w in words:
        assert w in verdict, w
    assert flagged == "**Flagged subgroups:** none beyond the spec's tolerances."


def test_at_a_glance_names_the_flagged_subgroups():
    from wobble.models.card import _glance

    ev = _ev(_est(0.0, -0.1, 0.1), _est(0.0, -0.1, 0.1),
             [("ethnicity_group", "Asian", "observed_to_expected", 1.47, False),
              ("age_band", "40-64", "auroc", 0.477, True)])
    flagged = _glance(ev)[1]
    assert "clearly: Age band 40-64 (AUROC 0.477)" in flagged
    assert "Perhaps by chance (the interval includes everyone's figure): Ethnicity group Asian " \
           "(observed/expected 1.470)" in flagged


def test_the_completeness_table_gives_each_team_its_usual_month_per_source(tiny_trained):
    """Every cell is the first `usual` entry for its team and source, or "none" when there is none
    (one entry is removed here so that a "none" cell is checked too)."""
    import copy

    from wobble.core.render import render
    from wobble.models.card import build_view, fmt

    cfg, result = tiny_trained
    ev = copy.deepcopy(result.evaluation)
    comp = ev["data"]["completeness"]
    # a second team, its rows interleaved with the first's: each cell must come from its own team
    comp["usual"] = [x for u in comp["usual"] for x in (u, {**u, "team": "T99", "usual": u["usual"] + 7})]
    comp["teams"] = sorted({*comp["teams"], "T99"})
    removed = comp["usual"].pop(len(comp["usual"]) // 2)
    view = build_view(spec=load_spec(cfg.models_dir, "crisis_90d"), evaluation=ev, version="1",
                      run_id=result.run_id, demo=False, approvals=[],
                      figures={"calibration": "c.png", "roc": "r.png"})
    table = render("card.md.j2", **view).split("### Completeness by source and team", 1)[1]
    table = table.split("**Gaps**", 1)[0].split("\n#", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in comp["teams"]:
            rows[cells[0]] = cells[1:]
    assert list(rows) == comp["teams"]
    for t in comp["teams"]:
        want = [next((fmt(u["usual"], "int") for u in comp["usual"] if u["team"] == t and u["system"] == s), "none")
                for s in comp["systems"]]
        assert rows[t] == want, t
    assert rows[removed["team"]][comp["systems"].index(removed["system"])] == "none"


def test_a_median_over_fewer_people_than_the_threshold_is_not_shown(tiny_trained):
    """What the lists hold: a lead time or days into a rise over fewer people than the spec's
    small-number threshold says "too few people", never a median of one or two."""
    import copy

    from wobble.core.render import render
    from wobble.models.card import build_view

    cfg, result = tiny_trained
    spec = load_spec(cfg.models_dir, "crisis_90d")
    est = {"value": 0.5, "low": 0.4, "high": 0.6}

    def figs(people: int) -> dict:
        median = {"value": 21.0, "low": 14.0, "high": 28.0, "people": people}
        return {"rows": 40, "people": 30, "rising": est, "in_crisis": est, "crisis_contact_30d": est,
                "precision_crisis_90d": est, "precision_crisis_90d_not_in_crisis_care": est,
                "lead_days": median, "days_into_rise": {**median, "value": 35.0}}

    ev = copy.deepcopy(result.evaluation)
    k = spec.small_number_threshold
    ev["lists"] = {"lists": {"model": figs(k), "truth": figs(k - 1)},
                   "notes": {"model": "its cohort", "truth": "by the truth"}, "truth": True, "burn_in_weeks": 8}
    view = build_view(spec=spec, evaluation=ev, version="1", run_id=result.run_id, demo=False, approvals=[],
                      figures={"calibration": "c.png", "roc": "r.png"})
    md = render("card.md.j2", **view)
    too_few = f"too few people (under {spec.small_number_threshold})"
    lead = next(x for x in md.splitlines() if x.startswith("| median days from first listing to crisis (people)"))
    rise = next(x for x in md.splitlines() if x.startswith("| median days into a rising phase at first listing"))
    assert lead.split("|")[2:4] == [f" 21 days (14 to 28 days) ({spec.small_number_threshold}) ", f" {too_few} "]
    assert rise.split("|")[2:4] == [f" 35 days (14 to 28 days) ({spec.small_number_threshold}) ", f" {too_few} "]


def test_the_target_section_reads_right_for_one_measure_or_several(tiny_trained):
    """A rise target watching one count says "the count below rises"; one watching several says
    "any of these rises", and lists each."""
    from wobble.core.render import render
    from wobble.models.card import build_view
    from wobble.models.spec import Measure

    cfg, result = tiny_trained
    spec = load_spec(cfg.models_dir, "early_warning_90d")
    contacts = Measure(source="contacts", statuses=["attended"], min_count=3, prior_count=0.5)
    both = spec.model_copy(update={"target": spec.target.model_copy(
        update={"measures": [contacts, *spec.target.measures]})})

    def target_section(s) -> str:
        view = build_view(spec=s, evaluation=result.evaluation, version="1", run_id=result.run_id, demo=False,
                          approvals=[], figures={"calibration": "c.png", "roc": "r.png"})
        md = render("card.md.j2", **view)
        return md.split("## Target and horizon", 1)[1].split("\n## ", 1)[0]

    def counts(section: str) -> list[str]:
        return section.split("(Poisson):", 1)[1].strip().split("\n\n", 1)[0].splitlines()

    one, two = target_section(spec), target_section(both)
    assert "the count below rises well above" in one and "any of these" not in one
    assert counts(one) == ["- concern tags noted by frontline staff: at least 2, prior count 0.25;"]
    assert "any of these rises well above" in two and "the count below" not in two
    assert len(counts(two)) == 2 and counts(two)[1] == counts(one)[0]
    # the example of a high usual level names what the target counts
    assert "someone with many concerns noted every year" in one
    assert "someone with many contacts or concerns every year" in two
