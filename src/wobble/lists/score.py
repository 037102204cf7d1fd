"""Score and explain: the approved model's calibrated risk for everyone in the cohort at an as-of date.

Reads `feature_snapshots` at the as-of date (building it if missing) and the model version from
MLflow; writes `scores` (one row per model version, as_of and person) and `explanations` (one
row per listed person and feature: the value and its SHAP contribution). Only people within
their team's capacity are explained, so explaining grows with list size, not population.
SHAP values come from LightGBM's own TreeSHAP (`pred_contrib=True`), which is exact for trees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from wobble.core.config import Config
from wobble.core.errors import ConfigError, WobbleError, some_of
from wobble.core.sql import date_literal, in_list
from wobble.core.warehouse import connect, one_row, transaction
from wobble.features import build_features, dates_to_build, load_catalogue
from wobble.models.cohort import RECENT_CRISIS, SHORT_HISTORY, age_sql, cohort_rule_sql
from wobble.models.explain import change_reasons
from wobble.models.fit import feature_matrix, own_columns
from wobble.models.spec import load_spec
from wobble.models.tracking import load_version


@dataclass
class ScoreResult:
    model_name: str
    model_version: str
    as_of: date
    scored: int
    explained: int
    seconds: float

    def summary(self) -> dict:
        return {"model_name": self.model_name, "model_version": self.model_version,
                "as_of": self.as_of.isoformat(), "scored": self.scored,
                "explained": self.explained, "seconds": round(self.seconds, 2)}


def score(cfg: Config, *, model: str, version: str, as_of: date) -> ScoreResult:
    """Score the cohort at `as_of`; explain the top of each team's list."""
    t0 = time.perf_counter()
    spec = load_spec(cfg.models_dir, model)
    with connect(cfg.warehouse, read_only=True) as con:
        check_capacity_teams(cfg, con)
        to_build = dates_to_build(con, [as_of])
    if to_build:
        build_features(cfg, to_build)
    booster, calibrator, features, _run = load_version(cfg, model, version)
    cat = load_catalogue(cfg.features_dir)
    missing = [f for f in features if f not in cat.columns]
    if missing:
        raise WobbleError(
            f"model {model} v{version} uses features no longer in the catalogue: {', '.join(missing)}; "
            "retrain it"
        )
    parts = []
    # DuckDB keeps what it read, up to its limit, beside each group's frames: at 5,000,000 people,
    # with the warehouse's 4 GB, publish peaked at 8.6 GB; with SCORE_MEMORY, 6.3 GB
    with connect(cfg.warehouse, read_only=True, memory_limit=SCORE_MEMORY) as con:
        # whole teams at a time (every figure is within a team, so a team scored beside fewer
        # others gets the same): at 5,000,000 people one frame of everyone took 10 GB
        for teams in team_groups(con, as_of, SCORE_ROWS):
            frame = con.sql(cohort_frame_sql(spec, features, as_of, teams)).pl()
            if frame.height:
                parts.append(score_rows(cfg, spec, cat, frame, features, booster, calibrator))
            del frame
    if not parts:
        raise WobbleError(f"nobody in the cohort at {as_of}")
    scores = pl.concat([s for s, _ in parts]).sort("person_id")  # one frame's order: by person
    expl = pl.concat([e for _, e in parts])
    with connect(cfg.warehouse) as con:
        write_scores(con, model, str(version), as_of, scores, expl)
    return ScoreResult(model, str(version), as_of, scores.height, expl.height // max(1, len(features)),
                       time.perf_counter() - t0)


def check_capacity_teams(cfg: Config, con) -> None:
    """Refuse a `[teams.capacity]` entry for a team nobody in the warehouse is in.

    Checked here, not when the config is read: the teams come from the data (the register's team,
    the practice lookup), which only the warehouse knows. A misspelt team (`T1` for `T01`) would
    otherwise leave the real team on `default_capacity`, silently."""
    if not cfg.teams.capacity:
        return
    known = {t for (t,) in con.execute("SELECT DISTINCT team_id FROM persons WHERE team_id IS NOT NULL").fetchall()}
    known.add(cfg.teams.unattached)  # a team of its own even before anyone is in it
    unknown = sorted(set(cfg.teams.capacity) - known)
    if unknown:
        which = f"team{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}"
        raise ConfigError(f"config teams.capacity: no {which} in the warehouse (its teams: "
                          f"{some_of(sorted(known), 20)}); correct the "
                          "name in wobble.toml, or remove it")


