"""The state of one ingest run: its warehouse connection, lookups and the pseudonyms made so far."""

from __future__ import annotations

from datetime import datetime

import duckdb

from wobble.core.clock import LONDON
from wobble.core.config import Config
from wobble.core.errors import ConfigError, WobbleError, first_line
from wobble.core.render import plural
from wobble.core.sql import literal
from wobble.core.warehouse import one_row, scalar, transaction
from wobble.ingest.identifiers import (
    NHS_LIKE_SQL,
    install_sql_pseudonym,
    nhs_valid_sql,
    pseudonymise,
    record_id_sql,
    without_numbers_sql,
)
from wobble.ingest.optout import read_opt_out_list


def run_clock(cfg: Config, now: datetime | None = None) -> datetime:
    """The run's clock as London wall-clock time: `now` (from `--now`), else `[ingest] now`, else
    the wall clock. With a fixed clock, ingest is a pure function of its files and that clock."""
    fixed = now or cfg.ingest.now
    if fixed is None:
        return datetime.now(LONDON).replace(tzinfo=None, microsecond=0)
    return fixed.astimezone(LONDON).replace(tzinfo=None) if fixed.tzinfo else fixed


KEY_MARK = "wobble: the pseudonym key of this warehouse"  # what the key's mark is the pseudonym of


def check_key(con: duckdb.DuckDBPyConnection, key: bytes, now: datetime, var: str) -> None:
    """Refuse a pseudonym key other than the one the warehouse was built with. Under another key
    every person's pseudonym changes, so a run would add everyone again as new people and attach
    the week's records to them. The warehouse keeps the key's mark (the pseudonym of a fixed text:
    it does not reveal the key); a warehouse from before marks were kept takes the key it is given."""
    mark = pseudonymise(key, KEY_MARK)
    kept = one_row(con, "SELECT mark FROM pseudonym_key_mark LIMIT 1")
    if kept is None:
        con.execute("INSERT INTO pseudonym_key_mark VALUES (?, ?)", [mark, now])
    elif kept[0] != mark:
        raise ConfigError("this warehouse was built with another pseudonym key: under this one everyone would be "
                          f"added again as new people. Set {var} to the key it was built with, or load into a "
                          "new warehouse")


# What a warehouse holds that an earlier version kept under a rule since made stricter, applied
# once (it needs the key, so at ingest): record ids and quarantined text holding an NHS number that
# letters or '_' touch ('9434765919_20261101'), which the word-boundary rule let through.
NUMBERS_TOUCHED = "NHS numbers touched by letters or '_' (record ids, quarantined text)"


