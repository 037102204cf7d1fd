"""The whole path at a small size, through the CLI as a user runs it."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from html import unescape
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT, TEST_KEY, run_wobble


def test_demo_runs_and_says_where_everything_is(demo_run):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    for stage in ("synth", "ingest", "train", "approve", "features", "publish"):
        assert summary["stages"][stage]["seconds"] >= 0
    ing = summary["stages"]["ingest"]
    assert ing["rows_in"] == ing["rows_loaded"] + ing["rows_quarantined"] + ing["rows_duplicate"]
    tr = summary["stages"]["train"]
    assert tr["model_name"] == "early_warning_90d" and tr["model_version"] == "1"
    for k in ("auroc", "auprc", "brier", "baseline_auroc"):
        assert 0 <= tr["metrics"][k] <= 1, k
    assert tr["metrics"]["auroc"] > 0.65
    for k in ("warehouse", "mlflow", "model_card"):
        assert Path(summary["outputs"][k]).exists(), k
    m = tr["metrics"]  # the graded lists' figures, beside the card's table of them
    assert m["list_model_crisis_contact_30d"] <= 0.1 and m["list_crisis_now_crisis_contact_30d"] > 0.3
    assert m["list_truth_rising"] >= m["list_model_rising"] > m["list_crisis_now_rising"]
    assert m["list_model_days_into_rise_people"] > 0 and m["list_model_days_into_rise"] >= 0
    card = Path(summary["outputs"]["model_card"]).read_text()
    assert "| median days into a rising phase at first listing (people) |" in card
    assert "its list (test period): " in proc.stderr
    assert len(summary["lists"]) == 2  # 10,000 people: two teams
    for item in summary["lists"]:
        assert item["rows"] == 20 and item["recent_crisis"] > 0
        assert Path(item["csv"]).exists() and Path(item["html"]).exists()
    pub = summary["stages"]["publish"]
    assert pub["with_change_reason"] == 1.0  # everyone on the early-warning part has a reason about change
    graded = pub["graded_by_truth"]  # a synthetic world: the list graded by its hidden need
    assert graded["capacity"]["rows"] == 40 and graded["capacity"]["crisis_contact_30d"] == 0
    assert graded["capacity"]["rising"] >= 0.5 and graded["truth_ranked"]["rising"] >= graded["capacity"]["rising"]
    run_files = list((work / "outputs" / "runs").glob("*.json"))
    assert run_files and json.loads(run_files[0].read_text())["run_id"] == summary["run_id"]
    assert "model card" in proc.stderr and "T01" in proc.stderr


def test_lists_are_framed_for_discussion_and_marked_demo(demo_run):
    work, proc = demo_run
    summary = json.loads(proc.stdout)
    raw = Path(summary["lists"][0]["html"]).read_text()
    html = unescape(raw)
    assert "For discussion, not a decision" in html
    assert "What do we know that the data doesn't?" in html
    assert "Demonstration only" in html
    assert "<script" not in raw and "http://" not in raw and "https://" not in raw
    with open(summary["lists"][0]["csv"]) as f:
        rows = list(csv.DictReader(f))
    capacity = [r for r in rows if r["section"] == "capacity"]
    recent = [r for r in rows if r["section"] == "recent_crisis"]
    assert rows == capacity + recent  # the capacity part first, then the other, each by rank
    assert [int(r["rank"]) for r in capacity] == list(range(1, 21))
    assert [int(r["rank"]) for r in recent] == list(range(1, len(recent) + 1))
    assert all(r["demo"] == "yes" and r["reasons"] for r in rows)
    risks = [float(r["risk"]) for r in capacity]
    assert risks == sorted(risks, reverse=True) and all(r["risk"] == "" for r in recent)
    assert all("%" not in r["risk_phrase"] for r in capacity)  # chances in words and bands, not exact
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        n, demo = con.sql("SELECT count(*) FILTER (WHERE section = 'capacity'), bool_and(demo) FROM huddle_lists"
                          ).fetchall()[0]
    assert n == 40 and demo


def test_no_published_reason_contradicts_itself(demo_run):
    """Every reason on the demo's lists, read against the value and team typical it was built from:
    a count above the team's typical value, or a recency shorter than it, never "lowers concern";
    "rising" only where the value rises; no "-0.0"; and everyone on the early-warning part has a
    reason about change, shown first."""
    from wobble.core.config import PACKAGED_FEATURES
    from wobble.features import load_catalogue

    cat = load_catalogue(PACKAGED_FEATURES)
    work, _ = demo_run
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        rows = con.sql("SELECT reasons FROM huddle_lists WHERE section = 'capacity'").fetchall()
    checked = 0
    for (raw,) in rows:
        reasons = json.loads(raw)
        assert reasons[0]["about_change"], reasons
        for r in reasons:
            f = cat.get(r["feature"])
            typical = math.inf if r["typical_is_none"] else r["typical"]
            value = r["value"] if r["value"] is not None else (math.inf if f.unit == "days" else -math.inf)
            if r["direction"] == "lowers concern" and f.concern != "none" and typical is not None:
                assert not (f.concern == "higher" and value >= typical), r
                assert not (f.concern == "lower" and value <= typical), r
            if "rising" in r["text"]:
                assert value > 0, r
            assert "-0.0" not in r["text"] and "100%" not in r["text"], r
            checked += 1
    assert len(rows) == 40 and checked >= 40 * 3


def test_publishing_again_changes_nothing(demo_run):
    work, proc = demo_run
    summary = json.loads(proc.stdout)
    as_of = summary["stages"]["publish"]["as_of"]
    html_before = Path(summary["lists"][0]["html"]).read_text()
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        before = con.sql("SELECT * FROM huddle_lists ORDER BY team_id, rank").fetchall()
    again = run_wobble("publish", "--config", str(work / "wobble.toml"), "--as-of", as_of,
                       env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert again.returncode == 0, again.stderr
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        after = con.sql("SELECT * FROM huddle_lists ORDER BY team_id, rank").fetchall()
    assert before == after
    assert Path(summary["lists"][0]["html"]).read_text() == html_before


def test_publish_refuses_an_unapproved_model(demo_run):
    work, _ = demo_run
    env = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
    trained = run_wobble("train", "--config", str(work / "wobble.toml"), "--json", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    version = json.loads(trained.stdout)["stages"]["train"]["model_version"]
    assert version == "2"
    refused = run_wobble("publish", "--config", str(work / "wobble.toml"), "--version", version, env=env)
    assert refused.returncode != 0
    assert "not been approved" in refused.stderr and "wobble approve" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_commands_without_a_key_explain_in_one_line(demo_run):
    work, _ = demo_run
    proc = run_wobble("ingest", "--config", str(work / "wobble.toml"), env={"WOBBLE_PSEUDONYM_KEY": ""})
    assert proc.returncode == 2
    assert "WOBBLE_PSEUDONYM_KEY" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_bad_config_names_the_block_and_key(tmp_path):
    cfg = tmp_path / "wobble.toml"
    cfg.write_text('[paths]\nwarehose = "x.duckdb"\n')
    proc = run_wobble("ingest", "--config", str(cfg))
    assert proc.returncode == 2 and "paths.warehose" in proc.stderr and "unknown key" in proc.stderr


def test_help_does_not_import_heavy_libraries():
    code = ("import sys, wobble.cli.main; heavy = [m for m in ('polars', 'duckdb', 'numpy', 'lightgbm', "
            "'mlflow', 'prefect', 'sklearn', 'shap') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src")}, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("args", [["--help"], ["features", "list"]])
def test_cli_basics(args):
    proc = run_wobble(*args)
    assert proc.returncode == 0, proc.stderr


def test_the_demo_key_follows_the_seed(tmp_path, monkeypatch):
    """Without a key in the environment the demo derives one from its seed: same seed, same
    pseudonyms and the same hash-chosen test people, run to run."""
    from wobble.synth import demo_key

    monkeypatch.delenv("WOBBLE_TEST_KEY_VAR", raising=False)
    a, note = demo_key(tmp_path / "a", "WOBBLE_TEST_KEY_VAR", 7)
    monkeypatch.delenv("WOBBLE_TEST_KEY_VAR")
    b, _ = demo_key(tmp_path / "b", "WOBBLE_TEST_KEY_VAR", 7)
    monkeypatch.delenv("WOBBLE_TEST_KEY_VAR")
    c, _ = demo_key(tmp_path / "c", "WOBBLE_TEST_KEY_VAR", 8)
    assert a == b != c and len(a) == 64 and "seed 7" in note
    assert (tmp_path / "a" / ".wobble_key").read_bytes() == a
    monkeypatch.setenv("WOBBLE_TEST_KEY_VAR", "from-the-environment-0123")
    assert demo_key(tmp_path / "d", "WOBBLE_TEST_KEY_VAR", 7) == (b"from-the-environment-0123", None)
