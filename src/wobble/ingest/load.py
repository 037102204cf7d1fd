"""Loading: a validated file's rows into `persons`, `contacts` or `tags`, in one transaction.

A contact or tag already loaded under the same source system and record id is a duplicate when it
is identical, a correction (it replaces the old version) when it differs and is not older, and a
duplicate again when it is an older version than the one held. Every row is loaded or quarantined
with its reason, and the file's ledger row must reconcile (`rows_in = loaded + quarantined +
duplicate`) or nothing is committed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wobble.core.config import Source
from wobble.core.errors import WobbleError
from wobble.core.sql import in_list, literal
from wobble.core.vocab import CONCERN_TAGS
from wobble.core.warehouse import one_row, scalar, transaction
from wobble.ingest.identifiers import record_id_sql, without_numbers_sql
from wobble.ingest.optout import withdraw
from wobble.ingest.reader import REJECTING, Input, coded_field, field_text, field_timestamp, present_sql, vocab_value
from wobble.ingest.state import RunState
from wobble.ingest.tabular import csv_rejects
from wobble.ingest.validate import (
    REASON_INDEX,
    Check,
    bad_rows,
    first_pass,
    id_keys,
    ids_join,
    ids_match,
    mark_suspects,
    row_counts,
    safe_code,
    settle_identity,
    stage,
    stage_parallel,
)


@dataclass
class FileResult:
    """What happened to one file."""

    source: str
    file: str
    status: str  # loaded | skipped (already loaded) | failed | not_read (a FHIR type wobble ignores)
    table: str | None = None
    rows_in: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    rows_duplicate: int = 0
    rows_replaced: int = 0  # older versions a correction replaced
    rows_withdrawn: int = 0  # contacts and tags removed because their person opted out
    rows_retracted: int = 0  # records removed because the source marked them entered-in-error
    rows_out_of_scope: int = 0  # FHIR resources wobble does not read (e.g. vital-sign observations)
    rows_deleted: int = 0  # contacts and tags removed because the source deleted them (a `deleted` file)
    deletions_not_held: int = 0  # deletions of records wobble does not hold (never loaded, or gone already)
    deletions_not_applied: int = 0  # deleted Patients: wobble keeps the person (`load_deletions`)
    reasons: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, dict[str, int]] = field(default_factory=dict)  # field → code → rows
    passed_over: int = 0  # of `unmapped`'s codes, those only on resources not read (no row failed)
    export_issues: dict[str, int] = field(default_factory=dict)  # an export's error file: 'severity: code' → n
    # what → rows, each listed by the data-quality report as worth a look: fields given a default
    # (contacts), or what a `deleted` file's deletions did
    defaulted: dict[str, int] = field(default_factory=dict)
    other_identifier: int = 0  # persons pseudonymised from an identifier other than an NHS number
    batch_id: str | None = None  # the load's batch (its quarantine rows carry it)
    line_breaks_in_fields: int = 0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Batch:
    name: str
    source: Source
    rel: str
    batch_id: str
    content_hash: str
    table: str | None = None


_PAUSE = os.environ.get("WOBBLE_INGEST_PAUSE", "")


def _pause_point(point: str, file: str) -> None:
    """Fault injection for the crash tests: with WOBBLE_INGEST_PAUSE=<point>:<file name>, say
    so on stderr and wait at that point (the test then kills the process)."""
    if _PAUSE and f"{point}:{file}" == _PAUSE:
        sys.stderr.write(f"wobble-paused {point}:{file}\n")
        sys.stderr.flush()
        resume = os.environ.get("WOBBLE_INGEST_RESUME_FILE")
        while not (resume and os.path.exists(resume)):
            time.sleep(0.05)


def _finish(run: RunState, batch: Batch, inp: Input, rows_in: int, loaded: int, duplicate: int,
            unmapped: dict[str, dict[str, int]]) -> dict[str, int]:
    """Inside the file's transaction: write `bad` and duplicates to quarantine, the unmapped
    codes and the ledger row; refuse to commit when the counts do not reconcile."""
    con = run.con
    con.execute(
        "INSERT INTO quarantine SELECT ?, ?, ?, line, reason, detail, raw FROM bad",
        [batch.batch_id, batch.name, batch.rel],
    )
    reasons = dict(con.sql("SELECT reason, count(*) FROM bad GROUP BY reason").fetchall())
    dup_rows = reasons.get("duplicate", 0)
    quarantined = sum(reasons.values()) - dup_rows
    if rows_in != loaded + quarantined + duplicate or dup_rows != duplicate:
        raise RuntimeError(  # a bug, not a data problem: refuse to commit
            f"{batch.rel}: counts do not reconcile: in {rows_in} != loaded {loaded} + "
            f"quarantined {quarantined} + duplicate {duplicate} ({dup_rows} in quarantine)"
        )
    if rows_in and quarantined == rows_in and not set(reasons) & HONOURED:
        _refuse_all_quarantined(con, quarantined, batch.source.kind == "fhir")
    rows = [(batch.batch_id, batch.name, f, code, n) for f, codes in unmapped.items() for code, n in codes.items()]
    if rows:
        con.executemany("INSERT INTO ingest_unmapped VALUES (?, ?, ?, ?, ?)", rows)
    _pause_point("ledger", Path(batch.rel).name)
    con.execute(
        "INSERT INTO load_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [batch.batch_id, batch.name, batch.rel, batch.content_hash, run.now, rows_in, loaded, quarantined, duplicate],
    )
    _pause_point("committing", Path(batch.rel).name)
    return {k: int(v) for k, v in sorted(reasons.items())}


# Quarantine reasons that are the source's own word, honoured, not rows wobble failed to read: a
# retraction (entered in error, refuted, cancelled) and a person who opted out.
HONOURED = {"entered_in_error", "opted_out"}


def _refuse_all_quarantined(con, quarantined: int, fhir: bool = False) -> None:
    """A file none of whose rows could be loaded fails alone, rolled back and not in the ledger, so
    the next run reads it again. It is almost always the settings (a date format that matches
    nothing, a wrong column) or the clock, not the data; ledgered, its rows would stay quarantined
    after the fix, and a register's failure holds back the run's activity rather than losing it
    as person_not_found."""
    reason, detail, n = one_row(con, """
        SELECT reason, mode(detail), count(*) FROM bad WHERE reason <> 'duplicate'
        GROUP BY reason ORDER BY count(*) DESC, reason LIMIT 1""")
    most = (f"{n:,} {reason}" + (f" (e.g. {detail})" if detail else "")
            + (f", {quarantined - n:,} for other reasons" if n < quarantined else ""))
    check = ("the export (Bulk Data NDJSON, one resource per line) and the source's code maps in wobble.toml" if fhir
             else "the source's settings in wobble.toml (formats, columns, codes)")
    raise WobbleError(f"every row was quarantined: {most}. Nothing was loaded, and the file is read again at the "
                      f"next run: check {check}")


# ---------------------------------------------------------------------------------------------
# Persons
# ---------------------------------------------------------------------------------------------

_PERSON_COLS = ("birth_year", "sex", "ethnicity_group", "imd_decile", "team_id", "practice_id",
                "opted_out", "died_on", "registered_on", "team_assigned_by")


def load_persons(run: RunState, batch: Batch, inp: Input) -> FileResult:
    """A register file: each person loaded (or their row replaced) or quarantined, in one transaction."""
    con = run.con
    coded = [f for f in ("sex", "ethnicity_group", "opted_out") if f in inp.fields]
    unmapped = first_pass(run, inp, coded, None)
    stage(con, inp, *_person_checks(run, inp))
    if inp.kind == "csv":
        csv_rejects(con, batch.source, inp.fingerprint, inp.path)
    rows_in = sum(row_counts(con, inp))
    bad_rows(con, inp)
    _person_candidates(con, inp)
    replaced = int(scalar(con, "SELECT count(*) FROM existing WHERE NOT same"))
    duplicate = int(scalar(con, "SELECT count(*) FROM bad WHERE reason = 'duplicate'"))
    other = int(scalar(con, "SELECT count(*) FROM incoming WHERE other_id"))
    _pause_point("staged", Path(batch.rel).name)
    with transaction(con):
        con.execute("CREATE OR REPLACE TEMP TABLE newly_out AS "
                    "SELECT person_id FROM existing WHERE now_out AND NOT was_out")
        withdrawn = withdraw(run, "newly_out", batch.rel)
        if replaced:
            con.execute("DELETE FROM persons WHERE person_id IN (SELECT person_id FROM existing WHERE NOT same)")
        loaded = scalar(con, f"""
            INSERT INTO persons (person_id, {', '.join(_PERSON_COLS)}, source_system, batch_id)
            SELECT person_id, {', '.join(_PERSON_COLS)}, ?, ?
            FROM incoming WHERE person_id NOT IN (SELECT person_id FROM existing WHERE same)""",
                        [batch.source.system, batch.batch_id])
        if "patient_ref" in inp.fields:
            _write_links(con, inp, batch)
        _pause_point("inserted", Path(batch.rel).name)
        reasons = _finish(run, batch, inp, rows_in, int(loaded), duplicate, unmapped)
    return FileResult(
        batch.name, batch.rel, "loaded", batch_id=batch.batch_id, table="persons", rows_in=rows_in,
        rows_loaded=int(loaded),
        rows_quarantined=rows_in - int(loaded) - duplicate, rows_duplicate=duplicate,
        rows_replaced=replaced, rows_withdrawn=withdrawn, rows_out_of_scope=inp.out_of_scope,
        reasons=reasons, unmapped=unmapped, other_identifier=other,
        line_breaks_in_fields=_line_breaks(inp, rows_in),
    )


def _person_checks(run: RunState, inp: Input) -> tuple[dict[str, str], list[Check], str]:
    """What `stage` needs for a register file: its columns (with the lookups' LSOA → IMD decile and
    the team rule), the checks in order, and the joins to the lookups."""
    lk = run.cfg.lookups

    def dt(f: str) -> str:
        return f"({field_timestamp(f, inp, inp.date_format)})::DATE" if f in inp.fields else "NULL::DATE"

    sex, _ = coded_field("sex", inp)
    eth, _ = coded_field("ethnicity_group", inp)
    opt, opt_unknown = coded_field("opted_out", inp)
    joins = [ids_join(inp)]
    lsoa = field_text("lsoa", inp)
    if "postcode" in inp.fields and lk.postcode_lsoa:
        joins.append("LEFT JOIN lookup_postcode_lsoa lpc "
                     f"ON lpc.postcode = upper(replace({field_text('postcode', inp)}, ' ', ''))")
        lsoa = f"coalesce({lsoa}, lpc.lsoa)"
    if lk.lsoa_imd and ("lsoa" in inp.fields or "postcode" in inp.fields):
        joins.append(f"LEFT JOIN lookup_lsoa_imd li ON li.lsoa = {lsoa}")
        imd = "try_cast(li.imd_decile AS TINYINT)"
    else:
        imd = f"try_cast({field_text('imd_decile', inp)} AS TINYINT)"
    today = literal(run.now.date().isoformat())
    died_on = dt("died_on")
    if "deceased" in inp.fields:  # FHIR: dead, and no date known at all; by the run's date at latest
        died_on = f"coalesce({died_on}, CASE WHEN r.deceased THEN DATE {today} END)"
    team, assigned_by, team_joins = _team_rule(run, inp, lsoa)
    joins += team_joins
    columns = {
        "idx": "ids.idx", "who": "ids.status",
        "birth_year": f"year({dt('birth_date')})" if "birth_date" in inp.fields
        else f"try_cast({field_text('birth_year', inp)} AS SMALLINT)",
        "sex": sex, "ethnicity_group": eth, "imd_decile": imd, "team_id": team,
        "practice_id": field_text("practice_id", inp), "opted_out": opt, "died_on": died_on,
        "registered_on": dt("registered_on"), "team_assigned_by": assigned_by,
    }
    born = "birth_date" if "birth_date" in inp.fields else "birth_year"
    # Only the identifier is required: a registered person is never kept out for an optional
    # field (sex not known, no practice, an unknown ethnicity); bad dates and opt-out flags are.
    checks: list[Check] = [
        ("missing_field", "coalesce(@who, 4) = 4", "nhs_number" if "nhs_number" in inp.fields else "alt_id"),
        *[("missing_field", f"NOT {present_sql(f, inp)}", f) for f in (inp.required or ())
          if f in inp.fields and f not in inp.defaults],
        ("invalid_nhs_number", "@who = 1", None),
        *[("impossible_date", f"({present_sql(f, inp)} AND {dt(f)} IS NULL)", f)
          for f in ("birth_date", "died_on", "registered_on") if f in inp.fields],
        ("impossible_date", f"coalesce(@birth_year NOT BETWEEN 1890 AND year(DATE {today}), false)", born),
        ("impossible_date", f"coalesce(@died_on > DATE {today} OR @died_on < make_date(@birth_year, 1, 1), false)",
         "died_on"),
        ("unknown_code", opt_unknown, "opted_out"),
    ]
    return columns, checks, " ".join(joins)


def _team_rule(run: RunState, inp: Input, lsoa: str) -> tuple[str, str, list[str]]:
    """SQL for a person's team, how it was assigned, and the joins it needs.

    The practice's team (through the practice → team lookup; without one, each practice is its
    own team), else the source's team; failing that, the team of where they live (LSOA → team
    lookup), else the configured unattached team. Nobody is dropped for an administrative gap.
    """
    lk, joins = run.cfg.lookups, []
    practice = field_text("practice_id", inp)
    if "practice_id" in inp.fields and lk.practice_team:
        joins.append(f"LEFT JOIN lookup_practice_team lp ON lp.practice = {practice}")
        own = f"coalesce(lp.team_id, {field_text('team_id', inp)})"
    elif "team_id" in inp.fields:
        own = f"coalesce({field_text('team_id', inp)}, {practice})"
    else:
        own = practice
    by_lsoa = "NULL::VARCHAR"
    if lk.lsoa_team and ("lsoa" in inp.fields or "postcode" in inp.fields):
        joins.append(f"LEFT JOIN lookup_lsoa_team lt ON lt.lsoa = {lsoa}")
        by_lsoa = "lt.team_id"
    unattached = literal(run.cfg.teams.unattached)
    team = f"coalesce({own}, {by_lsoa}, {unattached})"
    assigned_by = (f"CASE WHEN {own} IS NOT NULL THEN NULL WHEN {by_lsoa} IS NOT NULL THEN 'lsoa' "
                   "ELSE 'unattached' END")
    return team, assigned_by, joins


def _person_candidates(con, inp: Input) -> None:
    """From the rows that passed: `incoming` (the last line per person), `existing` (those already
    loaded, and whether unchanged), and the earlier lines and unchanged rows as duplicates in `bad`."""
    opted = f"coalesce({vocab_value('opted_out', 's.opted_out')} = 'true', false)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE cand AS
        SELECT i.person_id, s._ord, s.birth_year, coalesce({vocab_value('sex', 's.sex')}, 'not_known') AS sex,
               coalesce({vocab_value('ethnicity_group', 's.ethnicity_group')}, 'Not stated') AS ethnicity_group,
               s.imd_decile, s.team_id, s.practice_id, {opted} AS opted_out, s.died_on,
               s.registered_on, s.team_assigned_by, i.other_id
        FROM staged s JOIN ids i USING (idx) WHERE s.reason IS NULL""")
    # Within the file the last line for a person wins; the earlier ones are duplicates.
    con.execute(f"""
        INSERT INTO bad
        SELECT {inp.line_sql}, 'duplicate', 'a later line in this file has the same person', NULL
        FROM cand QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY _ord DESC) > 1""")
    kept = ", ".join(c if c in ("team_id", "practice_id", "opted_out", "team_assigned_by")
                     else f"CASE WHEN opted_out THEN NULL ELSE {c} END AS {c}" for c in _PERSON_COLS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE incoming AS
        SELECT person_id, {kept}, other_id, _ord FROM cand
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY _ord DESC) = 1""")
    same = " AND ".join(f"p.{c} IS NOT DISTINCT FROM i.{c}" for c in _PERSON_COLS)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE existing AS
        SELECT i.person_id, i._ord, ({same}) AS same, p.batch_id, p.opted_out AS was_out,
               i.opted_out AS now_out
        FROM incoming i JOIN persons p USING (person_id)""")
    con.execute(f"""
        INSERT INTO bad SELECT {inp.line_sql}, 'duplicate', 'already loaded, unchanged (batch ' || batch_id || ')', NULL
        FROM existing WHERE same""")


