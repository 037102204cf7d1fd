"""What only a synthetic world's simulator knows, matched to the warehouse's people: for grading only.

A synthetic world writes `truth/` beside its extracts (`paths.truth` in wobble.toml): the true
crisis probability at each as-of date (`risk.parquet`) and each person's weekly need and its phase
(`need.parquet`, see `wobble.synth.truth`). Both are keyed by NHS number; the pseudonymisation key
matches them to `person_id`. Nothing here is ever a feature: real data has no truth, and every
caller says so when `available` is False.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl

from wobble.core.config import Config
from wobble.core.sql import dates, literal
from wobble.ingest.identifiers import pseudonymise_many


def truth_file(cfg: Config, name: str) -> Path | None:
    """`<truth>/<name>` when the config names a synthetic world's truth and the file exists."""
    path = cfg.truth / name if cfg.truth else None
    return path if path is not None and path.exists() else None


def _read(path: Path, sql: str) -> pl.DataFrame:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        return con.sql(sql.replace("{file}", f"read_parquet({literal(str(path))})")).pl()
    finally:
        con.close()


def _with_person_id(frame: pl.DataFrame, key: bytes) -> pl.DataFrame:
    nhs = frame["nhs_number"].unique().to_list()
    mapping = pl.DataFrame({"nhs_number": nhs, "person_id": pseudonymise_many(key, nhs)},
                           schema={"nhs_number": pl.String, "person_id": pl.String})
    return frame.join(mapping, on="nhs_number").drop("nhs_number")


def need_phases(cfg: Config, key: bytes | None, as_ofs: list[date]) -> pl.DataFrame | None:
    """(person_id, as_of, phase, excess): each person's phase of need in the week before each as-of
    date (the week a list at that date is graded on) and how far their need stood above their usual;
    None when there is no truth or no key to match it."""
    path = truth_file(cfg, "need.parquet")
    if path is None or key is None:
        return None
    weeks = {d - timedelta(days=7): d for d in as_ofs}
    frame = _read(path, f"""
        SELECT nhs_number, week_start, phase::VARCHAR AS phase, need - baseline AS excess FROM {{file}}
        WHERE week_start IN (SELECT unnest({dates(sorted(weeks))}))""")
    frame = frame.with_columns(pl.col("week_start").replace_strict(weeks, return_dtype=pl.Date).alias("as_of"))
    return _with_person_id(frame.drop("week_start"), key)


def crisis_risk(cfg: Config, key: bytes | None, as_ofs: list[date]) -> pl.DataFrame | None:
    """(person_id, as_of, horizon_days, p_crisis): the simulator's own probability of a crisis within
    its horizon at each as-of date; None when there is no truth or no key to match it."""
    path = truth_file(cfg, "risk.parquet")
    if path is None or key is None:
        return None
    frame = _read(path, f"""SELECT nhs_number, as_of, horizon_days, p_crisis FROM {{file}}
                            WHERE as_of IN (SELECT unnest({dates(sorted(set(as_ofs)))}))""")
    return _with_person_id(frame, key)
