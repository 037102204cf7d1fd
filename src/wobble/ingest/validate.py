"""Validation: every row of a file either passes or gets the first reason it fails, in two passes.

The first pass collects the distinct identifiers and codes, so each NHS number (and staff code) is
pseudonymised once, in SQL, and unmapped codes are counted. The second pass parses and validates
every row into one compact staging table (`staged`) whose row order follows the file's lines;
failing rows keep a masked copy of the row for the quarantine.
"""

from __future__ import annotations

import re

from wobble.core.sql import literal
from wobble.core.warehouse import one_row, scalar
from wobble.ingest.identifiers import (
    NHS_LIKE,
    NUMBER_REMOVED,
    nhs_invalid_detail_sql,
    nhs_normalised_sql,
    nhs_valid_sql,
    without_numbers_sql,
)
from wobble.ingest.reader import Input, code_index_sql, detail_value_sql, masked_raw_sql
from wobble.ingest.state import RunState

# ---------------------------------------------------------------------------------------------
# First pass: identifiers and codes
# ---------------------------------------------------------------------------------------------


def first_pass(run: RunState, inp: Input, coded: list[str], staff_system: str | None) -> dict[str, dict[str, int]]:
    """Build `ids` (each distinct person identifier → idx, person_id, status) and, for contacts,
    `staff` (each distinct staff code → idx, pseudonym); return unmapped codes with row counts."""
    con = run.con
    staff = staff_system is not None
    keys = id_keys(inp)
    groups = ["(" + ", ".join(keys) + ")"] + (["(professional)"] if staff else []) + [f"({c})" for c in coded]
    cols = list(dict.fromkeys(keys + (["professional"] if staff else []) + coded))
    sel = ", ".join(f"{c}::VARCHAR AS {c}" for c in cols)
    gid = ", ".join(cols)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE codes AS
        SELECT {gid}, grouping({gid}) AS g, count(*) AS n
        FROM (SELECT {sel} FROM {inp.first_pass})
        GROUP BY GROUPING SETS ({', '.join(groups)})""")
    # grouping() sets bit k for column k (from the left) when it is NOT in the grouping set.
    width = len(cols)

    def mask_for(included: list[str]) -> int:
        return sum(1 << (width - 1 - i) for i, c in enumerate(cols) if c not in included)

    _build_ids(run, inp, keys, f"(SELECT * FROM codes WHERE g = {mask_for(keys)})")
    if staff:
        prefix = literal(f"staff:{staff_system}:")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE staff AS
            SELECT professional AS raw, row_number() OVER ()::INTEGER AS idx,
                   wobble_pseudonym({prefix} || professional) AS pseudonym
            FROM codes WHERE g = {mask_for(['professional'])} AND professional IS NOT NULL""")
    unmapped: dict[str, dict[str, int]] = {}
    for c in coded:
        # the same lookup the second pass makes (0 for a blank): what it leaves NULL is unmapped
        where = f"g = {mask_for([c])} AND {c} IS NOT NULL AND {code_index_sql(c, inp, c, '0')} IS NULL"
        values, rows_n, once = one_row(con, f"SELECT count(*), sum(n), count(*) FILTER (WHERE n = 1) "
                                            f"FROM codes WHERE {where}")
        if (values > MAX_UNMAPPED_SHOWN or (values > SCATTERED_FROM and 2 * once > values)
                or (values >= PERSONAL_FROM and 2 * _one_person_values(con, inp, c, where) > values)):
            # not a code list: a wrong column (names, free text)
            unmapped[c] = {too_many_values(values): int(rows_n)}
            inp.hidden.add(c)
        elif values:
            rows = con.execute(f"SELECT {c}, n FROM codes WHERE {where} ORDER BY n DESC").fetchall()
            unmapped[c] = {safe_code(code): int(n) for code, n in rows}
    return unmapped


# More different unmapped values than this in one field of one file are not a code list but a
# wrong column, perhaps of names or free text: none is kept or shown, only how many there were.
MAX_UNMAPPED_SHOWN = 1_000
# Nor are more than this many of which most stand on one row only, as names do in a register.
SCATTERED_FROM = 100
# Nor are this many or more of which most are each on several rows of one person only, as a name
# repeated on each of a person's contacts is: a code list's codes are shared by the people it
# describes. (A rare code on one row is not counted: at a small site most unmapped codes can be.)
PERSONAL_FROM = 20
HIDDEN_RULE = (f"over {MAX_UNMAPPED_SHOWN:,}, over {SCATTERED_FROM} with most on one row only, or "
               f"{PERSONAL_FROM} or more with most on several rows of one person only")


