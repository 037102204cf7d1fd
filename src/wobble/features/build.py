"""Building snapshots: the compiled query run in passes over groups of people, into the warehouse.

Reads `persons`, `contacts` and `tags`; writes `feature_snapshots`, one row per (person_id, as_of)
for everyone in the cohort at that date (registered, alive, not opted out), replacing any earlier
rows at those dates in one transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.sql import dates, literal
from wobble.core.warehouse import connect, scalar, table_exists, transaction
from wobble.features.catalogue import Catalogue, load_catalogue
from wobble.features.compile import (
    FIRST_ANY_SQL,
    _columns_read,
    _vocab,
    cohort_sql,
    compile_sql,
    compile_steps,
    first_late_sql,
    window_sql,
)
from wobble.features.feeds import team_quiet_sql


@dataclass
class FeaturesResult:
    as_ofs: list[date]
    rows: int
    columns: int
    seconds: float
    batches: int = 1
    # where the seconds went: `shared` tables, `read` (records into the passes' windows; inside the
    # blocks when one pass reads them itself), each block of the query by its name, `final` (the
    # select over the blocks) and `write` (inserting the rows and the commit)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict:
        return {"as_ofs": [d.isoformat() for d in self.as_ofs], "rows": self.rows,
                "features": self.columns, "batches": self.batches, "seconds": round(self.seconds, 2),
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


def compute_snapshots(con, cat: Catalogue, as_ofs: list[date], *, shared: bool = False) -> pl.DataFrame:
    """The snapshot rows for `as_ofs` as a DataFrame, without writing anything.

    `shared`: the tables of `shared_tables` are already on `con`, computed over everyone (as for
    one bucket of people on a Dask worker: wobble.ops.scale)."""
    sql = compile_sql(cat, sorted(set(as_ofs)), source_systems(con), shared=shared)
    return con.sql(sql + " ORDER BY as_of, person_id").pl()


def source_systems(con) -> tuple[str, ...]:
    """Every `source_system` in the warehouse, sorted: the vocabulary of its bit masks."""
    rows = con.execute("SELECT DISTINCT source_system FROM contacts UNION "
                       "SELECT DISTINCT source_system FROM tags ORDER BY 1").fetchall()
    return tuple(r[0] for r in rows)


def shared_tables(con, as_ofs: list[date]) -> None:
    """Temp tables every group of people reads: `first_any` (one row per person), `first_late`
    (a few people and dates) and `team_feed` (one row per team and as-of date), computed once
    per run."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE first_any AS {FIRST_ANY_SQL}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE first_late AS {first_late_sql(dates(as_ofs))}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE team_feed AS {team_quiet_sql(dates(as_ofs))}")


