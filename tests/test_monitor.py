"""Monitoring: drift is caught, a world without drift is left alone, outcomes are counted right,
and the monitor changes nothing it should not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from conftest import TEST_KEY, copy_demo, run_wobble

from wobble.ops.monitor.drift import _psi
from wobble.ops.monitor.matured import Z95


def _slow_psi(expected, actual, floor=1e-4):
    total_e, total_a = sum(expected), sum(actual)
    out = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / total_e, floor), max(a / total_a, floor)
        out += (pa - pe) * math.log(pa / pe)
    return out


def test_psi_matches_hand_computed_and_slow_reference():
    # 50/50 then, 25/75 now: (0.25 - 0.5) ln(0.5) + (0.75 - 0.5) ln(1.5) = 0.2747
    assert _psi(np.array([50.0, 50.0]), np.array([25.0, 75.0])) == pytest.approx(0.27465, abs=1e-5)
    assert _psi(np.array([10.0, 20.0, 30.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(3)
    for _ in range(20):
        e, a = rng.integers(0, 50, 8).astype(float), rng.integers(0, 50, 8).astype(float)
        e[0] = 0.0  # an empty bin counts as 1 in 10,000, never infinity
        assert _psi(e, a) == pytest.approx(_slow_psi(e, a), rel=1e-12)


def test_bin_counts_match_duckdbs_histogram_per_team_and_overall():
    # the slow obvious way: DuckDB's histogram of each binned column, per team and for everyone
    from wobble.ops.monitor.drift import BINNED_AT_ONCE, _bin_counts

    con = duckdb.connect()
    rng = np.random.default_rng(5)
    n, teams = 5_000, np.array(["T01", "T02", "T10", "T3'x"])
    a = rng.normal(size=n)
    a[rng.random(n) < 0.1] = np.nan
    frame = pl.DataFrame({"team_id": rng.choice(teams, n), "keep": rng.random(n) < 0.7,
                          "a": pl.Series(a).scatter(np.arange(0, n, 17), None),
                          "b": pl.Series(rng.integers(0, 9, n), dtype=pl.Int32).scatter(np.arange(0, n, 5), None)})
    con.register("frame", frame)
    con.execute("CREATE TABLE feature_snapshots AS SELECT * FROM frame")
    binned = ["(CASE WHEN a IS NULL THEN 0 ELSE 1 + (a > -1.0)::INT + (a > 0.0)::INT + (a > 1.5)::INT END)::UTINYINT",
              "(CASE WHEN b IS NULL THEN 0 ELSE 1 + (b::DOUBLE > 3.0)::INT END)::UTINYINT"]
    binned = binned * (BINNED_AT_ONCE // 2 + 1)  # more columns than one fetch takes
    got = _bin_counts(con, binned, "keep", sorted(teams), 5)
    for team in [*teams, None]:
        for i, expr in enumerate(binned):
            where = "keep" + (f" AND team_id = '{team.replace(chr(39), chr(39) * 2)}'" if team else "")
            hist = con.execute(f"SELECT histogram({expr}) FROM feature_snapshots WHERE {where}").fetchall()[0][0]
            row = got[team][i]
            assert {k: v for k, v in enumerate(row.tolist()) if v} == dict(hist), (team, i)
    assert got[None][0, 4] > 0 and got[None][0, 0] > 0  # NaN is above every edge; NULL is bin 0


def _fingerprint(config):
    """What the monitor must never change: lists, scores, approvals and the model registry."""
    from wobble.core.config import load_config
    from wobble.models.tracking import client

    cfg = load_config(config)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        tables = {t: con.sql(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                  for t in ("huddle_lists", "scores", "approvals", "huddle_outcomes")}
    versions = sorted((v.name, v.version, tuple(sorted(v.aliases or [])))
                      for v in client(cfg).search_model_versions())
    return tables, versions


def _feature(name, psi, level, unit="days"):
    return {"feature": name, "description": f"the {name.replace('_', ' ')}", "unit": unit, "psi": psi, "level": level,
            "ref_mean": 150.0, "cur_mean": 170.0}


def _team(team, features, feed_gap):
    return {"team": team, "judged": True, "level": "ok", "psi": 0.004, "ref_mean": 0.05, "cur_mean": 0.05,
            "feed_gap": feed_gap, "features": features}


def test_one_signal_has_one_level_and_the_text_agrees_with_the_tables():
    """A shift seen only in a team whose feed went quiet and resumed is a watch everywhere, never an act overall
    and a watch in the team; a shift also in another team stays an act; figures read as the tables print them."""
    from types import SimpleNamespace

    from wobble.ops.monitor.drift import _drift_findings

    m = SimpleNamespace(psi_watch=0.1, psi_act=0.25)
    drift = {"score": {"psi": 0.004, "level": "ok", "ref_mean": 0.05, "cur_mean": 0.05},
             "features": [_feature("days_since_social_care", 0.39, "act"), _feature("contacts_90d", 0.3, "act",
                                                                                     "contacts")],
             "teams": [_team("T01", [_feature("days_since_social_care", 0.39, "act")], "resumed"),
                       _team("T02", [_feature("contacts_90d", 0.3, "act", "contacts")], "none")]}
    findings = _drift_findings(drift, m)
    levels = {}
    for f in findings:
        for name in ("days since social care", "contacts 90d"):
            if f"the {name} (PSI" in f.what:
                levels.setdefault(name, set()).add(f.level)
    assert levels == {"days since social care": {"watch"}, "contacts 90d": {"act"}}
    assert drift["features"][0]["level"] == "watch" and drift["teams"][0]["features"][0]["level"] == "watch"
    text = " ".join(f.what for f in findings)
    assert "PSI 0.390: average 150.00 days → 170.00 days" in text and "PSI 0.004" in text and "PSI 0.00)" not in text


def test_a_drop_below_the_card_is_acted_on_only_beyond_chance():
    """An AUROC 0.052 below its card is an act when the list held thousands of crises, and within chance
    when it held a hundred; a drop within the monitor's tolerance is never one."""
    from wobble.ops.monitor.matured import below_card

    tolerance = 0.05
    assert below_card(0.784, {"auroc": 0.732, "auroc_se": 0.005}, tolerance)  # 3,000 crises: 10 errors out
    assert not below_card(0.784, {"auroc": 0.732, "auroc_se": 0.028}, tolerance)  # 100 crises: within 2 errors
    assert not below_card(0.784, {"auroc": 0.744, "auroc_se": 0.001}, tolerance)  # within the tolerance
    assert below_card(0.784, {"auroc": 0.70, "auroc_se": float("nan")}, tolerance)  # no error known: the tolerance
    assert not below_card(None, {"auroc": 0.5, "auroc_se": 0.01}, tolerance)  # no card figure, nothing to judge