SCORE_MEMORY = "1500MB"  # DuckDB's limit while the scoring reads run (a group's rows, sorted by person)
SCORE_ROWS = 1_200_000  # snapshot rows scored at once, in whole teams: one frame at 1,000,000 people


def team_groups(con, as_of: date, rows: int) -> list[list[str] | None]:
    """The teams with snapshots at `as_of`, in groups of whole teams of about `rows` snapshot rows
    each, by team; [None] (everyone at once) when they all fit in one."""
    sizes = con.sql(f"SELECT team_id, count(*) AS n FROM feature_snapshots WHERE as_of = {date_literal(as_of)} "
                    "GROUP BY team_id ORDER BY team_id").fetchall()
    if sum(n for _, n in sizes) <= rows:
        return [None]
    groups, current, size = [], [], 0
    for team, n in sizes:
        if current and size + n > rows:
            groups.append(current)
            current, size = [], 0
        current.append(team)
        size += n
    return groups + [current]


def cohort_frame_sql(spec, features: list[str], as_of: date, teams: list[str] | None = None) -> str:
    """The snapshot rows a model scores at `as_of`, ordered by person: everyone of its ages (in
    `teams`, or every team), with `cohort_rule`, the rule that keeps a person off its ranking
    (NULL: in the cohort, ranked)."""
    day = date_literal(as_of)
    within = f"AND f.team_id IN {in_list(teams)}" if teams is not None else ""
    return f"""
        SELECT f.person_id, f.team_id, {cohort_rule_sql(spec, day, 'p')} AS cohort_rule,
               {', '.join(f'f.{c}' for c in features)}
        FROM feature_snapshots f JOIN persons p USING (person_id)
        WHERE f.as_of = {day} AND {age_sql(spec, day, 'p')} {within}
        ORDER BY f.person_id"""