def window_tables(con, cat: Catalogue, as_ofs: list[date], systems: tuple[str, ...], groups: int) -> None:
    """Temp tables for a run in passes, read once: `person_keys` gives each person a whole-number
    key (`person_id`) beside their pseudonym (`_person_id`), and `contacts_window` and
    `tags_window` hold everyone's records that may count at some date of the run (`window_sql`)
    by that key, with vocabulary columns as ENUMs, in the order of the groups of `_passes`.

    Each pass then reads its own people's stretch rather than every record again, and groups
    and joins on a whole number rather than a string; the records take about a third of the
    memory they would as strings."""
    con.execute("CREATE OR REPLACE TEMP TABLE person_keys AS SELECT person_id AS _person_id, "
                f"(row_number() OVER ())::INTEGER AS person_id, hash(person_id) % {groups} AS _group "
                "FROM persons")
    for source in ("contacts", "tags"):
        columns = _columns_read(cat, source)
        enums = ", ".join(f"w.{c}::ENUM({', '.join(literal(x) for x in v)}) AS {c}"
                          for c, v in _vocab(columns, systems).items())
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {source}_window AS
            SELECT w.* REPLACE (k.person_id AS person_id, {enums})
            FROM ({window_sql(source, dates(sorted(as_ofs)), cat.lookback_days, columns)}) w
            JOIN person_keys k ON k._person_id = w.person_id
            ORDER BY k._group""")


def build_features(cfg: Config, as_ofs: list[date], *, wait_seconds: float = 0.0,
                   people: str | None = None) -> FeaturesResult:
    """Compute snapshots for `as_ofs` and replace any earlier snapshots at those dates.

    `people`, SQL over `person_id`, keeps only the people it is true of: the snapshots at those
    dates are then of them alone (training builds its test dates for its test people only).

    In passes of about BATCH_ROWS snapshot rows (see `_passes`), each over every date for a group
    of people chosen by a hash of `person_id`, so that weekly dates slide (see `_slide_sql`) and
    memory stays bounded at any size. Each pass runs its blocks one at a time (`_run_pass`).
    DuckDB may use up to the warehouse's MEMORY_LIMIT and spills to disk beyond it.
    """
    if not as_ofs:
        raise WobbleError("give at least one as-of date")
    t0 = time.perf_counter()
    cat = load_catalogue(cfg.features_dir)
    as_ofs = sorted(set(as_ofs))
    with connect(cfg.warehouse, wait_seconds=wait_seconds) as con:
        if not scalar(con, "SELECT count(*) FROM persons"):
            raise WobbleError("the warehouse has no persons: run `wobble ingest` first")
        con.execute("SET preserve_insertion_order = false")  # rows are keyed; order is not needed
        n_people = scalar(con, f"SELECT count(*) FROM persons WHERE NOT opted_out AND ({people or 'true'})") or 1
        systems = source_systems(con)
        passes = _passes(n_people, len(as_ofs))
        windowed = len(passes) > 1
        # The passes are computed on a second connection, outside the transaction that replaces
        # the snapshots: a temp table dropped inside a transaction is kept until it ends, and a
        # dozen passes' worth of them filled memory and spilled gigabytes to disk.
        work = con.cursor()
        timings = dict.fromkeys(("shared", "read", "write"), 0.0)
        try:
            t = time.perf_counter()
            shared_tables(work, as_ofs)
            timings["shared"] = time.perf_counter() - t
            if windowed:
                t = time.perf_counter()
                window_tables(work, cat, as_ofs, systems, len(passes))
                timings["read"] = time.perf_counter() - t
            with transaction(con):
                prepare_snapshots(con, compile_sql(cat, as_ofs, systems), as_ofs)
                for group in passes:
                    _run_pass(work, con, compile_steps(cat, as_ofs, systems, shared=True, group=group,
                                                       people=people, windowed=windowed), timings)
                t = time.perf_counter()
            timings["write"] += time.perf_counter() - t  # the commit
            rows = scalar(con, f"SELECT count(*) FROM feature_snapshots "
                               f"WHERE as_of IN (SELECT unnest({dates(as_ofs)}))")
        finally:
            work.close()
    return FeaturesResult(as_ofs, int(rows), len(cat.features), time.perf_counter() - t0, len(passes), timings)


BATCH_ROWS = 1_600_000  # cohort rows (people × as-of dates) aggregated at once: bounds memory
# (1,000,000 people at one date, or 100,000 at 13 weekly dates, peak near the 4 GB limit). At
# 1,000,000 people × 13 dates, 8 passes ran faster than 11 (1.2 million rows) or 6 or 7 (spilling).


def _passes(people: int, n_dates: int) -> list[tuple[int, int] | None]:
    """The group of people (k, of n groups by hash) of each pass, each pass taking every date:
    as few groups as keep people × dates near BATCH_ROWS; None when one pass holds everyone.

    Splitting people rather than dates keeps weekly dates together, where counts over long
    windows slide from date to date instead of being counted again for each one."""
    groups = -(-people * n_dates // BATCH_ROWS)  # ceiling
    return [None] if groups <= 1 else [(k, groups) for k in range(groups)]


def _run_pass(work, con, steps: tuple[list[tuple[str, str, str]], str], timings: dict[str, float]) -> None:
    """Insert one pass's rows into `feature_snapshots` on `con`, computed on `work` (another
    connection to the same warehouse): each block of `compile_steps` first made a temp table of
    its own (named as its CTE, so it shadows a table of the warehouse for the queries after it,
    as the CTE did), then the final select over them, fetched whole as Arrow and inserted.

    One statement for the whole query plans its dozen joins on guessed sizes and, at 100,000
    people × 13 dates, ran out of memory at 4 GB; block by block DuckDB knows each table's size,
    and only one block's working memory is live at a time. The final rows are fetched whole
    (about 700 bytes a row) rather than streamed: a stream is computed and inserted on one
    thread, and took a third longer. Adds the seconds of each block, the final select and the
    insert (`write`) to `timings`."""
    blocks, final = steps
    for name, _, body in blocks:
        t = time.perf_counter()
        work.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {body}")
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t
    t = time.perf_counter()
    rows = work.sql(final).to_arrow_table()
    timings["final"] = timings.get("final", 0.0) + time.perf_counter() - t
    for name, _, _ in blocks:
        work.execute(f"DROP TABLE temp.{name}")
    # not `register`: a view dropped inside a transaction, and the Arrow table it holds, are
    # kept until the transaction ends (a gigabyte a pass at 1,000,000 people × 13 dates)
    t = time.perf_counter()
    con.from_arrow(rows).insert_into("feature_snapshots")
    timings["write"] += time.perf_counter() - t


def prepare_snapshots(con, sql: str, as_ofs: list[date]) -> None:
    """Make `feature_snapshots` ready for the rows of query `sql` at `as_ofs`: created with the
    query's columns (rebuilt if the catalogue changed them), without earlier rows at those dates."""
    rel = con.sql(sql)
    new = list(zip(rel.columns, [str(t) for t in rel.types], strict=True))
    exists = scalar(con, "SELECT count(*) FROM information_schema.tables "
                         "WHERE table_name = 'feature_snapshots' AND table_type = 'BASE TABLE'")
    if exists:
        old = [(r[0], r[1]) for r in con.execute("DESCRIBE feature_snapshots").fetchall()]
        if old == new:
            con.execute(f"DELETE FROM feature_snapshots WHERE as_of IN (SELECT unnest({dates(as_ofs)}))")
            return
        con.execute("DROP TABLE feature_snapshots")
    cols = ", ".join(f"{name} {typ}" for name, typ in new)
    con.execute(f"CREATE TABLE feature_snapshots ({cols})")