def _write_links(con, inp: Input, batch: Batch) -> None:
    """FHIR: remember each patient reference's person, so Encounters and Flags can find them.
    From every line that passed, not only the one kept per person: two Patient resources with
    one NHS number (a merge the source has not finished) are one person, and each id's records
    must find them. For a reference on several lines, its last line says who it is."""
    prefix = literal(inp.system_prefix)
    con.execute(f"""
        DELETE FROM person_links WHERE link_id IN (
            SELECT wobble_pseudonym({prefix} || patient_ref) FROM ids WHERE patient_ref IS NOT NULL)""")
    con.execute(f"""
        INSERT INTO person_links
        SELECT wobble_pseudonym({prefix} || ids.patient_ref), ids.person_id, ?, ?
        FROM staged s JOIN ids USING (idx)
        WHERE s.reason IS NULL AND ids.patient_ref IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY ids.patient_ref ORDER BY s._ord DESC) = 1""",
                [batch.source.system, batch.batch_id])


def _line_breaks(inp: Input, rows_in: int) -> int:
    """Line breaks inside quoted fields (or blank lines): physical lines not accounted for by
    rows. Worth a look, since a quote out of place can hide rows inside one field."""
    if inp.kind != "csv" or inp.fingerprint is None:
        return 0
    lines = inp.fingerprint.line_breaks + (0 if inp.fingerprint.ends_with_newline else 1)
    return max(0, lines - 1 - rows_in)


