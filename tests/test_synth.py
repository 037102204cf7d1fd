"""The synthetic world: deterministic, calibrated near England, hard but not hopeless."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from wobble.synth import synth
from wobble.synth.world import WORLD_START, WORLD_WEEKS


def _hashes(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_world(tmp_path):
    a = synth(persons=1500, seed=3, out=tmp_path / "a")
    b = synth(persons=1500, seed=3, out=tmp_path / "b")
    c = synth(persons=1500, seed=4, out=tmp_path / "c")
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert _hashes(tmp_path / "a") != _hashes(tmp_path / "c")
    assert a.contacts == b.contacts and a.contacts != c.contacts


def test_worker_processes_do_not_change_the_world(tmp_path):
    a = synth(persons=25_100, seed=5, out=tmp_path / "a", workers=1)  # two chunks
    b = synth(persons=25_100, seed=5, out=tmp_path / "b", workers=2)
    assert a.contacts == b.contacts
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def _years():
    return WORLD_WEEKS / 52.18


def test_population_looks_like_england(world20k):
    p = pl.read_parquet(world20k / "truth/persons.parquet")
    assert p.height == 20_000
    share = p["ethnicity_group"].value_counts(normalize=True).sort("ethnicity_group")
    white = share.filter(pl.col("ethnicity_group") == "White")["proportion"][0]
    assert 0.75 < white < 0.87  # 2021 census: 81%
    assert 0.15 < (p["age"] >= 65).mean() < 0.23  # ONS mid-2022: about 19%
    assert 0.48 < p["female"].mean() < 0.54
    # deprivation differs between teams
    team_imd = p.group_by("team_id").agg(pl.col("imd_decile").mean())["imd_decile"]
    assert team_imd.max() - team_imd.min() > 2


def test_crisis_rates_near_england(world20k):
    persons = pl.read_parquet(world20k / "truth/persons.parquet")
    crises = pl.read_parquet(world20k / "truth/crises.parquet")
    per_year = crises.group_by("kind").len().with_columns(pl.col("len") / 20_000 / _years())
    rate = dict(per_year.iter_rows())
    assert 0.25 < rate["ae_attendance"] < 0.55  # England: about 0.4
    assert 0.06 < rate["emergency_admission"] < 0.15  # England: about 0.1
    old = persons.filter(pl.col("age") >= 75)["nhs_number"]
    old_ae = crises.filter((pl.col("kind") == "ae_attendance") & pl.col("nhs_number").is_in(old.implode()))
    assert old_ae.height / old.len() / _years() > 2 * rate["ae_attendance"]  # far more among the old


def test_question_is_neither_trivial_nor_hopeless(world20k):
    """Adults: 90-day crisis prevalence 3-10%; oracle AUROC 0.75-0.90."""
    persons = pl.read_parquet(world20k / "truth/persons.parquet").filter(pl.col("age") >= 18)
    crises = pl.read_parquet(world20k / "truth/crises.parquet")
    risk = pl.read_parquet(world20k / "truth/risk.parquet")
    ys, ps = [], []
    for k in range(60, WORLD_WEEKS - 13, 6):
        as_of = WORLD_START + timedelta(weeks=k)
        r = risk.filter(pl.col("as_of") == as_of).join(persons.select("nhs_number"), on="nhs_number")
        lo, hi = pl.lit(as_of).cast(pl.Datetime("us")), pl.lit(as_of + timedelta(days=90)).cast(pl.Datetime("us"))
        hit = crises.filter((pl.col("occurred_at") >= lo) & (pl.col("occurred_at") < hi))["nhs_number"].unique()
        ys.append(r["nhs_number"].is_in(hit.implode()).to_numpy())
        ps.append(r["p_crisis"].to_numpy())
    y, p = np.concatenate(ys), np.concatenate(ps)
    prevalence, auroc = y.mean(), roc_auc_score(y, p)
    print(f"adult 90-day prevalence {prevalence:.4f}, oracle AUROC {auroc:.4f}")
    assert 0.03 <= prevalence <= 0.10
    assert 0.75 <= auroc <= 0.90
    assert abs(p.mean() - prevalence) < 0.01  # the oracle is calibrated


def test_records_arrive_late_and_extracts_have_their_own_formats(world20k):
    raw = world20k / "raw"
    gp = pl.read_csv(raw / "gp/appointments_part1.csv", infer_schema=False, n_rows=5000)
    assert gp["NHSNumber"].str.contains(r"^\d{3} \d{3} \d{4}$").mean() > 0.99
    sc = pl.read_parquet(raw / "social_care/events.parquet").drop_nulls(["event_date", "input_date"])
    sc = sc.filter(pl.col("event_date").dt.year() > 2000)
    lag_days = ((sc["input_date"] - sc["event_date"]).dt.total_seconds() / 86400)
    assert lag_days.median() > 2  # days for social care
    acute = pl.read_parquet(raw / "acute/activity.parquet").filter(pl.col("pod") == "AE")
    acute = acute.drop_nulls(["start_ts", "created_ts"]).filter(pl.col("start_ts").dt.year() < 2090)
    lag_hours = ((acute["created_ts"] - acute["start_ts"]).dt.total_seconds() / 3600)
    assert lag_hours.median() < 12  # hours for A&E
    assert (raw / "community/contacts.csv").read_text().count("CH_BROKEN") == 2


def test_nothing_in_an_extract_was_recorded_after_the_extract_date(world20k):
    # else how many rows ingest loads depends on the day it runs (it quarantines future dates)
    manifest = json.loads((world20k / "truth/manifest.json").read_text())
    extract = pl.lit(date.fromisoformat(manifest["extract_date"])).cast(pl.Datetime("us"))
    raw = world20k / "raw"
    for path, column in [("acute/activity.parquet", "created_ts"), ("acute/activity_corrections.parquet", "created_ts"),
                         ("social_care/events.parquet", "input_date")]:
        frame = pl.read_parquet(raw / path)
        assert frame.height > 0 and frame.filter(pl.col(column) >= extract).height == 0, path


def test_corrections_made_after_the_extract_date_are_not_in_it(tmp_path):
    # A correction is recorded 14 days after the record it corrects: near the extract date,
    # that is after it. Half these outpatient records were keyed in the extract's last week.
    from wobble.synth.extracts import Writers

    w = Writers(tmp_path / "raw", tmp_path / "truth", date(2024, 1, 1), 52, {"n_teams": np.array(1)})
    (tmp_path / "raw/acute").mkdir(parents=True)
    extract = datetime(2024, 1, 1) + timedelta(weeks=52)
    n = 20_000
    created = [extract - timedelta(days=3 if k % 2 else 100) for k in range(n)]
    pl.DataFrame({"episode_id": [f"EP{k}" for k in range(n)], "pod": "OP", "attend_status": "5",
                  "created_ts": created}).write_parquet(tmp_path / "raw/acute/activity.parquet")
    defects: dict[str, int] = {}
    w._write_corrections(np.random.default_rng(1), defects)
    fixed = pl.read_parquet(tmp_path / "raw/acute/activity_corrections.parquet")
    assert fixed.height == defects["acute_activity.corrections"] > 0
    assert fixed["created_ts"].max() < extract
    assert set(fixed["attend_status"]) == {"3"}


def test_defects_are_stated_and_one_team_has_a_feed_gap(world20k):
    m = json.loads((world20k / "truth/manifest.json").read_text())
    assert m["defects"]["gp_appointments.invalid_nhs_number"] > 0
    assert m["defects"]["community_contacts.malformed_line"] == 2
    gap = m["feed_gap"]
    assert gap["team_id"] == "T02" and gap["system"] == "social_care"
    sc = pl.read_parquet(world20k / "raw/social_care/events.parquet")
    persons = pl.read_parquet(world20k / "truth/persons.parquet").select("nhs_number", "team_id")
    sc = sc.join(persons, left_on="person_nhs", right_on="nhs_number")
    in_gap = sc.filter((pl.col("team_id") == "T02") & (pl.col("event_date") >= pl.datetime(2026, 8, 1))
                       & (pl.col("event_date") < pl.datetime(2026, 10, 1)))
    other = sc.filter((pl.col("team_id") == "T03") & (pl.col("event_date") >= pl.datetime(2026, 8, 1))
                      & (pl.col("event_date") < pl.datetime(2026, 10, 1)))
    assert in_gap.height == 0 and other.height > 50


@pytest.mark.parametrize("bad", [0, 5])
def test_refuses_silly_sizes(tmp_path, bad):
    with pytest.raises(ValueError):
        synth(persons=bad, seed=1, out=tmp_path)
