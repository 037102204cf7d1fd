"""Scale-out: the weekly stages split into pieces a Dask cluster's workers compute side by side.

Features are partitioned by person. `export_persons` writes the warehouse's persons, contacts and
tags to Parquet, partitioned by a hash bucket of person_id; `bucket_snapshots` computes one
bucket's snapshots with `features.compute_snapshots` on an in-memory DuckDB holding only that
bucket; `load_snapshots` loads every bucket into `feature_snapshots` in one writer. Figures that need
more than one person (a team's data feed, say) are computed once, centrally, by the feature
library's `shared_tables`, and every bucket reads the same values, so the result is the
single-machine build's, row for row.

Scoring and explaining are partitioned by team: `export_teams` writes each team's scoring rows,
`score_team` scores and explains one team (every figure is within a team) and `load_scores` writes
all teams' scores and explanations in one transaction. Publishing then writes each team's page in
its own task (`write_team_pages`).

Only the export and load steps open the warehouse (it has one read-write process at a time); the
steps between read and write Parquet under `[dask] partitions`, a folder every worker must reach.
Every function takes plain, picklable values, so any of them can run in a Dask worker. Nothing here
imports Dask: the flows choose where each step runs (flows/wobble_tasks.py).
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl

from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.sql import literal
from wobble.core.warehouse import connect, scalar, transaction
from wobble.features import compute_snapshots, load_catalogue, shared_tables
from wobble.features.build import prepare_snapshots
from wobble.features.compile import compile_sql
from wobble.lists.score import ScoreResult, check_capacity_teams, cohort_frame_sql, score_rows, write_scores
from wobble.models.spec import load_spec
from wobble.models.tracking import load_version

SOURCE_TABLES = ("persons", "contacts", "tags")  # what compute_snapshots reads


@dataclass(frozen=True)
class PersonBuckets:
    """The warehouse's source tables in Parquet, bucketed by person: what `bucket_snapshots` reads."""

    folder: Path
    as_ofs: tuple[date, ...]
    buckets: tuple[int, ...]  # the non-empty buckets, each one task
    shared: tuple[str, ...]  # cross-person tables computed centrally, one Parquet file each
    persons: int


def _run_folder(cfg: Config, kind: str, as_of: date) -> Path:
    folder = cfg.partitions_dir / f"{kind}-{as_of.isoformat()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _memory() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return con


def export_persons(cfg: Config, as_ofs: list[date]) -> PersonBuckets:
    """Persons, contacts and tags as Parquet, partitioned by `hash(person_id) % [dask] buckets`.

    Grain: one folder per table and bucket (`contacts/bucket=3/…`), each row exactly once; an
    empty file per table giving its column types; and the cross-person tables, whole.
    """
    if not as_ofs:
        raise WobbleError("give at least one as-of date")
    as_ofs = sorted(set(as_ofs))
    folder = _run_folder(cfg, "features", as_ofs[-1])
    n = cfg.dask.buckets
    shared: list[str] = []
    with connect(cfg.warehouse, read_only=True, wait_seconds=60) as con:
        persons = scalar(con, "SELECT count(*) FROM persons")
        if not persons:
            raise WobbleError("the warehouse has no persons: run `wobble ingest` first")
        for table in SOURCE_TABLES:
            schema = literal(f"{folder / table}.schema.parquet")
            con.execute(f"COPY (SELECT * FROM {table} LIMIT 0) TO {schema} (FORMAT parquet)")
            con.execute(f"COPY (SELECT *, hash(person_id) % {n} AS bucket FROM {table}) "
                        f"TO {literal(str(folder / table))} (FORMAT parquet, PARTITION_BY (bucket))")
        before = _temp_tables(con)
        shared_tables(con, as_ofs)  # cross-person figures (a team's data feed): computed once, here
        for name in sorted(_temp_tables(con) - before):
            con.execute(f"COPY {name} TO {literal(str(folder / name) + '.shared.parquet')} (FORMAT parquet)")
            shared.append(name)
    buckets = sorted(int(p.name.split("=", 1)[1]) for p in (folder / "persons").glob("bucket=*"))
    return PersonBuckets(folder, tuple(as_ofs), tuple(buckets), tuple(shared), int(persons))


def _temp_tables(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}