# ---------------------------------------------------------------------------------------------
# Contacts and tags
# ---------------------------------------------------------------------------------------------


def load_activity(run: RunState, batch: Batch, inp: Input) -> FileResult:
    """A contacts or tags file: each record loaded (or a correction replacing the version held),
    quarantined or counted as a duplicate, in one transaction."""
    con, source = run.con, batch.source
    is_contacts = inp.table == "contacts"
    coded_fields = ("service", "status", "mode") if is_contacts else ("tag", "author_role")
    staff = is_contacts and "professional" in inp.fields
    unmapped = first_pass(run, inp, [f for f in coded_fields if f in inp.fields],
                           source.system if staff else None)
    failing = sum(len(codes) for codes in unmapped.values())
    for f, codes in inp.extra_unmapped.items():
        for code, n in codes.items():
            unmapped.setdefault(f, {})[safe_code(code)] = unmapped.get(f, {}).get(code, 0) + n
    passed_over = sum(len(codes) for codes in unmapped.values()) - failing
    mark_suspects(con, inp)
    stage_parallel(con, inp, *_activity_checks(run, inp, coded_fields))
    if inp.kind == "csv":
        csv_rejects(con, source, inp.fingerprint, inp.path)
    settle_identity(con, inp)
    rows_in = sum(row_counts(con, inp))
    defaulted = _defaulted(con) if is_contacts else {}
    bad_rows(con, inp)
    target, id_col = ("contacts", "contact_id") if is_contacts else ("tags", "tag_id")
    system = literal(source.system)
    incoming = _incoming_sql(inp, batch, staff)
    retract = f"(SELECT record_id FROM staged WHERE reason = {REASON_INDEX['entered_in_error']})"
    retracted = _duplicates(con, inp, target, id_col, system, incoming, retract)
    replaced = int(scalar(con, "SELECT count(*) FROM existing WHERE verdict = 'newer'"))
    duplicate = int(scalar(con, "SELECT count(*) FROM dups"))
    _pause_point("staged", Path(batch.rel).name)
    with transaction(con):
        if replaced:
            con.execute(f"""DELETE FROM {target} WHERE source_system = {system}
                            AND {id_col} IN (SELECT {id_col} FROM existing WHERE verdict = 'newer')""")
        if retracted:
            con.execute(f"DELETE FROM {target} WHERE source_system = {system} AND {id_col} IN {retract}")
        keep = "WHERE _ord NOT IN (SELECT _ord FROM dups)" if duplicate else ""
        loaded = int(scalar(con, f"INSERT INTO {target} SELECT * EXCLUDE (_ord) FROM ({incoming}) {keep}"))
        _pause_point("inserted", Path(batch.rel).name)
        reasons = _finish(run, batch, inp, rows_in, loaded, duplicate, unmapped)
    return FileResult(
        batch.name, batch.rel, "loaded", batch_id=batch.batch_id, table=inp.table, rows_in=rows_in, rows_loaded=loaded,
        rows_quarantined=rows_in - loaded - duplicate, rows_duplicate=duplicate, rows_replaced=replaced,
        rows_retracted=retracted, rows_out_of_scope=inp.out_of_scope, reasons=reasons,
        unmapped=unmapped, passed_over=passed_over, defaulted=defaulted,
        line_breaks_in_fields=_line_breaks(inp, rows_in),
    )