def dates_to_build(con, as_ofs: list[date]) -> list[date]:
    """Those of `as_ofs` whose snapshots are missing or are not of the whole cohort (training
    builds its test dates for its held-out people only), so a list or a monitor built on them
    would silently leave people out."""
    as_ofs = sorted(set(as_ofs))
    if not as_ofs or not table_exists(con, "feature_snapshots"):
        return as_ofs
    dl = dates(as_ofs)
    complete = {r[0] for r in con.execute(f"""
        SELECT k.as_of
        FROM (SELECT as_of, count(*) AS n FROM ({cohort_sql(dl)}) GROUP BY as_of) k
        JOIN (SELECT as_of, count(*) AS n FROM feature_snapshots WHERE as_of IN (SELECT unnest({dl}))
              GROUP BY as_of) s USING (as_of)
        WHERE s.n = k.n""").fetchall()}
    return [d for d in as_ofs if d not in complete]


def dates_without_rows(con, as_ofs: list[date]) -> list[date]:
    """Those of `as_ofs` with no snapshots at all. Training builds its training dates for the
    people its fits read (a sample, at scale); a reader content with a sample of people at a
    date, as drift's reference is, builds only the dates that have none."""
    as_ofs = sorted(set(as_ofs))
    if not as_ofs or not table_exists(con, "feature_snapshots"):
        return as_ofs
    present = {r[0] for r in con.execute(f"SELECT DISTINCT as_of FROM feature_snapshots "
                                         f"WHERE as_of IN (SELECT unnest({dates(as_ofs)}))").fetchall()}
    return [d for d in as_ofs if d not in present]