def test_a_world_without_drift_is_not_flagged(monitor_world):
    from wobble.core.config import load_config
    from wobble.ops.monitor import monitor

    config, matured = monitor_world
    before = _fingerprint(config)
    result = monitor(load_config(config))
    assert _fingerprint(config) == before, "the monitor must not retrain, approve, score or publish"
    assert not result.flagged and result.level != "act", [f.what for f in result.findings]
    assert result.drift["score"]["psi"] < 0.1
    assert all(f["psi"] < 0.1 for f in result.drift["features"])
    assert result.report_md.exists() and result.report_html.exists()

    # the matured list is judged against the card, and holds up
    (v,) = result.matured["versions"]
    assert v["as_ofs"] == [matured.isoformat()]
    assert v["overall"]["crises"] >= 20
    # within what chance gives over this many people (an outcome of 1 in 60 makes a single list's
    # AUROC spread about ±0.055), and not below the card beyond it
    assert abs(v["overall"]["auroc"] - v["card"]["auroc"]) <= Z95 * v["overall"]["auroc_se"]
    assert 0.8 <= v["overall"]["calibration_slope"] <= 1.25
    text = result.report_md.read_text()
    assert "Matured performance" in text and "not flagged" in text
    # the outcome is the model's own (concerns rising), not a crisis
    assert "went on to concerns rising well above their usual" in text and "went on to a crisis" not in text