def _activity_checks(run: RunState, inp: Input, coded_fields: tuple[str, ...]) -> tuple[dict[str, str], list[Check]]:
    """What `stage_parallel` needs for a contacts or tags file: its columns and the checks in order."""
    is_contacts = inp.table == "contacts"
    fmt = inp.timestamp_format
    columns = {"record_id": record_id_sql(field_text("record_id", inp)),
               "occurred_at": field_timestamp("occurred_at" if is_contacts else "recorded_at", inp, fmt),
               "recorded_at": field_timestamp("recorded_at", inp, fmt)}
    unknown: list[Check] = []
    for f in coded_fields:
        columns[f], is_unknown = coded_field(f, inp)
        if f in REJECTING:
            unknown.append(("unknown_code", is_unknown, f))
    if "retracted" in inp.fields:
        columns["retracted"] = "coalesce(r.retracted, false)"
    required = ("record_id", "occurred_at", "service") if is_contacts else ("record_id", "recorded_at", "tag")
    dates = [f for f in ("occurred_at", "recorded_at") if f in inp.fields]
    now = literal(run.now.isoformat(sep=" "))
    bad_date: list[Check] = [("impossible_date", f"({present_sql(f, inp)} AND @{f} IS NULL)", f) for f in dates]
    bad_date += [("impossible_date", f"coalesce(@{f} NOT BETWEEN TIMESTAMP '1900-01-01' AND TIMESTAMP {now}, false)", f)
                 for f in dates]
    if is_contacts and "recorded_at" in inp.fields:  # recorded more than a day before it happened
        bad_date.append(("impossible_date", "coalesce(@recorded_at < @occurred_at - INTERVAL 1 DAY, false)",
                         "recorded_at"))
    keys = id_keys(inp)
    no_identifier = "(" + " AND ".join(f"NOT {present_sql(k, inp)}" for k in keys) + ")"
    checks: list[Check] = [
        # FHIR: a subject no export can resolve (urn:uuid, contained): say so, not just "missing"
        *([("missing_field", present_sql("unresolvable_ref", inp), "unresolvable_ref")]
          if "unresolvable_ref" in inp.fields else []),
        ("missing_field", no_identifier, keys[0] if len(keys) == 1 else "identifier"),
        *[("missing_field", f"NOT {present_sql(f, inp)}", f) for f in required if f not in inp.defaults],
        ("entered_in_error", "@retracted" if "retracted" in inp.fields else "false", None),
        *bad_date,
        *unknown,
    ]
    return columns, checks


