"""Coverage: every registered adult without an opt-out is scored, the people with administrative
gaps (no GP practice, a practice in no team, sex not known, an unknown ethnicity) included; the
figure is in the publish summary and the run summary."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl
from conftest import TEST_KEY, copy_tree

from wobble.core.config import load_config
from wobble.ingest import ingest


def test_every_registered_adult_without_an_opt_out_is_scored(tiny_world, tmp_path):
    from wobble.core.calendar import as_of_for
    from wobble.lists.publish import publish
    from wobble.models.approve import approve
    from wobble.models.train import train

    work = copy_tree(tiny_world, tmp_path / "w")
    (work / "warehouse.duckdb").unlink()
    assert not (work / "world").is_symlink()  # the world is this test's own copy
    world = (work / "world").resolve()
    reg = world / "raw" / "gp" / "registrations.csv"
    df = pl.read_csv(reg, infer_schema_length=0)
    i = pl.int_range(0, df.height)
    # administrative gaps, a few hundred people: no practice, a practice no lookup knows, sex
    # "U" (not known) and "9" (indeterminate), an ethnic category no mapping knows
    df = df.with_columns(
        pl.when(i % 20 == 1).then(pl.lit(None)).when(i % 20 == 2).then(pl.lit("P99999"))
        .otherwise(pl.col("PracticeCode")).alias("PracticeCode"),
        pl.when(i % 25 == 3).then(pl.lit("U")).when(i % 25 == 4).then(pl.lit("9")).otherwise(pl.col("Gender"))
        .alias("Gender"),
        pl.when(i % 30 == 5).then(pl.lit("Q")).otherwise(pl.col("EthnicCategory")).alias("EthnicCategory"))
    reg.unlink()
    df.write_csv(reg)
    cfg = load_config(work / "wobble.toml")
    result = ingest(cfg, key=TEST_KEY.encode(), report=False)
    persons = next(f for f in result.files if f.table == "persons")
    assert persons.reasons.get("unknown_code", 0) == 0 and persons.reasons.get("missing_field", 0) == 0
    assert result.summary()["persons_team_assigned"]["unattached"] >= 200
    trained = train(cfg, "crisis_90d", key=TEST_KEY.encode())
    # the fairness tables show sex not known as its own group (counts below the threshold suppressed)
    sexes = {g["group"]: g for g in trained.evaluation["subgroups"] if g["attribute"] == "sex"}
    assert set(sexes) == {"female", "male", "not_known"}
    assert sexes["not_known"]["people"] >= cfg.wobble.small_number_threshold  # ~8% of the world: shown
    assert "not_known" in trained.card_md.read_text()
    approve(cfg, model="crisis_90d", version="1", by="test", note="coverage test", demo=True)
    as_of = as_of_for(cfg, None)
    cov = publish(cfg, model="crisis_90d", version="1", as_of=as_of).summary()["coverage"]
    assert cov["registered_adults"] > 2000
    assert cov["scored"] == cov["registered_adults"] and cov["scored_share"] == 1.0, cov
    assert cov["unaccounted"] == 0 and cov["not_ranked"] == {"recent_crisis": 0, "short_history": 0}
    assert cov["scored_without_a_practice_team"] >= 150 and cov["scored_with_sex_not_known"] >= 100, cov


def test_the_early_warning_model_scores_everyone_and_ranks_only_its_cohort(demo_run):
    """The demo's early_warning_90d: every registered adult is scored; those its cohort rules leave
    out (a crisis contact in the last 90 days; registered under a year) are scored but never ranked
    or listed, and who they are matches a plain reading of the rules (polars, not the model's SQL)."""
    import json
    from datetime import timedelta

    import duckdb

    from wobble.core.sql import in_list
    from wobble.core.vocab import CRISIS_SERVICES

    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    cov = json.loads(proc.stdout)["coverage"]
    assert cov["scored_share"] == 1.0 and cov["scored"] == cov["registered_adults"] > 5000, cov
    assert cov["unaccounted"] == 0 and cov["outside_model_ages"] == 0, cov
    assert cov["not_ranked"]["recent_crisis"] > 0 and cov["not_ranked"]["short_history"] > 0, cov
    assert cov["ranked"] + sum(cov["not_ranked"].values()) == cov["scored"], cov
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        scores = con.sql("SELECT person_id, as_of, cohort_rule, team_rank, list_rank FROM scores "
                         "WHERE model_name = 'early_warning_90d'").pl()
        persons = con.sql("SELECT person_id, registered_on FROM persons").pl()
        crises = con.sql(f"SELECT person_id, occurred_at, recorded_at FROM contacts "
                         f"WHERE service IN {in_list(CRISIS_SERVICES)}").pl()
        listed = con.sql("SELECT person_id FROM huddle_lists WHERE section = 'capacity' "
                         "AND as_of = (SELECT max(as_of) FROM scores)").pl()
    as_of = scores["as_of"].max()
    day = datetime.combine(as_of, datetime.min.time())
    scores = scores.filter(pl.col("as_of") == as_of)
    recent = set(crises.filter((pl.col("occurred_at") < day) & (pl.col("recorded_at") < day)
                               & (pl.col("occurred_at") >= day - timedelta(days=90)))["person_id"])
    short = set(persons.filter(pl.col("registered_on") > as_of - timedelta(days=365))["person_id"])
    expected = {p: "recent_crisis" if p in recent else "short_history" if p in short else None
                for p in scores["person_id"]}
    assert dict(zip(scores["person_id"], scores["cohort_rule"], strict=True)) == expected
    left_out = scores.filter(pl.col("cohort_rule").is_not_null())
    assert left_out["team_rank"].null_count() == left_out["list_rank"].null_count() == left_out.height
    assert scores.filter(pl.col("cohort_rule").is_null())["team_rank"].null_count() == 0
    assert not set(left_out["person_id"]) & set(listed["person_id"])
    # the page says who it cannot rank, above the list, and no person's row repeats it
    pages = [Path(t["html"]).read_text() for t in json.loads(proc.stdout)["lists"]]
    assert any("registered less than a year ago" in page and "not ranked" in page for page in pages)
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM huddle_lists WHERE caveats::VARCHAR LIKE '%not ranked%'").fetchone()
    assert rows == (0,)