def apply_held_rules(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Apply `NUMBERS_TOUCHED` to what the warehouse holds, once: such a record id becomes the
    pseudonym a load now gives it (so the record's next version still replaces it), and the number
    leaves the quarantine's kept text and the unmapped codes. Needs `wobble_pseudonym`."""
    if scalar(con, "SELECT count(*) FROM applied_rules WHERE rule = ?", [NUMBERS_TOUCHED]):
        return
    with transaction(con):
        for table, col in (("contacts", "contact_id"), ("tags", "tag_id")):
            con.execute(f"UPDATE {table} SET {col} = {record_id_sql(col)} "
                        f"WHERE NOT starts_with({col}, 'pseudonym:') AND regexp_matches({col}, '{NHS_LIKE_SQL}')")
        # (a duplicate's detail names a batch by its hash, whose hex digits are no number)
        con.execute(f"UPDATE quarantine SET raw = {without_numbers_sql('raw')}, detail = CASE WHEN reason = "
                    f"'duplicate' THEN detail ELSE {without_numbers_sql('detail')} END")
        con.execute(f"UPDATE ingest_unmapped SET code = {without_numbers_sql('code')}")
        con.execute("INSERT INTO applied_rules VALUES (?, ?)", [NUMBERS_TOUCHED, now])


class RunState:
    """One ingest run over one warehouse connection, at one clock (`now`, London wall-clock)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: Config, key: bytes, now: datetime | None = None):
        self.con, self.cfg = con, cfg
        self.now = run_clock(cfg, now)
        con.execute(f"SET memory_limit = {literal(cfg.ingest.memory_limit)}")
        if cfg.ingest.threads:
            con.execute(f"SET threads = {int(cfg.ingest.threads)}")
        install_sql_pseudonym(con, key)
        check_key(con, key, self.now, cfg.wobble.pseudonym_key_env)
        apply_held_rules(con, self.now)
        # NHS number (normalised) → pseudonym, for every number pseudonymised in this run.
        con.execute("CREATE OR REPLACE TEMP TABLE nhs_cache (nhs VARCHAR, person_id VARCHAR)")
        self._load_lookups()
        self.opt_outs = read_opt_out_list(self)

    # -- lookups ------------------------------------------------------------------------------

    def _load_lookups(self) -> None:
        lk = self.cfg.lookups
        specs = (("lsoa_imd", ("lsoa", "imd_decile")), ("practice_team", ("practice", "team_id")),
                 ("postcode_lsoa", ("postcode", "lsoa")), ("lsoa_team", ("lsoa", "team_id")))
        for name, cols in specs:
            path = getattr(lk, name)
            self.con.execute(f"DROP TABLE IF EXISTS lookup_{name}")
            if not path:
                continue
            full = self.cfg.path(path)
            if not full.exists():
                raise WobbleError(f"lookups.{name}: no file at {full}")
            key_expr = "upper(replace(column0, ' ', ''))" if name == "postcode_lsoa" else "trim(column0)"
            try:
                self.con.execute(
                    f"CREATE OR REPLACE TEMP TABLE lookup_rows AS SELECT k, nullif(trim(column1), '') AS v "
                    f"FROM (SELECT {key_expr} AS k, column1 FROM read_csv(?, header = true, auto_detect = false, "
                    "columns = {'column0': 'VARCHAR', 'column1': 'VARCHAR'}, null_padding = true)) WHERE k <> ''",
                    [str(full)],
                )
            except duckdb.Error as exc:
                raise WobbleError(f"lookups.{name}: cannot read {full} ({first_line(exc)})") from None
            self._refuse_clashes(name, cols, full)
            self.con.execute(f"CREATE TEMP TABLE lookup_{name} AS SELECT DISTINCT ON (k) k AS {cols[0]}, "
                             f"v AS {cols[1]} FROM lookup_rows ORDER BY k, v NULLS LAST")
        self.con.execute("DROP TABLE IF EXISTS lookup_rows")

    def _refuse_clashes(self, name: str, cols: tuple[str, str], full) -> None:
        """A key the lookup gives two values (a practice in two teams): which one is right is not
        wobble's to guess, and whichever came first would decide for everyone with that key."""
        clash = one_row(self.con, """
            SELECT k, list(DISTINCT v ORDER BY v), count(*) OVER () FROM lookup_rows
            GROUP BY k HAVING count(DISTINCT v) > 1 ORDER BY k LIMIT 1""")
        if clash:
            key, values, n = clash
            raise ConfigError(f"lookups.{name}: {full} gives {plural(n, cols[0], cols[0] + 's')} more than one "
                              f"{cols[1]} (the first: {key!r} → {', '.join(map(repr, values))}); each must have one")

    # -- pseudonyms ----------------------------------------------------------------------------

    def pseudonymise_into_cache(self, table: str, column: str) -> None:
        """Add a pseudonym to the run's cache for each valid NHS number in `table.column` not yet
        there: each distinct number is hashed once per run."""
        self.con.execute(f"""
            INSERT INTO nhs_cache
            SELECT nhs, wobble_pseudonym(nhs) FROM (
                SELECT DISTINCT {column} AS nhs FROM {table}
                WHERE {column} IS NOT NULL AND {nhs_valid_sql(column)}
                  AND {column} NOT IN (SELECT nhs FROM nhs_cache))""")