def _defaulted(con) -> dict[str, int]:
    """Contacts that passed without a recorded time or a status, so got the default."""
    no_recorded, no_status = con.execute("""
        SELECT count(*) FILTER (WHERE recorded_at IS NULL), count(*) FILTER (WHERE status IS NULL)
        FROM staged WHERE reason IS NULL""").fetchall()[0]
    return {k: int(v) for k, v in (("recorded_at (occurred_at used)", no_recorded),
                                   ("status (attended assumed)", no_status)) if v}


def _incoming_sql(inp: Input, batch: Batch, staff: bool) -> str:
    """SQL: the rows that passed, as rows of `contacts` or `tags` (with `_ord`, their place in the file)."""
    system = literal(batch.source.system)
    if inp.table == "contacts":
        return f"""
            SELECT s.record_id AS contact_id, i.person_id, s.occurred_at,
                   coalesce(s.recorded_at, s.occurred_at) AS recorded_at,
                   {vocab_value('service', 's.service')} AS service,
                   coalesce({vocab_value('status', 's.status')}, 'attended') AS status,
                   {vocab_value('mode', 's.mode')} AS mode,
                   {'st.pseudonym' if staff else 'NULL::VARCHAR'} AS professional_id,
                   {system} AS source_system, {literal(batch.batch_id)} AS batch_id, s._ord
            FROM staged s JOIN ids i ON {ids_match(inp, 'i', 's')}
            {'LEFT JOIN staff st ON st.raw = s.professional' if staff else ''}
            WHERE s.reason IS NULL"""
    tag = vocab_value("tag", "s.tag")
    return f"""
            SELECT s.record_id AS tag_id, i.person_id, s.recorded_at, {tag} AS tag,
                   CASE WHEN {tag} IN {in_list(CONCERN_TAGS)} THEN 'concern' ELSE 'strength' END AS polarity,
                   {vocab_value('author_role', 's.author_role')} AS author_role,
                   {system} AS source_system, {literal(batch.batch_id)} AS batch_id, s._ord
            FROM staged s JOIN ids i ON {ids_match(inp, 'i', 's')}
            WHERE s.reason IS NULL"""


