"""The grading rows (`wobble.models.grading.grading_rows`) against an obvious whole read: the rows are
made without their features and scored a slice at a time, in whatever order the slices come, so
every prediction must still land on its own row, and the rows must be those and in the order a
plain query gives."""

from __future__ import annotations

import numpy as np
import polars as pl

from wobble.core.sql import dates
from wobble.core.warehouse import connect
from wobble.features import cohort_sql, load_catalogue
from wobble.models.cohort import held_out_share
from wobble.models.fit import feature_matrix
from wobble.models.grading import burn_in, grading_rows
from wobble.models.spec import load_spec


class _Weighted:
    """A stand-in model whose prediction for a row is a fixed weighting of its features, so a
    prediction put on the wrong row shows."""

    def __init__(self, n: int):
        self.w = np.random.default_rng(5).normal(size=n)

    def predict(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros(X.shape[0])
        for j, w in enumerate(self.w):  # column by column, so a row's sum does not depend on the others
            out += w * np.nan_to_num(X[:, j], nan=-3.0)
        return out


def test_grading_rows_score_each_row_as_a_whole_read_would(tiny_trained):
    cfg, result = tiny_trained
    spec = load_spec(cfg.models_dir, "crisis_90d")
    cat = load_catalogue(cfg.features_dir)
    cols, other = cat.predictors[:40], cat.predictors[-25:]
    as_ofs = burn_in(result.split) + result.split.test
    models = {"a": (_Weighted(len(cols)), cols), "b": (_Weighted(len(other)), other)}
    c = spec.cohort
    with connect(cfg.warehouse, read_only=True) as con:
        share = held_out_share(con, spec, result.split)
        rows, scores = grading_rows(con, spec, as_ofs, share, models, rows_at_once=97)
        snapshots = con.sql(f"SELECT * FROM feature_snapshots WHERE as_of IN (SELECT unnest({dates(as_ofs)}))").pl()
        cohort = con.sql(f"""SELECT k.person_id, k.as_of, k.team_id FROM ({cohort_sql(dates(as_ofs))}) k
                             JOIN persons p USING (person_id)
                             WHERE year(k.as_of) - p.birth_year BETWEEN {c.min_age} AND {c.max_age}""").pl()
    held = cohort.join(snapshots.select("person_id", "as_of"), on=["person_id", "as_of"]).filter(
        (pl.col("person_id").str.slice(0, 8).str.to_integer(base=16) / 4294967296.0) < share)
    assert rows.height > 1000 and rows.height % 97  # several slices, the last one short
    # the rows: every held-out adult with a snapshot, once, by date, team and person
    assert rows.select("person_id", "as_of").to_dicts() == held.sort("as_of", "team_id", "person_id").select(
        "person_id", "as_of").to_dicts()
    teams = cohort.group_by("team_id", "as_of").len("team_cohort")
    assert (rows.join(teams, on=["team_id", "as_of"], how="left", maintain_order="left")["team_cohort_right"]
            == rows["team_cohort"]).all()
    # each prediction on its own row
    whole = rows.select("person_id", "as_of").join(snapshots, on=["person_id", "as_of"], how="left",
                                                   maintain_order="left")
    for name, (model, columns) in models.items():
        np.testing.assert_array_equal(scores[name], model.predict(feature_matrix(whole, columns)))