def _one_person_values(con, inp: Input, c: str, where: str) -> int:
    """How many of field `c`'s unmapped values (the `codes` rows `where` picks) each stand on
    several rows, all of one person by the file's person identifiers. Reads the file again: only
    for a field with PERSONAL_FROM or more unmapped values."""
    keys = id_keys(inp)
    if not keys:
        return 0
    person = keys[0] if len(keys) == 1 else f"({', '.join(keys)})"
    sel = ", ".join(f"{k}::VARCHAR AS {k}" for k in dict.fromkeys([*keys, c]))
    return scalar(con, f"""
        SELECT count(*) FILTER (WHERE people = 1 AND n > 1) FROM (
            SELECT {c}, count(DISTINCT {person}) AS people, count(*) AS n
            FROM (SELECT {sel} FROM {inp.first_pass})
            WHERE {c} IN (SELECT {c} FROM codes WHERE {where})
            GROUP BY {c})""") or 0


def too_many_values(values: int) -> str:
    """What stands for the unmapped codes of a field with more than MAX_UNMAPPED_SHOWN of them."""
    return f"({values:,} different values, not shown)"


def hidden_values(codes: dict[str, int]) -> int | None:
    """How many values `too_many_values` stood for, when it stands for a field's codes; else None."""
    if len(codes) == 1 and (m := re.fullmatch(r"\(([\d,]+) different values, not shown\)", next(iter(codes)))):
        return int(m.group(1).replace(",", ""))
    return None


def safe_code(code: str) -> str:
    """A code as reported: at most 60 characters; anything shaped like an NHS number (ten
    digits, maybe spaced) removed, since a code column can hold the wrong thing."""
    return NHS_LIKE.sub(NUMBER_REMOVED, str(code))[:60]


def _build_ids(run: RunState, inp: Input, keys: list[str], distinct_sql: str) -> None:
    """`ids`: one row per distinct identifier (combination) in the file, with its person.

    status: 0 a person we can load or match, 1 invalid NHS number (`why`: what it looked like,
    no digit shown), 2 not registered, 3 opted out, 4 no identifier at all. In a persons file
    `person_id` is the pseudonym to load under, and `other_id` says it came from an identifier
    other than an NHS number (FHIR patients without one: HMAC of 'id:' + system|value).
    """
    con = run.con
    nhs = "nhs_number" if "nhs_number" in keys else "NULL::VARCHAR"
    alt = "wobble_pseudonym('id:' || alt_id)" if "alt_id" in keys else "NULL::VARCHAR"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ids0 AS
        SELECT row_number() OVER ()::INTEGER AS idx, {', '.join(keys)}, nullif({nhs_normalised_sql(nhs)}, '') AS nhs,
               {alt} AS alt_pid
        FROM {distinct_sql}""")
    run.pseudonymise_into_cache("ids0", "nhs")
    valid = nhs_valid_sql("i.nhs")
    alt = "i.alt_pid"
    if inp.table == "persons":
        status = f"CASE WHEN i.nhs IS NOT NULL THEN (CASE WHEN {valid} THEN 0 ELSE 1 END) " \
                 f"WHEN {alt} IS NOT NULL THEN 0 ELSE 4 END"
        person, joins = f"coalesce(c.person_id, {alt})", ""
    else:
        ref = "NULL::VARCHAR"
        joins = ""
        if "patient_ref" in keys:
            ref = "pl.person_id"
            joins = ("LEFT JOIN person_links pl "
                     f"ON pl.link_id = wobble_pseudonym({literal(inp.system_prefix)} || i.patient_ref)")
        no_ref = "i.patient_ref IS NULL" if "patient_ref" in keys else "true"
        status = (f"CASE WHEN i.nhs IS NOT NULL AND NOT {valid} THEN 1 WHEN i.nhs IS NULL AND {no_ref} THEN 4 "
                  "WHEN p.person_id IS NULL THEN 2 WHEN p.opted_out THEN 3 ELSE 0 END")
        person = "p.person_id"
        joins += f" LEFT JOIN persons p ON p.person_id = coalesce(c.person_id, {ref})"
    why = (f"CASE WHEN i.nhs IS NOT NULL AND NOT {valid} THEN {nhs_invalid_detail_sql('i.nhs_number')} END"
           if "nhs_number" in keys else "NULL::VARCHAR")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE ids AS
        SELECT i.*, ({status})::UTINYINT AS status, {person} AS person_id,
               (i.nhs IS NULL AND {alt} IS NOT NULL) AS other_id, {why} AS why
        FROM ids0 i LEFT JOIN nhs_cache c ON c.nhs = i.nhs {joins}""")
    con.execute("DROP TABLE ids0")


