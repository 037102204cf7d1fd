"""Coverage: every registered adult without an opt-out is scored, the people with administrative
gaps (no GP practice, a practice in no team, sex not known, an unknown ethnicity) included; the
figure is in the publish summary and the run summary."""

from __future__ import annotations

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
    assert cov["unaccounted"] == 0 and cov["left_out_by_cohort_rules"] == 0
    assert cov["scored_without_a_practice_team"] >= 150 and cov["scored_with_sex_not_known"] >= 100, cov