_SAME = {"contacts": ("person_id", "occurred_at", "recorded_at", "service", "status", "mode", "professional_id"),
         "tags": ("person_id", "recorded_at", "tag", "author_role")}


def _duplicates(con, inp: Input, target: str, id_col: str, system: str, incoming: str, retract: str) -> int:
    """Temp tables `dups` (rows not to load: earlier lines of a record id in this file, and records
    held already, unchanged or in a newer version) and `existing` (held records' verdicts, 'newer'
    ones to replace); the duplicates also go to `bad`. Returns how many held records the source
    retracted (entered in error)."""
    # Within a file the last line for a record id wins; the earlier lines are duplicates.
    # (A 64-bit hash per id finds out cheaply whether there are any; the exact work is rare.)
    con.execute("CREATE OR REPLACE TEMP TABLE dups (_ord BIGINT, detail VARCHAR)")
    if scalar(con, "SELECT count(*) - count(DISTINCT hash(record_id)) FROM staged WHERE reason IS NULL"):
        con.execute("""
            INSERT INTO dups SELECT _ord, 'a later line in this file has the same record id'
            FROM staged WHERE reason IS NULL
            QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY _ord DESC) > 1""")
    # Records this system sent before: identical ones are duplicates, older versions too, and
    # corrections replace what is held. (Skipped when the system has sent nothing yet.)
    con.execute(f"CREATE OR REPLACE TEMP TABLE existing (_ord BIGINT, {id_col} VARCHAR, verdict VARCHAR, "
                "batch_id VARCHAR)")
    retracted = 0
    if scalar(con, f"SELECT EXISTS (SELECT 1 FROM {target} WHERE source_system = {system})"):
        # First the ids alone (a narrow semi-join), then the full comparison for those only.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE seen AS
            SELECT _ord FROM staged WHERE reason IS NULL AND _ord NOT IN (SELECT _ord FROM dups)
              AND record_id IN (SELECT {id_col} FROM {target} WHERE source_system = {system})""")
        match = " AND ".join(f"t.{k} IS NOT DISTINCT FROM i.{k}" for k in _SAME[target])
        con.execute(f"""
            INSERT INTO existing
            SELECT i._ord, i.{id_col},
                   CASE WHEN {match} THEN 'same' WHEN i.recorded_at < t.recorded_at THEN 'older'
                        ELSE 'newer' END, t.batch_id
            FROM ({incoming} AND s._ord IN (SELECT _ord FROM seen)) i
            JOIN {target} t ON t.source_system = {system} AND t.{id_col} = i.{id_col}""")
        if "retracted" in inp.fields:
            retracted = int(scalar(con, f"SELECT count(*) FROM {target} WHERE source_system = {system} "
                                        f"AND {id_col} IN {retract}"))
    con.execute("""
        INSERT INTO dups SELECT _ord, CASE verdict
            WHEN 'same' THEN 'already loaded, unchanged (batch ' || batch_id || ')'
            ELSE 'an older version of a record already loaded (batch ' || batch_id || ')' END
        FROM existing WHERE verdict <> 'newer'""")
    con.execute(f"INSERT INTO bad SELECT {inp.line_sql}, 'duplicate', detail, NULL FROM dups")
    return retracted


# ---------------------------------------------------------------------------------------------
# Deletions (a FHIR Bulk Data `deleted` file)
# ---------------------------------------------------------------------------------------------


def load_deletions(run: RunState, batch: Batch, inp: Input) -> FileResult:
    """A `deleted` file (`wobble.ingest.fhir.read_deleted`; one row per DELETE entry): each deleted
    Encounter or Appointment removes the contact, each Flag, Condition or Observation the tag, that
    this source system holds under the same record id, pseudonymised by the load's own rule
    (`record_id_sql`), in one transaction with the quarantine (malformed lines and entries) and
    the ledger row, so a re-run is skipped and a crash leaves the warehouse as it was.

    A deletion of a record not held is counted (`deletions_not_held`), not an error. A deleted
    Patient is not applied, only counted (`deletions_not_applied`): a person is their NHS number's
    pseudonym, not one source's Patient id. One person may have several Patient ids (a merge
    deletes the duplicate record and keeps the survivor) and rows in other sources' registers, so
    removing the person would drop someone whose record lives on (nobody dropped for an
    administrative gap) and quarantine their other sources' activity as person_not_found. A person
    leaves the register when the register says so: a death, an opt-out, or their own records
    deleted one by one. Types wobble does not read are out of scope, as in any file."""
    con, system = run.con, literal(batch.source.system)
    # Within a file a record deleted twice is one deletion: the earlier entries are duplicates.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE staged AS
        SELECT line, entry, tbl, record_id,
               row_number() OVER (PARTITION BY tbl, record_id ORDER BY line DESC, entry DESC) > 1 AS dup,
               coalesce((tbl = 'contacts' AND record_id IN (SELECT contact_id FROM contacts
                                                            WHERE source_system = {system}))
                        OR (tbl = 'tags' AND record_id IN (SELECT tag_id FROM tags WHERE source_system = {system})),
                        false) AS held
        FROM (SELECT line, entry, tbl, {record_id_sql('raw_id')} AS record_id FROM fhir_rows
              WHERE tbl IN ('contacts', 'tags'))""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE bad AS
        SELECT line, 'malformed_line' AS reason, lower(error) AS detail,
               {without_numbers_sql("left(csv_line, 500)")} AS raw FROM rejects
        UNION ALL
        SELECT line, 'duplicate', 'another entry in this file deletes the same record', NULL FROM staged WHERE dup""")
    entries, duplicate, not_held = (int(v) for v in one_row(
        con, "SELECT count(*), count(*) FILTER (WHERE dup), count(*) FILTER (WHERE NOT dup AND NOT held) FROM staged"))
    patients = int(scalar(con, "SELECT count(*) FROM fhir_rows WHERE tbl = 'persons'"))
    rows_in = entries + int(scalar(con, "SELECT count(*) FROM rejects"))
    _pause_point("staged", Path(batch.rel).name)
    with transaction(con):
        removed = {t: int(scalar(con, f"""
            DELETE FROM {t} WHERE source_system = {system}
              AND {c} IN (SELECT record_id FROM staged WHERE tbl = {literal(t)} AND held)"""))
                   for t, c in (("contacts", "contact_id"), ("tags", "tag_id"))}
        if sum(removed.values()):  # the rows are gone for good: say so where governance looks
            con.execute("INSERT INTO audit_log VALUES (?, 'wobble ingest', NULL, NULL, 'source_deletions_applied', ?)",
                        [run.now, f"{batch.rel}: removed {removed['contacts']} contacts and {removed['tags']} "
                                  "tags the source deleted"])
        _pause_point("inserted", Path(batch.rel).name)
        reasons = _finish(run, batch, inp, rows_in, entries - duplicate, duplicate, {})
    deleted = sum(removed.values())
    return FileResult(
        batch.name, batch.rel, "loaded", batch_id=batch.batch_id, table="deletions", rows_in=rows_in,
        rows_loaded=entries - duplicate, rows_quarantined=rows_in - entries, rows_duplicate=duplicate,
        rows_deleted=deleted, deletions_not_held=not_held, deletions_not_applied=patients,
        rows_out_of_scope=inp.out_of_scope, reasons=reasons,
    )