def id_keys(inp: Input) -> list[str]:
    return [f for f in ("nhs_number", "alt_id", "patient_ref") if f in inp.fields]


def ids_match(inp: Input, ids: str = "ids", row: str = "r") -> str:
    """SQL: the row's identifier is this `ids` row's."""
    keys = id_keys(inp)
    if keys == ["nhs_number"]:
        return f"{ids}.nhs_number = {row}.nhs_number"
    return " AND ".join(f"{ids}.{k} IS NOT DISTINCT FROM {row}.{k}" for k in keys)


def ids_join(inp: Input) -> str:
    """Join each row to its identifier's `ids` row (none when it has no identifier at all)."""
    return f"LEFT JOIN ids ON {ids_match(inp)}"


# ---------------------------------------------------------------------------------------------
# Second pass: validate every row into `staged`
# ---------------------------------------------------------------------------------------------


REASONS = (
    "malformed_line", "missing_field", "entered_in_error", "invalid_nhs_number", "impossible_date",
    "unknown_code", "person_not_found", "opted_out", "duplicate",
)
REASON_INDEX = {r: i for i, r in enumerate(REASONS)}


# A check: (reason, SQL condition, the field it is about or None). Several checks may share a
# reason; the first that holds gives the row its reason and its `detail` (the field and value).
Check = tuple[str, str, str | None]


def _reason_sql(checks: list[Check]) -> str:
    arms = " ".join(f"WHEN {cond} THEN {REASON_INDEX[reason]}" for reason, cond, _ in checks)
    return f"(CASE {arms} END)::UTINYINT"


def _detail_sql(inp: Input, checks: list[Check]) -> str:
    """SQL: for a failing row, which field failed and its value (masked as in `raw`; an invalid NHS
    number as what it looked like, no digit shown). Only evaluated for rows with a reason, so rows
    that pass pay nothing for it."""
    nhs = nhs_invalid_detail_sql("r.nhs_number::VARCHAR") if "nhs_number" in inp.fields else None
    arms = " ".join(f"WHEN {cond} THEN {detail_value_sql(inp, f) if f else nhs}" for reason, cond, f in checks
                    if f or (reason == "invalid_nhs_number" and nhs))
    return f"(CASE {arms} END)" if arms else "NULL::VARCHAR"


def stage(con, inp: Input, columns: dict[str, str], checks: list[Check], joins: str) -> None:
    """Create `staged`: one row per row that parsed, with `columns`, the first failing reason
    (index into REASONS, NULL when the row passes) and, for failing rows only, the masked row.

    `columns` are SQL over the file's fields (`r.<field>`) and the joined tables; `checks` are
    SQL over those fields and over the computed columns, written `@<column>`.
    """
    computed = ", ".join(f"{expr} AS _c_{name}" for name, expr in columns.items())
    reason = _reason_sql(checks).replace("@", "_c_")
    detail = _detail_sql(inp, checks).replace("@", "_c_")
    keep = ", ".join(f"_c_{name} AS {name}" for name in columns)
    # The file's rows stream through; the joined tables are small and must be the hash join's
    # build side, whatever DuckDB estimates the file's size to be.
    con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        SELECT _ord, {keep}, _reason AS reason,
               CASE WHEN _reason IS NOT NULL AND _reason <> {REASON_INDEX['opted_out']}
                    THEN {masked_raw_sql(inp)} END AS raw,
               CASE WHEN _reason IS NOT NULL THEN {detail} END AS detail
        FROM (SELECT *, {reason} AS _reason
              FROM (SELECT r.*, {computed} FROM {inp.relation} r {joins}) r) r""")
    con.execute("RESET disabled_optimizers")


SUSPECT_BITS = 1 << 23  # the suspects filter: 1 MB, about one false alarm in 250 per 30,000 suspects


def stage_parallel(con, inp: Input, columns: dict[str, str], checks: list[Check]) -> None:
    """Create `staged` for a contacts or tags file in one parallel pass, without joins.

    Like `stage`, but the reasons that depend on who the row is about (invalid NHS number, not
    registered, opted out) come after, from `ids` (`settle_identity`). The masked row is kept
    for rows with a reason already, and for rows whose identifier is in the suspects filter (a
    Bloom filter of the identifiers `ids` found invalid or not registered), so every row that
    will need it has it. Keeps the identifier and staff code as read, to join on later.
    """
    keys = id_keys(inp)
    keep = [k for k in (*keys, "professional") if k in inp.fields]
    computed = ", ".join(f"{expr} AS _c_{name}" for name, expr in columns.items())
    reason = _reason_sql(checks).replace("@", "_c_")
    detail = _detail_sql(inp, checks).replace("@", "_c_")
    cols = ", ".join([*(f"_c_{name} AS {name}" for name in columns), *keep])
    hashed = f"hash({', '.join('r.' + k for k in keys)})"
    suspect = f"coalesce(get_bit(getvariable('wobble_suspects'), ({hashed} % {SUSPECT_BITS})::INTEGER) = 1, false)"
    ordered = inp.parallel is not None
    source = inp.parallel if ordered else inp.relation
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged_t AS
        SELECT {'' if ordered else '_ord, '}{cols}, _reason AS reason,
               CASE WHEN _reason IS NOT NULL OR {suspect} THEN {masked_raw_sql(inp)} END AS raw,
               CASE WHEN _reason IS NOT NULL THEN {detail} END AS detail
        FROM (SELECT *, {reason} AS _reason
              FROM (SELECT r.*, {computed} FROM {source} r) r) r""")
    con.execute(f"CREATE OR REPLACE TEMP VIEW staged AS SELECT {'rowid + 1 AS _ord, ' if ordered else ''}* "
                "FROM staged_t")


