"""Scoring in groups of whole teams (`wobble.lists.score`): at 5,000,000 people one frame of everyone
does not fit in memory, so `score` reads and scores a few teams at a time. Every figure is within a
team, so the scores and explanations must be exactly those of one frame."""

from __future__ import annotations

from datetime import date

import polars as pl
from conftest import TEST_KEY, copy_tree

import wobble.lists.reasons as reasons_module
import wobble.lists.score as score_module
from wobble.core.config import load_config
from wobble.core.warehouse import connect
from wobble.features import load_catalogue


def _tables(cfg, model: str, version: str, as_of: date) -> tuple[pl.DataFrame, pl.DataFrame]:
    with connect(cfg.warehouse, read_only=True) as con:
        where = f"model_name = '{model}' AND model_version = '{version}' AND as_of = DATE '{as_of}'"
        scores = con.sql(f"SELECT * FROM scores WHERE {where} ORDER BY person_id").pl()
        expl = con.sql(f"SELECT * FROM explanations WHERE {where} ORDER BY person_id, feature").pl()
    return scores, expl


def test_scoring_a_team_at_a_time_gives_what_one_frame_gives(demo_run, tmp_path, monkeypatch):
    work = copy_tree(demo_run[0], tmp_path / "w")
    monkeypatch.setenv("WOBBLE_PSEUDONYM_KEY", TEST_KEY)
    cfg = load_config(work / "wobble.toml")
    with connect(cfg.warehouse, read_only=True) as con:
        model, version, as_of = con.execute("SELECT model_name, model_version, max(as_of) FROM scores "
                                        "WHERE model_name = 'early_warning_90d' GROUP BY ALL").fetchall()[0]
        assert score_module.team_groups(con, as_of, 10**9) == [None]
        teams = score_module.team_groups(con, as_of, 1)
    assert len(teams) == 2 and all(len(t) == 1 for t in teams)  # the demo's two teams, one a group

    def reasons():  # the team's typical values (medians) are taken in the same groups
        with connect(cfg.warehouse, read_only=True) as con:
            return reasons_module.list_reasons(con, load_catalogue(cfg.features_dir), model, version, as_of,
                                               change_first=True)

    whole = score_module.score(cfg, model=model, version=version, as_of=as_of)
    one_frame, whole_reasons = _tables(cfg, model, version, as_of), reasons()
    monkeypatch.setattr(score_module, "SCORE_ROWS", 1)  # each team its own group
    monkeypatch.setattr(reasons_module, "SCORE_ROWS", 1)
    grouped = score_module.score(cfg, model=model, version=version, as_of=as_of)
    by_team, team_reasons = _tables(cfg, model, version, as_of), reasons()
    assert whole_reasons == team_reasons and len(whole_reasons) > 10

    assert grouped.scored == whole.scored > 1000 and grouped.explained == whole.explained > 0
    for a, b in zip(one_frame, by_team, strict=True):
        assert a.drop("created_at", strict=False).equals(b.drop("created_at", strict=False))
    assert one_frame[0]["list_rank"].drop_nulls().len() > 0


def test_what_scoring_keeps_of_a_group_holds_none_of_its_frame():
    """A frame from DuckDB shares DuckDB's Arrow batches, and a batch lives while any of its columns
    does: what a group's scoring keeps must be in buffers of its own, or every group's features stay
    in memory until the last group is scored."""
    import duckdb

    from wobble.models.fit import own_columns

    con = duckdb.connect()
    frame = con.sql("SELECT i AS n, i * 2 AS m, 'p' || i::VARCHAR AS person_id FROM range(5000) r(i)").pl()

    def addresses(f: pl.DataFrame) -> set[int]:
        return {b.address for c in f.select("n", "m").to_arrow().columns for chunk in c.chunks
                for b in chunk.buffers() if b is not None}

    kept = own_columns(frame, "n", "m", "person_id")
    assert kept.equals(frame)  # the same rows, in the same order
    assert addresses(frame.select("n", "m")) == addresses(frame)  # a plain select shares them
    assert not addresses(kept) & addresses(frame)
