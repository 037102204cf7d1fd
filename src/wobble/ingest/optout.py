"""The national data opt-out: people on the opt-out list are flagged and their activity removed.

The list (a CSV of NHS numbers, `[lookups] opt_outs`) is read on every run; registered people on it
keep only their pseudonym, team, practice and the flag, and their contacts and tags are deleted,
with one `audit_log` row saying how many.
"""

from __future__ import annotations

import duckdb

from wobble.core.errors import WobbleError, first_line
from wobble.core.sql import identifier
from wobble.core.warehouse import scalar, transaction
from wobble.ingest.identifiers import (
    nhs_normalised_sql,
    nhs_valid_sql,
)

# Opted-out people keep only their pseudonym, team, practice and the flag.
OPTED_OUT_BLANKS = ("birth_year = NULL, sex = NULL, ethnicity_group = NULL, imd_decile = NULL, "
                     "died_on = NULL, registered_on = NULL")



def read_opt_out_list(state) -> bool:
    """Read `[lookups] opt_outs` into temp table `opt_out_ids` (their pseudonyms); whether there is a list."""
    path = state.cfg.lookups.opt_outs
    state.con.execute("CREATE OR REPLACE TEMP TABLE opt_out_ids (person_id VARCHAR)")
    state.opt_out_counts: dict[str, int] = {}
    if not path:
        return False
    full = state.cfg.path(path)
    if not full.exists():
        raise WobbleError(f"lookups.opt_outs: no file at {full}")
    try:
        cols = [r[0] for r in state.con.execute(
            "DESCRIBE SELECT * FROM read_csv(?, header = true, all_varchar = true)", [str(full)]
        ).fetchall()]
        col = "nhs_number" if "nhs_number" in cols else cols[0]
        state.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE opt_out_raw AS
            SELECT {nhs_normalised_sql(identifier(col))} AS nhs FROM read_csv(?, header = true, all_varchar = true)
            WHERE nullif(trim({identifier(col)}), '') IS NOT NULL""",
            [str(full)],
        )
    except duckdb.Error as exc:
        raise WobbleError(f"lookups.opt_outs: cannot read {full} ({first_line(exc)})") from None
    state.pseudonymise_into_cache("opt_out_raw", "nhs")
    state.con.execute("""
        INSERT INTO opt_out_ids SELECT DISTINCT c.person_id FROM opt_out_raw o
        JOIN nhs_cache c USING (nhs)""")
    entries = scalar(state.con, "SELECT count(*) FROM opt_out_raw")
    valid = scalar(state.con, "SELECT count(*) FROM opt_out_ids")
    invalid = scalar(state.con, f"SELECT count(*) FROM opt_out_raw WHERE NOT {nhs_valid_sql('nhs')}")
    state.con.execute("DROP TABLE opt_out_raw")
    state.opt_out_counts = {"entries": int(entries), "people": int(valid), "invalid": int(invalid)}
    return True

def apply_opt_out_list(state) -> dict[str, int]:
    """Flag everyone on the opt-out list who is registered, and remove their activity."""
    if not state.opt_outs:
        return {}
    with transaction(state.con):
        state.con.execute("""
            CREATE OR REPLACE TEMP TABLE newly_out AS
            SELECT person_id FROM persons WHERE NOT opted_out
              AND person_id IN (SELECT person_id FROM opt_out_ids)""")
        flagged = scalar(state.con, "SELECT count(*) FROM newly_out")
        withdrawn = withdraw(state, "newly_out", "opt-out list") if flagged else 0
        if flagged:
            state.con.execute(f"""
                UPDATE persons SET {OPTED_OUT_BLANKS}, opted_out = true
                WHERE person_id IN (SELECT person_id FROM newly_out)""")
    registered = scalar(state.con, """SELECT count(*) FROM persons
                                     WHERE person_id IN (SELECT person_id FROM opt_out_ids)""")
    return {**state.opt_out_counts, "registered": int(registered), "persons_flagged": int(flagged),
            "rows_withdrawn": int(withdrawn)}

def withdraw(state, people: str, why: str) -> int:
    """Delete the contacts and tags of the people in temp table `people` (inside the caller's
    transaction); one audit_log row says how many. Returns the number of rows removed."""
    removed = 0
    for table in ("contacts", "tags"):
        n = scalar(state.con, f"SELECT count(*) FROM {table} WHERE person_id IN (SELECT person_id FROM {people})")
        if n:
            state.con.execute(f"DELETE FROM {table} WHERE person_id IN (SELECT person_id FROM {people})")
        removed += int(n)
    if removed:
        people_n = scalar(state.con, f"SELECT count(*) FROM {people}")
        state.con.execute(
            "INSERT INTO audit_log VALUES (?, 'wobble ingest', NULL, NULL, 'opt_out_applied', ?)",
            [state.now, f"{why}: removed {removed} contacts and tags of {people_n} people who opted out"],
        )
    return removed