def mark_suspects(con, inp: Input) -> None:
    """Set `wobble_suspects`: a bit per identifier `ids` found invalid or not registered."""
    keys = ", ".join(id_keys(inp))
    con.execute(f"""
        SET VARIABLE wobble_suspects = (
            SELECT bitstring_agg((hash({keys}) % {SUSPECT_BITS})::BIGINT, 0, {SUSPECT_BITS - 1})
            FROM ids WHERE status IN (1, 2))""")


def settle_identity(con, inp: Input) -> None:
    """Give rows whose identifier is not a registered person's their reason (first match wins,
    as in REASONS); opted-out people's rows keep no masked row."""
    r = REASON_INDEX
    first = f"({r['missing_field']}, {r['entered_in_error']})"
    con.execute(f"""
        UPDATE staged_t SET
            reason = CASE WHEN staged_t.reason IN {first} THEN staged_t.reason
                          WHEN ids.status = 1 THEN {r['invalid_nhs_number']}
                          WHEN staged_t.reason IS NOT NULL THEN staged_t.reason
                          WHEN ids.status = 2 THEN {r['person_not_found']}
                          WHEN ids.status = 3 THEN {r['opted_out']}
                          ELSE {r['missing_field']} END,
            detail = CASE WHEN staged_t.reason IN {first} THEN staged_t.detail
                          WHEN ids.status = 1 THEN ids.why
                          WHEN staged_t.reason IS NOT NULL THEN staged_t.detail
                          WHEN ids.status = 4 THEN 'identifier: (blank)' END,
            raw = CASE WHEN staged_t.reason IS NULL AND ids.status = 3 THEN NULL ELSE staged_t.raw END
        FROM ids WHERE {ids_match(inp, 'ids', 'staged_t')} AND ids.status <> 0""")
    lost = scalar(con, f"""SELECT count(*) FROM staged_t WHERE raw IS NULL AND reason IS NOT NULL
                           AND reason <> {r['opted_out']}""")
    if lost:  # the suspects filter cannot miss; if it ever did, say so rather than hide rows
        raise RuntimeError(f"{lost} quarantined rows lost their masked row")


def bad_rows(con, inp: Input) -> None:
    """`bad`: quarantined rows (reason, line, masked row) from `staged` and the malformed lines."""
    reasons = "[" + ", ".join(literal(r) for r in REASONS) + "]"
    rejects = ""
    if inp.rejects:
        rejects = f"""UNION ALL
            SELECT line, 'malformed_line', lower(error),
                   {without_numbers_sql("left(csv_line, 500)")}
            FROM {inp.rejects}"""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE bad AS
        SELECT {inp.line_sql} AS line, {reasons}[reason + 1] AS reason, detail, raw
        FROM staged WHERE reason IS NOT NULL
        {rejects}""")


def row_counts(con, inp: Input) -> tuple[int, int]:
    """(rows parsed, malformed lines)."""
    parsed = scalar(con, "SELECT count(*) FROM staged")
    malformed = scalar(con, f"SELECT count(*) FROM {inp.rejects}") if inp.rejects else 0
    return int(parsed), int(malformed)


