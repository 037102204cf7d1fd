"""The state of one ingest run: its warehouse connection, lookups and the pseudonyms made so far."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import duckdb

from wobble.core.config import Config
from wobble.core.errors import WobbleError, first_line
from wobble.core.sql import literal
from wobble.ingest.identifiers import (
    install_sql_pseudonym,
    nhs_valid_sql,
)
from wobble.ingest.optout import read_opt_out_list

LONDON = ZoneInfo("Europe/London")


def run_clock(cfg: Config, now: datetime | None = None) -> datetime:
    """The run's clock as London wall-clock time: `now` (from `--now`), else `[ingest] now`, else
    the wall clock. With a fixed clock, ingest is a pure function of its files and that clock."""
    fixed = now or cfg.ingest.now
    if fixed is None:
        return datetime.now(LONDON).replace(tzinfo=None, microsecond=0)
    return fixed.astimezone(LONDON).replace(tzinfo=None) if fixed.tzinfo else fixed


class RunState:
    """One ingest run over one warehouse connection, at one clock (`now`, London wall-clock)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, cfg: Config, key: bytes, now: datetime | None = None):
        self.con, self.cfg = con, cfg
        self.now = run_clock(cfg, now)
        con.execute(f"SET memory_limit = {literal(cfg.ingest.memory_limit)}")
        if cfg.ingest.threads:
            con.execute(f"SET threads = {int(cfg.ingest.threads)}")
        install_sql_pseudonym(con, key)
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
                    f"CREATE TEMP TABLE lookup_{name} AS SELECT DISTINCT ON (k) k AS {cols[0]}, "
                    f"trim(column1) AS {cols[1]} FROM (SELECT {key_expr} AS k, column1 FROM read_csv(?, "
                    "header = true, auto_detect = false, columns = {'column0': 'VARCHAR', "
                    "'column1': 'VARCHAR'}, null_padding = true)) WHERE k <> ''",
                    [str(full)],
                )
            except duckdb.Error as exc:
                raise WobbleError(f"lookups.{name}: cannot read {full} ({first_line(exc)})") from None

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