def test_outcomes_and_impact_are_counted_as_recorded(monitor_world):
    """Every figure in the outcome and impact sections, recomputed the slow, obvious way."""
    from wobble.core.config import load_config
    from wobble.ops.monitor import monitor

    config, matured = monitor_world
    cfg = load_config(config)
    result = monitor(cfg)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        # the model's list is the part within capacity: decisions about the recently-in-crisis part
        # say nothing about the model
        listed = con.sql("SELECT DISTINCT team_id, person_id FROM huddle_lists WHERE as_of = ? "
                         "AND section = 'capacity'", params=[matured]).fetchall()
        outcomes = {(t, p): o for t, p, o in con.sql(
            "SELECT team_id, person_id, outcome FROM huddle_outcomes WHERE as_of = ?", params=[matured]).fetchall()
            if (t, p) in set(listed)}
        crisis_people = {p for (p,) in con.sql(
            "SELECT DISTINCT person_id FROM contacts WHERE service IN ('ae_attendance', 'emergency_admission', "
            "'ambulance_callout', 'mental_health_crisis') AND occurred_at >= ? AND occurred_at < ? + INTERVAL 90 DAY "
            "AND recorded_at < ?", params=[matured, matured, result.as_of]).fetchall()}
    discussed = {k for k, o in outcomes.items() if o != "deferred"}
    nac = [p for (t, p), o in outcomes.items() if o == "not_a_concern"]
    o = result.outcomes
    assert o["recorded"] == len(outcomes) > 0
    assert o["discussed_past"] == len(discussed) and o["listed_past"] == len(listed)
    assert {k["kind"]: k["n"] for k in o["kinds"]} == {
        kind: sum(v == kind for v in outcomes.values()) for kind in set(outcomes.values())}
    assert o["not_a_concern"] == len(nac) > 0
    assert o["not_a_concern_with_crisis"] == sum(p in crisis_people for p in nac)

    groups = result.impact["groups"]
    assert groups["discussed"]["people"] == len({p for _t, p in discussed})
    assert groups["not yet discussed"]["people"] == len({p for _t, p in listed} - {p for _t, p in discussed})
    after = groups["discussed"]["after"]
    assert after["with_crisis"] == pytest.approx(
        sum(p in crisis_people for _t, p in discussed) / len(discussed))
    assert "observational" in result.report_md.read_text()


def test_monitor_counts_decisions_recorded_since_the_last_publish(monitor_world, tmp_path):
    # recorded with `wobble outcome record` after the lists went out: the monitor alone must see it
    import shutil

    from wobble.core.config import load_config
    from wobble.ops.monitor import monitor
    from wobble.review.records import record_outcome
    from wobble.review.tokens import db_of

    source, matured = monitor_world
    config = copy_demo(source.parent, tmp_path / "copy")
    for part in source.parent.glob("review.sqlite*"):  # with its write-ahead log
        shutil.copy2(part, tmp_path / "copy" / part.name)
    cfg = load_config(config)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        team, person = con.sql("""
            SELECT team_id, person_id FROM huddle_lists l WHERE as_of = ?
              AND NOT EXISTS (SELECT 1 FROM huddle_outcomes o WHERE o.as_of = l.as_of AND o.person_id = l.person_id)
            ORDER BY team_id, section, rank LIMIT 1""", params=[matured]).fetchall()[0]
        before = con.sql("SELECT count(*) FROM huddle_outcomes").fetchall()[0][0]
    record_outcome(db_of(cfg), team_id=team, person_id=person, outcome="outreach_agreed", note=None,
                   recorded_by="test huddle", actor="test", as_of=matured)
    result = monitor(cfg)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM huddle_outcomes").fetchall()[0][0] == before + 1
        mine = con.sql("SELECT outcome FROM huddle_outcomes WHERE person_id = ? AND as_of = ?",
                       params=[person, matured]).fetchall()
        listed = {p for (p,) in con.sql("SELECT DISTINCT person_id FROM huddle_lists WHERE as_of = ? "
                                        "AND section = 'capacity'", params=[matured]).fetchall()}
        recorded = con.sql("SELECT DISTINCT team_id, person_id FROM huddle_outcomes WHERE as_of = ?",
                           params=[matured]).fetchall()
    assert mine == [("outreach_agreed",)]
    assert result.outcomes["recorded"] == sum(p in listed for _t, p in recorded)


