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
from wobble.core.sql import date_literal, dates, literal
from wobble.ingest.identifiers import install_sql_pseudonym


def truth_file(cfg: Config, name: str) -> Path | None:
    """`<truth>/<name>` when the config names a synthetic world's truth and the file exists; None
    without a truth (real data), or when the world's truth lacks that file (an older world). A
    `paths.truth` naming no folder is refused (`Config.check_truth`)."""
    if not cfg.truth:
        return None
    cfg.check_truth()
    path = cfg.truth / name
    return path if path.exists() else None


def _read(path: Path, key: bytes, sql: str, people: pl.Series | None) -> pl.DataFrame:
    """`sql` over the truth file `{file}`, its `nhs_number` replaced by `person_id`; only the rows of
    `people` (person_ids) when given, so a grading of 50,000 people does not hold a million's truth.
    `sql` may read `{people}`, the wanted people's `nhs_number`s, to leave the others out before
    any window over a person's weeks."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    try:
        # each number hashed once, in DuckDB: in Python, 5,000,000 of them took 22 s
        install_sql_pseudonym(con, key)
        source = f"read_parquet({literal(str(path))})"
        wanted = ""
        if people is not None:
            con.register("_wanted", pl.DataFrame({"person_id": people.unique()}, schema={"person_id": pl.String}))
            wanted = "WHERE person_id IN (SELECT person_id FROM _wanted)"
        con.execute(f"""CREATE TEMP TABLE _people AS
                        SELECT * FROM (SELECT nhs_number, wobble_pseudonym(nhs_number) AS person_id
                                       FROM (SELECT DISTINCT nhs_number FROM {source})) {wanted}""")
        return con.sql(f"""
            SELECT p.person_id, t.* EXCLUDE (nhs_number)
            FROM ({sql.replace("{file}", source).replace("{people}", "(SELECT nhs_number FROM _people)")}) t
            JOIN _people p USING (nhs_number)""").pl()
    finally:
        con.close()


def need_phases(cfg: Config, key: bytes | None, as_ofs: list[date],
                people: pl.Series | None = None, *, since: bool = False) -> pl.DataFrame | None:
    """(person_id, as_of, phase, excess): each person's phase of need in the week before each as-of
    date (the week a list at that date is graded on) and how far their need stood above their
    usual; of `people` only when given; None when there is no truth or no key to match it.

    With `since`, also `rising_since`: for people rising, the first as-of date of this rise (graded
    on its first rising week; a week after the world's first when they were rising from its start).
    It reads every earlier week of the people: give `people`, not the whole population."""
    path = truth_file(cfg, "need.parquet")
    if path is None or key is None:
        return None
    weeks = {d - timedelta(days=7): d for d in as_ofs}
    columns = ["person_id", "as_of", "phase", "excess"]
    if not since:
        frame = _read(path, key, f"""
            SELECT nhs_number, week_start, phase::VARCHAR AS phase, need - baseline AS excess FROM {{file}}
            WHERE week_start IN (SELECT unnest({dates(sorted(weeks))}))""", people)
    else:
        # a rise began the week after the person's last week not rising (or with their first week);
        # its first as-of date is the week after that
        frame = _read(path, key, f"""
            SELECT nhs_number, week_start, phase, excess,
                   CASE WHEN phase = 'rising' THEN coalesce(last_not + 14, first_week + 7) END AS rising_since
            FROM (
                SELECT nhs_number, week_start, phase::VARCHAR AS phase, need - baseline AS excess,
                       max(CASE WHEN phase <> 'rising' THEN week_start END) OVER w AS last_not,
                       min(week_start) OVER w AS first_week
                FROM {{file}}
                WHERE week_start <= {date_literal(max(weeks))}
                  {"AND nhs_number IN {people}" if people is not None else ""}
                WINDOW w AS (PARTITION BY nhs_number ORDER BY week_start ROWS UNBOUNDED PRECEDING))
            WHERE week_start IN (SELECT unnest({dates(sorted(weeks))}))""", people)
        frame = frame.with_columns(pl.col("rising_since").cast(pl.Date))
        columns.append("rising_since")
    return (frame.with_columns(pl.col("week_start").replace_strict(weeks, return_dtype=pl.Date).alias("as_of"))
            .select(columns))


def crisis_risk(cfg: Config, key: bytes | None, as_ofs: list[date],
                people: pl.Series | None = None) -> pl.DataFrame | None:
    """(person_id, as_of, horizon_days, p_crisis): the simulator's own probability of a crisis within
    its horizon at each as-of date; of `people` only when given; None when there is no truth or no
    key to match it."""
    path = truth_file(cfg, "risk.parquet")
    if path is None or key is None:
        return None
    return _read(path, key, f"""SELECT nhs_number, as_of, horizon_days, p_crisis FROM {{file}}
                                WHERE as_of IN (SELECT unnest({dates(sorted(set(as_ofs)))}))""", people)