def score_rows(cfg: Config, spec, cat, frame: pl.DataFrame, features: list[str], booster, calibrator
               ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(scores, explanations) for whole teams' rows of `frame` (person_id, team_id, cohort_rule,
    features, by person).

    Scores: one row per person (risk, cohort_rule, and for people in the cohort, whose cohort_rule
    is blank: team_percentile and team_rank by score among them, and list_rank, the place on the
    team's list, blank when not listed); explanations: one row per listed person and feature.
    A team lists its capacity's worth of its highest scores; a model whose spec asks for a reason
    about change lists only people with one (`explain.change_reasons`), so its explanations are
    computed for three times the capacity's worth, the people who can reach the list. Every
    figure is within a team, so a team scored alone gets exactly what it gets beside the others.
    """
    X = feature_matrix(frame, features)
    raw = booster.predict(X)
    # copied: what is kept of a group must not keep the group's whole frame
    scored = own_columns(frame, "person_id", "team_id", "cohort_rule").with_columns(
        pl.Series("risk", calibrator.predict(raw)), pl.Series("_raw", raw)).with_row_index("_i")
    # people a cohort rule leaves out are scored (nobody is silently unseen) but not ranked: the
    # model's figures, and the team's list, are about its cohort
    scores = scored.filter(pl.col("cohort_rule").is_null()).with_columns(
        # share of the team with a lower risk: "higher than 98 in 100 people in this team"
        ((pl.col("risk").rank("min").over("team_id") - 1) / pl.len().over("team_id")).alias("team_percentile"),
        # rank by the uncalibrated score: isotonic calibration ties people the model separates
        pl.col("_raw").rank("ordinal", descending=True).over("team_id").cast(pl.Int32).alias("team_rank"),
    )
    gate = spec.listing.require_change_reason
    teams = scores["team_id"].unique().sort().to_list()
    capacity = pl.DataFrame({"team_id": teams, "_cap": [cfg.teams.capacity_for(t) for t in teams]},
                            schema={"team_id": pl.String, "_cap": pl.Int64})
    near = scores.join(capacity, on="team_id").filter(pl.col("team_rank") <= pl.col("_cap") * (3 if gate else 1))
    idx = near["_i"].to_numpy()
    contrib = (booster.predict(X[idx], pred_contrib=True)[:, :-1] if idx.size
               else np.zeros((0, len(features))))
    ok = change_reasons(contrib, X[idx], features, cat) >= 0 if gate else np.ones(idx.size, bool)
    ranks = (near.with_columns(pl.Series("_ok", ok)).filter("_ok")
             .with_columns(pl.col("team_rank").rank("ordinal").over("team_id").cast(pl.Int32).alias("list_rank"))
             .filter(pl.col("list_rank") <= pl.col("_cap")).select("_i", "list_rank"))
    scores = scored.join(scores.select("_i", "team_percentile", "team_rank"), on="_i", how="left",
                         maintain_order="left").join(ranks, on="_i", how="left", maintain_order="left")
    keep = np.isin(idx, ranks["_i"].to_numpy())
    expl = pl.DataFrame({
        "person_id": np.repeat(frame["person_id"].to_numpy()[idx[keep]], len(features)),
        "feature": np.tile(np.array(features), int(keep.sum())),
        "value": X[idx[keep]].ravel(),
        "contribution": contrib[keep].ravel(),
    }, schema={"person_id": pl.String, "feature": pl.String, "value": pl.Float64, "contribution": pl.Float64})
    return scores.select("person_id", "team_id", "risk", "team_percentile", "team_rank", "list_rank",
                         "cohort_rule"), expl


def write_scores(con, model: str, version: str, as_of: date, scores: pl.DataFrame, expl: pl.DataFrame) -> None:
    """Replace the version's scores and explanations at `as_of`, in one transaction."""
    with transaction(con):
        params = [model, str(version), as_of]
        con.execute("DELETE FROM scores WHERE model_name = ? AND model_version = ? AND as_of = ?", params)
        con.execute("DELETE FROM explanations WHERE model_name = ? AND model_version = ? AND as_of = ?", params)
        con.register("_scores", scores)
        con.register("_expl", expl)
        con.execute(
            "INSERT INTO scores (model_name, model_version, as_of, person_id, team_id, risk, team_percentile, "
            "team_rank, list_rank, cohort_rule) SELECT ?, ?, ?, person_id, team_id, risk, team_percentile, "
            "team_rank, list_rank, cohort_rule FROM _scores",
            params,
        )
        con.execute(
            "INSERT INTO explanations SELECT ?, ?, ?, person_id, feature, "
            "CASE WHEN isnan(value) THEN NULL ELSE value END, contribution FROM _expl", params
        )
        con.unregister("_scores")
        con.unregister("_expl")


ADULT_AGE = 18


def coverage(con, spec, model: str, version: str, as_of: date) -> dict:
    """Who the lists can see: registered adults without an opt-out (alive and registered before
    `as_of`) who were scored, as a share of all of them (`scored_share`: 1.0 when nobody is
    missing). Of the scored, those a cohort rule keeps off the model's ranking are counted by rule
    (`not_ranked`: a recent crisis, on the list's other part; under a year registered). Of the
    unscored, `outside_model_ages` is the model's own choice; `unaccounted` (an administrative
    gap) must be 0.
    """
    day = date_literal(as_of)
    rules = (RECENT_CRISIS, SHORT_HISTORY)
    row = one_row(con, f"""
        WITH base AS (
            SELECT p.*, s.person_id IS NOT NULL AS scored, s.cohort_rule, {age_sql(spec, day, 'p')} AS of_age
            FROM persons p
            LEFT JOIN (SELECT person_id, cohort_rule FROM scores  -- one row per person
                       WHERE model_name = ? AND model_version = ? AND as_of = {day}) s USING (person_id)
            WHERE NOT p.opted_out AND (p.registered_on IS NULL OR p.registered_on < {day})
              AND (p.died_on IS NULL OR p.died_on >= {day}) AND year({day}) - p.birth_year >= {ADULT_AGE})
        SELECT count(*), count(*) FILTER (WHERE scored), count(*) FILTER (WHERE scored AND cohort_rule IS NULL),
               {", ".join(f"count(*) FILTER (WHERE scored AND cohort_rule = '{r}')" for r in rules)},
               count(*) FILTER (WHERE NOT scored AND NOT coalesce(of_age, false)),
               count(*) FILTER (WHERE NOT scored AND coalesce(of_age, false)),
               count(*) FILTER (WHERE scored AND team_assigned_by IS NOT NULL),
               count(*) FILTER (WHERE scored AND sex = 'not_known')
        FROM base""", [model, str(version)])
    adults, scored, ranked, *by_rule, by_age, unaccounted, placed, sex_unknown = (int(v) for v in row)
    return {
        "registered_adults": adults, "scored": scored,
        "scored_share": round(scored / adults, 4) if adults else None,
        "ranked": ranked, "not_ranked": dict(zip(rules, by_rule, strict=True)),
        "outside_model_ages": by_age, "unaccounted": unaccounted,
        "scored_without_a_practice_team": placed, "scored_with_sex_not_known": sex_unknown,
    }