def test_injected_drift_is_flagged_with_a_non_zero_exit(drifted_world):
    proc = run_wobble("monitor", "--config", str(drifted_world), "--json", env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    st = summary["stages"]["monitor"]
    assert summary["flagged"] is True and st["flagged"] is True and st["level"] == "act"
    acts = [f["what"] for f in st["findings"] if f["level"] == "act"]
    assert any("team T01" in w and "GP appointments" in w for w in acts), acts
    assert st["features_act"] > 0
    html = Path(st["report_html"]).read_text(encoding="utf-8")
    assert "Needs a human look" in html and "<table>" in html
    assert "needs a human look" in proc.stderr


def test_a_world_without_drift_exits_zero(monitor_world):
    proc = run_wobble("monitor", "--config", str(monitor_world[0]), "--json",
                      env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["flagged"] is False


def test_monitor_thresholds_are_validated(tmp_path):
    from wobble.core.config import parse_config
    from wobble.core.errors import ConfigError

    cfg = parse_config({"monitor": {"psi_watch": 0.2, "psi_act": 0.3}}, root=tmp_path)
    assert cfg.monitor.psi_act == 0.3 and cfg.monitor.fail_on == "act"
    with pytest.raises(ConfigError, match="psi_watch"):
        parse_config({"monitor": {"psi_watch": 0.3, "psi_act": 0.2}}, root=tmp_path)
    with pytest.raises(ConfigError, match="monitor.psi_wach: unknown key"):
        parse_config({"monitor": {"psi_wach": 0.3}}, root=tmp_path)


def test_the_monitor_shows_the_cards_figures_intervals_and_group_labels(monitor_world):
    """The monitor reads the card's own evaluation: the same intervals, and the same names for every
    group (a value not recorded is the card's 'unknown', not a label of the monitor's own)."""
    from wobble.core.config import load_config
    from wobble.models.tracking import load_evaluation
    from wobble.ops.monitor import monitor

    cfg = load_config(monitor_world[0])
    result = monitor(cfg)
    (v,) = result.matured["versions"]
    card = load_evaluation(cfg, result.model_name, v["version"])
    model = card["scorers"]["model"]
    for metric in ("auroc", "calibration_slope", "brier", "precision_at_capacity"):
        assert v["card"][metric] == model[metric]["value"]
        assert v["card_intervals"][metric] == (model[metric]["low"], model[metric]["high"]), metric
    text = result.report_md.read_text()
    assert f"({model['auroc']['low']:.3f}–{model['auroc']['high']:.3f})" in text
    card_groups = {(g["attribute"], str(g["group"])) for g in card["subgroups"]}
    shown = [(attr, r["value"]) for attr, rows in v["subgroups"].items() for r in rows]
    assert shown and set(shown) <= card_groups | {(a, "unknown") for a, _ in shown}
    matched = [r for rows in v["subgroups"].values() for r in rows if r["card_auroc"] is not None]
    assert len(matched) >= 4  # every unsuppressed group found its figure on the card


def test_a_missing_attribute_reads_unknown_in_card_and_monitor_alike():
    import duckdb as db

    from wobble.core.vocab import UNKNOWN_GROUP
    from wobble.models.cohort import attributes_sql

    con = db.connect()
    row = con.sql("SELECT " + ", ".join(f"{sql} AS {a}" for a, sql in attributes_sql("DATE '2026-11-23'").items())
                  + " FROM (SELECT NULL::SMALLINT AS birth_year, NULL AS sex, NULL AS ethnicity_group, "
                    "NULL::TINYINT AS imd_decile) p").fetchall()[0]
    assert row[1:] == (UNKNOWN_GROUP, UNKNOWN_GROUP, UNKNOWN_GROUP)


def test_a_monitor_that_cannot_run_flags_the_weekly_path_rather_than_failing_it(tiny_world, tmp_path):
    """`wobble run` and the weekly flow share one rule: the lists are out, so a week the monitor could
    not check is a flagged result (exit 1 from `wobble run`), not a crash, and it says why."""
    from datetime import date

    from conftest import copy_tree

    from wobble.core.config import load_config
    from wobble.core.runs import RunSummary
    from wobble.ops.monitor import monitor_or_flag
    from wobble.ops.pipeline import stage_monitor

    cfg = load_config(copy_tree(tiny_world, tmp_path / "w") / "wobble.toml")  # nothing trained or approved
    flagged = monitor_or_flag(cfg, model="crisis_90d", as_of=date(2026, 11, 23))
    assert flagged["flagged"] and flagged["level"] == "act" and flagged["report_html"] is None
    assert "no model 'crisis_90d' in the registry; train it first" in flagged["findings"][0]["what"]
    assert flagged["error"]
    summary = RunSummary("run")
    st = stage_monitor(cfg, "crisis_90d", date(2026, 11, 23), summary, lambda _m: None, weekly=True)
    assert st["flagged"] and summary.data["flagged"] and "monitor_report" not in summary.data["outputs"]
    with pytest.raises(Exception, match="train it first"):  # `wobble monitor` on its own: an error
        stage_monitor(cfg, "crisis_90d", date(2026, 11, 23), RunSummary("monitor"), lambda _m: None)


def test_the_console_says_when_no_list_was_published_in_the_period():
    """Before any publish the report says 'No lists in this period'; the console said nothing, which
    read as all well."""
    from wobble.cli.main import _monitor_lines

    st = {"model_name": "m", "model_version": "1", "as_of": "2026-11-23", "level": "watch", "findings": [],
          "lists_since": "2026-08-31", "lists_in_period": 0}
    text = [str(line) for line in _monitor_lines(st)]
    assert "  no list of this model was published since 2026-08-31: huddle outcomes wait for one " \
           "(wobble publish)" in text
    assert not any("no list" in line for line in map(str, _monitor_lines({**st, "lists_in_period": 3})))