def bucket_snapshots(cfg: Config, parts: PersonBuckets, bucket: int) -> Path:
    """Feature snapshots for the people of one bucket, written to `snapshots/bucket=<k>.parquet`.

    Grain: one row per (person_id, as_of) for everyone of the bucket in the cohort at that date,
    as `features.compute_snapshots` gives it on an in-memory DuckDB holding only this bucket's
    persons, contacts and tags (and the cross-person tables, the same for every bucket).
    """
    cat = load_catalogue(cfg.features_dir)
    out = parts.folder / "snapshots" / f"bucket={bucket}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    con = _memory()
    try:
        for table in SOURCE_TABLES:
            schema = literal(f"{parts.folder / table}.schema.parquet")
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet({schema})")
            files = sorted((parts.folder / table / f"bucket={bucket}").glob("*.parquet"))
            if files:
                con.execute(f"INSERT INTO {table} SELECT * FROM read_parquet({[str(f) for f in files]}, "
                            "hive_partitioning = false)")
        for name in parts.shared:
            path = parts.folder / f"{name}.shared.parquet"
            con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM read_parquet({literal(str(path))})")
        frame = compute_snapshots(con, cat, list(parts.as_ofs), shared=bool(parts.shared))
        con.register("_frame", frame)
        con.execute(f"COPY _frame TO '{out}' (FORMAT parquet)")
    finally:
        con.close()
    return out


@dataclass
class LoadResult:
    as_ofs: list[date]
    rows: int
    columns: int
    buckets: int
    seconds: float

    def summary(self) -> dict:
        return {"as_ofs": [d.isoformat() for d in self.as_ofs], "rows": self.rows, "features": self.columns,
                "buckets": self.buckets, "seconds": round(self.seconds, 2)}


def load_snapshots(cfg: Config, parts: PersonBuckets, files: list[Path], *, keep: bool = False) -> LoadResult:
    """Every bucket's snapshots into `feature_snapshots`, replacing the rows at those as-of dates.

    Grain: one row per (person_id, as_of), as `features.build_features` writes them, with its
    column types. One writer, one transaction; a person in two buckets, or a bucket missing, is an
    error, not a warning. The partition folder is removed afterwards unless `keep`.
    """
    t0 = time.perf_counter()
    cat = load_catalogue(cfg.features_dir)
    got = sorted(int(Path(f).stem.split("=", 1)[1]) for f in files)
    if got != list(parts.buckets):
        raise WobbleError(f"feature buckets missing: expected {list(parts.buckets)}, got {got}")
    as_ofs = list(parts.as_ofs)
    with connect(cfg.warehouse, wait_seconds=60) as con:
        types = con.execute(f"DESCRIBE ({compile_sql(cat, as_ofs)})").fetchall()
        cols = ", ".join(f'CAST("{name}" AS {typ}) AS "{name}"' for name, typ, *_ in types)
        con.execute(f"CREATE OR REPLACE TEMP TABLE new_snap AS SELECT {cols} "
                    f"FROM read_parquet({[str(f) for f in sorted(files)]}) ORDER BY as_of, person_id")
        rows, distinct = con.execute("SELECT count(*), count(DISTINCT (person_id, as_of)) FROM new_snap").fetchall()[0]
        if rows != distinct:
            raise WobbleError(f"feature buckets overlap: {rows - distinct} (person, as-of) rows came twice")
        with transaction(con):
            replace_snapshots(con, "new_snap", as_ofs)
        con.execute("DROP TABLE new_snap")
    if not keep:
        shutil.rmtree(parts.folder, ignore_errors=True)
    return LoadResult(as_ofs, int(rows), len(cat.features), len(files), time.perf_counter() - t0)


def replace_snapshots(con, new: str, as_ofs: list[date]) -> None:
    """Swap the rows of table `new` in for `feature_snapshots` at `as_ofs`; a changed catalogue rebuilds it."""
    prepare_snapshots(con, f"SELECT * FROM {new}", as_ofs)
    con.execute(f"INSERT INTO feature_snapshots SELECT * FROM {new}")


# --- scoring and explaining, by team -----------------------------------------------------------


@dataclass(frozen=True)
class ScoringModel:
    """An approved model version, loaded once and handed to every team's task."""

    name: str
    version: str
    features: tuple[str, ...]
    booster: object
    calibrator: object


@dataclass(frozen=True)
class TeamRows:
    """Each team's scoring rows in Parquet: what `score_team` reads."""

    folder: Path
    as_of: date
    teams: tuple[str, ...]
    rows: int


def load_model(cfg: Config, model: str, version: str) -> ScoringModel:
    """The version's booster, calibrator and features from MLflow; an error if the catalogue lost one."""
    booster, calibrator, features, _run = load_version(cfg, model, version)
    missing = [f for f in features if f not in load_catalogue(cfg.features_dir).columns]
    if missing:
        raise WobbleError(f"model {model} v{version} uses features no longer in the catalogue: "
                          f"{', '.join(missing)}; retrain it")
    return ScoringModel(model, str(version), tuple(features), booster, calibrator)


def export_teams(cfg: Config, model: ScoringModel, as_of: date) -> TeamRows:
    """The model's scoring rows at `as_of` (its cohort's ages), one Parquet file per team.

    Grain: one row per person of the model's ages at `as_of` (person_id, team_id, cohort_rule, the
    model's features), in `teams/team=<k>.parquet`, k the team's place in sorted order.
    """
    spec = load_spec(cfg.models_dir, model.name)
    folder = _run_folder(cfg, "scores", as_of)
    (folder / "teams").mkdir()
    with connect(cfg.warehouse, read_only=True, wait_seconds=60) as con:
        check_capacity_teams(cfg, con)  # as `score` does, before any team is scored
        con.execute(f"CREATE TEMP TABLE _frame AS {cohort_frame_sql(spec, list(model.features), as_of)}")
        teams = [r[0] for r in con.execute("SELECT DISTINCT team_id FROM _frame ORDER BY team_id").fetchall()]
        rows = scalar(con, "SELECT count(*) FROM _frame")
        if not rows:
            raise WobbleError(f"nobody in the cohort at {as_of}")
        for k, team in enumerate(teams):
            con.execute(f"COPY (SELECT * FROM _frame WHERE team_id = ? ORDER BY person_id) "
                        f"TO {literal(str(folder / 'teams' / f'team={k}.parquet'))} (FORMAT parquet)", [team])
    return TeamRows(folder, as_of, tuple(teams), int(rows))


def score_team(cfg: Config, parts: TeamRows, team: str, model: ScoringModel) -> Path:
    """Score one team and explain its listed people, as `score.score` does for everyone.

    Grain: `scores.parquet`, one row per person of the team; `explanations.parquet`, one row per
    listed person and feature; both under `scored/team=<k>/`.
    """
    k = parts.teams.index(team)
    frame = pl.read_parquet(parts.folder / "teams" / f"team={k}.parquet").sort("person_id")
    scores, expl = score_rows(cfg, load_spec(cfg.models_dir, model.name), load_catalogue(cfg.features_dir), frame,
                              list(model.features), model.booster, model.calibrator)
    out = parts.folder / "scored" / f"team={k}"
    out.mkdir(parents=True, exist_ok=True)
    scores.write_parquet(out / "scores.parquet")
    expl.write_parquet(out / "explanations.parquet")
    return out


def load_scores(cfg: Config, parts: TeamRows, model: ScoringModel, folders: list[Path], *,
                keep: bool = False) -> ScoreResult:
    """Every team's scores and explanations into the warehouse in one transaction: a ScoreResult.

    Grain: `scores` one row per (model version, as_of, person); `explanations` one row per listed
    person and feature. A team missing, or a person lost or doubled on the way, is an error.
    """
    t0 = time.perf_counter()
    if len(folders) != len(parts.teams):
        raise WobbleError(f"scores missing: {len(folders)} of {len(parts.teams)} teams came back")
    scores = pl.concat([pl.read_parquet(Path(f) / "scores.parquet") for f in folders]).sort("person_id")
    expl = pl.concat([pl.read_parquet(Path(f) / "explanations.parquet") for f in folders])
    if scores.height != parts.rows or scores["person_id"].n_unique() != parts.rows:
        raise WobbleError(f"scored {scores.height} rows for {parts.rows} people: a team was lost or doubled")
    with connect(cfg.warehouse, wait_seconds=60) as con:
        write_scores(con, model.name, model.version, parts.as_of, scores, expl)
    if not keep:
        shutil.rmtree(parts.folder, ignore_errors=True)
    return ScoreResult(model.name, model.version, parts.as_of, scores.height,
                       expl.height // max(1, len(model.features)), time.perf_counter() - t0)
