"""FHIR R4 Bulk Data (`$export`) NDJSON → the rows ingest validates and loads.

A Bulk Data export is a folder of newline-delimited JSON files, one resource per line, each file
holding one resource type (e.g. `Patient.ndjson`, `Encounter.000.ndjson`, gzipped or not); a
file named for no type may hold several (`fhir_files`: each type loads as a part of it), and a
file of Bundles, or one JSON document over several lines (Synthea's per-person Bundles), is read
for its entries (`_unpack_bundles`). wobble reads:

- Patient → persons: NHS number identifier (UK Core's system or the older fhir.nhs.net one; a
  current one before one marked old; else the first other identifier, pseudonymised and
  counted), birthDate (year only), gender, UK Core ethnic category extension or US Core race,
  address postalCode (only to look up the LSOA; never stored), the practice (the Organization in
  generalPractitioner, else managingOrganization), deceasedDateTime or deceasedBoolean;
- Encounter → contacts: subject, class (v3 ActCode), serviceType and type codings, UK Core
  admission method, status, period.start, meta.lastUpdated (as recorded_at), the first
  participant who is staff (continuity);
- Appointment → contacts (what happened to it: fulfilled, no-show, cancelled);
- Flag, Condition (category problem-list-item or health-concern) and Observation (category
  social-history) → tags, through the code → tag map. A refuted Condition, an inactive Flag or a
  cancelled Observation withdraws the tag, like entered-in-error.

The SQL for each resource type's fields is built in `wobble.ingest.fhir_sql`.

An incremental export (`_since`) lists `deleted` files: Bundles of DELETE requests, read by
`read_deleted` and applied by `wobble.ingest.load.load_deletions` (a deleted Patient is counted,
not applied).

Each line becomes one row of contract fields in temp table `fhir_rows` (`_ord` is its line
number); lines that are not JSON objects of the file's type go to temp table `rejects`
(malformed_line). Resources wobble does not read (an Observation of vital signs, a Condition
whose code is not a tag) are counted as out of scope, and their codes reported as unmapped.
Codes map through `fhir_maps.toml`, extended by the source's `values` in wobble.toml.
"""

from __future__ import annotations

import glob
import gzip
import json
import re
import tomllib
from datetime import UTC, datetime
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import duckdb

from wobble.core.clock import WAREHOUSE_TZ
from wobble.core.config import Config, Source
from wobble.core.errors import ConfigError, WobbleError, first_line
from wobble.core.sql import literal
from wobble.core.warehouse import one_row, scalar
from wobble.ingest.fhir_sql import (
    ICD10,
    LOINC,
    SNOMED,
    TABLE_OF,
    deleted_record_id,
    deleted_table,
    deleted_target,
    in_scope,
    resource_fields,
    resource_steps,
)
from wobble.ingest.identifiers import without_numbers_sql
from wobble.ingest.reader import Fingerprint, Input

_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
DELETED = "deleted"  # the type wobble gives a Bulk Data `deleted` file (Bundles of DELETE requests)
NOT_NDJSON = "(not NDJSON)"  # the type of a file that is not JSON at all, read to fail in one line
OUTCOME = "OperationOutcome"  # a manifest's `error` files: what the server could not export
ENTRIES = 1 << 20  # a resource unpacked from a Bundle is `_ord` line × ENTRIES + its entry's place
# A JSON document over several lines is read whole, whatever max_line_bytes says of an NDJSON line:
# one person's Bundle from Synthea runs to megabytes.
DOCUMENT_BYTES = 1 << 30


def is_read(kind: str) -> bool:
    """Whether wobble reads a file (or part) of this type: one it loads, or one it must fail with
    a reason (a file of Bundles, a file that is not NDJSON), not leave alone as a type it does not use."""
    return kind in TABLE_OF or kind in (DELETED, NOT_NDJSON, "Bundle")


@cache
def default_maps() -> dict[str, dict[str, str]]:
    """The built-in FHIR code maps (field → code → contract value): `fhir_maps.toml`, with the
    clinical codes that mean a concern tag (`concept_tags.toml`: SNOMED CT, ICD-10, LOINC)."""
    here = Path(__file__).parent
    maps = tomllib.loads((here / "fhir_maps.toml").read_text(encoding="utf-8"))
    concepts = tomllib.loads((here / "concept_tags.toml").read_text(encoding="utf-8"))
    # type codes that name no setting are service codes too (read after the class: `resource_steps`)
    maps["service"] = {**maps.get("service_any_setting", {}), **maps.get("service", {})}
    tags = maps.setdefault("tag", {})
    tags.update({f"{SNOMED}|{k}": v for k, v in concepts["snomed"].items()})
    tags.update({f"{ICD10}|{k}": v for k, v in concepts["icd10"].items()})
    tags.update({f"{LOINC}|{k}": v for k, v in concepts["loinc"].items()})
    return maps


def code_maps(source: Source) -> dict[str, dict[str, str]]:
    """Built-in maps, extended and overridden by the source's own `values`."""
    maps = {k: dict(v) for k, v in default_maps().items()}
    for f, mapping in source.values.items():
        maps.setdefault(f, {}).update(mapping)
    return maps


def export_folders(path: Path) -> list[Path]:
    """The exports a FHIR source's `path` names, oldest first: the folder (or file) itself, or each
    folder or file a glob matches (`exports/*`, one folder per weekly `_since` export), ordered by
    their manifests' transactionTime when every one states it, else by name. When only some state
    it, and those sort by name in another order than by time, neither order can be trusted: a
    ConfigError.

    Loaded in that order, each export's deletions apply after the exports taken before it and
    before its own output, so several incremental exports in one run end as the last one left
    the source, whichever order their folder names sort in."""
    if not glob.has_magic(str(path)):
        return [path]
    found = [Path(p) for p in sorted(glob.glob(str(path)))]
    taken = [_manifest(p if p.is_dir() else p.parent).taken_at for p in found]
    if all(t is not None for t in taken):
        return [p for _, p in sorted(zip(taken, found, strict=True), key=lambda t: t[0])]
    timed = [t for t in taken if t is not None]
    if timed != sorted(timed):
        untimed = [p.name for p, t in zip(found, taken, strict=True) if t is None]
        raise ConfigError(f"{path}: the exports' names sort in another order than their manifests' "
                          f"transactionTime, and {', '.join(untimed[:3])}{' …' if len(untimed) > 3 else ''} "
                          "states none, so the order they were taken in is not known (deletions depend on it): "
                          "name the folders so they sort oldest first, or give each a manifest")
    return found


def fhir_files(folder: Path) -> list[tuple[str, Path]]:
    """(resource type, file) for every NDJSON file of an export folder (or a single file).

    The type comes from the export's manifest when there is one, else from the file name
    (`Patient.ndjson`, `Patient.000.ndjson`, `1.Patient.ndjson`), else from the first line.
    A file the manifest lists under `deleted`, or (unlisted) whose first line is a Bundle of
    DELETE requests, is `DELETED`: the resources deleted since an incremental export's `_since`.
    Files of types wobble does not read are listed too (with their type, or ''), so a run can
    say it left them alone.
    """
    folder = Path(folder)
    if folder.is_file():
        # a single file: its type as before, but a manifest beside it may list it as deleted
        paths, listed, deleted = [folder], {}, _manifest(folder.parent).deleted
    elif folder.is_dir():
        listed, deleted = _manifest(folder)[:2]
        paths = sorted(p for p in folder.iterdir() if p.is_file() and (
            p.name.endswith(_SUFFIXES) and p.name != "manifest.json" or p.name in listed or p.name in deleted))
    else:
        return []
    out = [(kind, p) for p in paths for kind in _file_types(p, listed, deleted)]
    return sorted(out, key=lambda t: (load_rank(t[0]), t[1].name))


# Deletions right after the register: a resource both deleted and in the same export's output was
# deleted and then made again, and the output (the state at transactionTime) must win.
_LOAD_ORDER = {"Patient": 0, DELETED: 1, "Encounter": 2, "Appointment": 3, "Flag": 4, "Condition": 5,
               "Observation": 6}


def load_rank(kind: str) -> int:
    """Where a resource type's files load among an export's: the register first, then deletions,
    then activity; types wobble does not read last."""
    return _LOAD_ORDER.get(kind, len(_LOAD_ORDER))


class Manifest(NamedTuple):
    """What an export's manifest.json says of its files: `output` file name → type, the names
    listed under `deleted`, and when the export was taken (transactionTime, which Bulk Data
    requires): its date, and the instant itself (aware; a time without a zone read as UTC), None
    when it does not say or says it in no form of ISO 8601."""

    listed: dict[str, str]
    deleted: set[str]
    taken: str | None
    taken_at: datetime | None = None


def _manifest(folder: Path) -> Manifest:
    """The manifest in `folder` (all empty when there is none, or it cannot be read)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        listed = {Path(str(item.get("url", ""))).name: str(item.get("type", "") or OUTCOME)
                  for item in manifest.get("error") or []}  # the server's errors while exporting
        listed.update({Path(str(item.get("url", ""))).name: str(item.get("type", ""))
                       for item in manifest.get("output", [])})
        deleted = {Path(str(item.get("url", ""))).name for item in manifest.get("deleted") or []}
        text = str(manifest.get("transactionTime") or "")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError, OSError):
        return Manifest({}, set(), None)
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        at = None
    return Manifest(listed, deleted, text[:10] or None, at if at is None or at.tzinfo else at.replace(tzinfo=UTC))


def listed_names(folder: Path) -> set[str]:
    """The names of the files the export's manifest in `folder` lists (output, error, deleted)."""
    manifest = _manifest(folder)
    return {*manifest.listed, *manifest.deleted}


def _file_types(path: Path, listed: dict[str, str], deleted: set[str]) -> list[str]:
    """One file's types: listed as deleted, else the manifest's, else a first line that is a
    Bundle of DELETE requests, else the name's, else every resourceType its lines hold (a file
    named for no type may hold several, as some exporters write: each type loads as a part of
    it), else the first line's."""
    if path.name in deleted:
        return [DELETED]
    if listed.get(path.name) not in (None, "", "Bundle"):
        return [listed[path.name]]
    first = _first_line(path)
    if is_deletions(first):
        return [DELETED]
    named = type_from_name(path.name)
    if named in TABLE_OF or (named != "Bundle" and isinstance(first, dict) and first.get("resourceType") == named):
        return [named]  # (a name wobble does not read counts only when the first line bears it out)
    try:
        return list(holds(path).types)
    except (OSError, duckdb.Error):
        pass  # the load says what is wrong with the file
    if first is None:
        return [NOT_NDJSON]  # read, to fail in one line: empty, binary, or not JSON at all
    return [str(first.get("resourceType", "")) if isinstance(first, dict) else ""]


class Holds(NamedTuple):
    """What a file named for no type holds (`_types_in`): its resource types, and whether it is one
    person's records (one Patient among its resources, a Bundle's entries included)."""

    types: tuple[str, ...]
    one_person: bool


def holds(path: Path) -> Holds:
    """`_types_in` for the file as it is now (OSError, duckdb.Error when it cannot be read)."""
    st = path.stat()
    return _types_in(path, st.st_size, st.st_mtime_ns)


# Files whose types and hash a run remembers: parts load type by type across all files, and each asks again
FILES_REMEMBERED = 1 << 17


@lru_cache(maxsize=FILES_REMEMBERED)
def _types_in(path: Path, size: int, mtime_ns: int) -> Holds:
    """The resource types a file holds, named as FHIR names types: its lines' and, for a line that
    is a Bundle, its entries' (a file that is one JSON document over several lines, such as a
    pretty-printed Bundle, read whole); and whether they are one person's. Planning reads a file
    named for no type once per run, not once per part; size and time key the cache."""
    with duckdb.connect() as con:
        con.execute(f"""CREATE TEMP TABLE docs AS SELECT j::JSON AS j FROM {_lines_scan(DOCUMENT_BYTES)}
                        WHERE json_valid(j) AND json_type(j) = 'OBJECT'""", [str(path)])
        if not scalar(con, "SELECT count(*) FROM docs"):
            con.execute(f"CREATE OR REPLACE TEMP TABLE docs AS SELECT json AS j FROM {_documents_scan(DOCUMENT_BYTES)} "
                        "WHERE json_type(json) = 'OBJECT'", [str(path)])
        found = con.execute("""
            SELECT DISTINCT t FROM (
                SELECT j->>'resourceType' AS t FROM docs WHERE (j->>'resourceType') IS DISTINCT FROM 'Bundle'
                UNION ALL
                SELECT unnest(json_extract_string(j, '$.entry[*].resource.resourceType')) FROM docs
                WHERE (j->>'resourceType') = 'Bundle')
            WHERE regexp_full_match(t, '[A-Z][A-Za-z]*') ORDER BY t""").fetchall()
        bundles, json_at_all, patients = one_row(con, """
            SELECT count(*) FILTER (WHERE (j->>'resourceType') = 'Bundle'), count(*),
                   sum(CASE WHEN (j->>'resourceType') = 'Patient' THEN 1 ELSE len(list_filter(
                       json_extract_string(j, '$.entry[*].resource.resourceType'), lambda t: t = 'Patient')) END)
            FROM docs""")
    one_person = patients == 1
    if not found and bundles:
        return Holds(("Bundle",), one_person)  # Bundles of no resource (PUT or DELETE requests alone): fail, saying so
    if not found and json_at_all:
        return Holds(("",), False)  # JSON, but no FHIR resource (a client's log, a status file): left alone, listed
    if not found:
        raise duckdb.InvalidInputException("no resources")
    return Holds(tuple(r[0] for r in found), one_person)


def _documents_scan(max_bytes: int) -> str:
    """SQL reading a file (the first parameter) of JSON documents, whatever their layout (one
    pretty-printed over several lines, gzipped or not), as one JSON column `json` per document."""
    return f"read_json_objects(?, format = 'unstructured', maximum_object_size = {max_bytes})"


def export_issues(path: Path) -> dict[str, int]:
    """The issues of a file of OperationOutcomes (a manifest's `error` file), counted by severity
    and code ('error: not-found' → 3), never their text, which may name a patient; {} when it
    holds none or cannot be read."""
    try:
        with duckdb.connect() as con:
            rows = con.execute(f"""
                SELECT i.severity || ': ' || coalesce(i.code, 'no code'), count(*) FROM (
                    SELECT unnest(from_json(json_extract(j, '$.issue'), '[{{"severity":"VARCHAR","code":"VARCHAR"}}]'))
                           AS i
                    FROM {_lines_scan(DOCUMENT_BYTES)}
                    WHERE json_valid(j) AND j::JSON->>'resourceType' = {literal(OUTCOME)})
                WHERE i.severity IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1""", [str(path)]).fetchall()
    except duckdb.Error:
        return {}
    return {str(k): int(n) for k, n in rows}


def _lines_scan(max_line_bytes: int) -> str:
    """SQL reading a text file (the first parameter) as one VARCHAR column `j` per line."""
    return (f"read_csv(?, columns = {{'j': 'VARCHAR'}}, delim = '\x1f', quote = '', escape = '', header = false, "
            f"auto_detect = false, strict_mode = false, max_line_size = {max_line_bytes})")


def is_deletions(resource: object) -> bool:
    """Whether a parsed line is a Bundle whose entries are all DELETE requests (a `deleted` file's)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
        return False
    entries = resource.get("entry")
    return isinstance(entries, list) and bool(entries) and all(
        isinstance(e, dict) and isinstance(e.get("request"), dict)
        and str(e["request"].get("method", "")).strip().upper() == "DELETE" for e in entries)


def type_from_name(name: str) -> str:
    """The type a file's name gives: a type wobble reads among its parts, else the first part named
    as FHIR names types ('MedicationRequest'; not 'Aaron697', a person's name in Synthea's files,
    though 'Aaron' would pass: `_file_types` asks the first line to bear it out)."""
    stem = name.split(".ndjson")[0].split(".jsonl")[0].split(".json")[0]
    parts = [p for p in stem.replace("_", ".").replace("-", ".").split(".") if p]
    return next((p for p in parts if p in TABLE_OF), next((p for p in parts if re.fullmatch("[A-Z][A-Za-z]+", p)), ""))


def _first_line(path: Path) -> object:
    """The file's first line, parsed as JSON; None when it cannot be read or is not JSON."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            line = f.readline(1 << 20)
        return json.loads(line)
    except (OSError, ValueError, EOFError):
        return None


# ---------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------


def read_fhir(con: duckdb.DuckDBPyConnection, cfg: Config, source: Source, path: Path, fp: Fingerprint,
              kind: str, others: tuple[str, ...] = ()) -> Input:
    """Read one NDJSON file's resources of type `kind` (`fhir_files`) into `fhir_rows`, and its
    malformed lines into `rejects`; return the ingest `Input` for it. `others` are the other types a
    file named for no type holds: their lines load as parts of their own, and the part that loads
    first reports the lines that are no resource."""
    if not is_read(kind):
        raise WobbleError(f"not a FHIR resource type wobble reads ({kind or 'unknown type'})")
    if kind == "Bundle":
        raise WobbleError("a file of Bundles that hold no resource wobble can name (entries without a resource, "
                          "or Bundles inside Bundles)")
    if fp.size == 0:
        raise WobbleError("the file is empty")
    head = _head(path)
    if b"\x00" in head:
        raise WobbleError("the file is binary, not NDJSON text")
    if kind == DELETED:
        return read_deleted(con, source, path, fp)
    maps = code_maps(source)
    unpacked = _read_lines(con, source, path, fp, kind, others)
    fields = resource_fields(kind, maps, source.system, _manifest(path.parent).taken)
    cols = ", ".join(f"({sql}) AS {name}" for name, sql in fields.items())
    category, mapped = in_scope(kind, maps)
    rows = f"(SELECT _ord, j FROM fhir_json WHERE kind = {literal(kind)})"
    for step in resource_steps(kind, maps):
        rows = f"(SELECT *, {', '.join(f'({sql}) AS {name}' for name, sql in step.items())} FROM {rows})"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_rows AS
        SELECT _ord, {cols}, {category} AS in_category, {mapped} AS mapped FROM {rows}""")
    out_of_scope = int(scalar(con, "SELECT count(*) FROM fhir_rows WHERE NOT (in_category AND mapped)"))
    reported = _reported_codes(con, kind, maps)
    con.execute("DELETE FROM fhir_rows WHERE NOT (in_category AND mapped)")
    for col in ("in_category", "mapped", *(["_passed_over"] if "_passed_over" in fields else [])):
        con.execute(f"ALTER TABLE fhir_rows DROP COLUMN {col}")
    con.execute("DROP TABLE fhir_json")
    fields.pop("_passed_over", None)
    names = [n for n in fields if n != "retracted"]
    types = {n: ("BOOLEAN" if n in ("retracted", "deceased") else "VARCHAR") for n in fields}
    labels = {n: _LABELS.get(n, n) for n in names}
    return Input(
        kind="fhir", table=TABLE_OF[kind], relation="(SELECT * FROM fhir_rows)",
        first_pass="(SELECT * FROM fhir_rows)", fields=types, labels=labels,
        values={k: v for k, v in maps.items()}, defaults={},
        timestamp_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d", timezone=WAREHOUSE_TZ,
        line_sql=f"(_ord // {ENTRIES})" if unpacked else "_ord", rejects="rejects", out_of_scope=out_of_scope,
        system_prefix=f"ref:{source.system}:", required=(),
        extra_unmapped=reported,
    )


def read_deleted(con: duckdb.DuckDBPyConnection, source: Source, path: Path, fp: Fingerprint) -> Input:
    """Read a Bulk Data `deleted` file: one row per DELETE entry of its Bundle lines in `fhir_rows`
    (line, entry, kind, tbl: the table its record lives in, raw_id: the record id the load keeps it
    under, before pseudonymising); lines that are not Bundles with entries, and entries that are
    not a DELETE of one resource, in `rejects` (malformed_line). Table 'deletions': loaded by
    `wobble.ingest.load.load_deletions`."""
    _read_lines(con, source, path, fp, "Bundle")  # (other resources: rejects)
    method, url = "json_extract_string(e.x, '$.request.method')", "json_extract_string(e.x, '$.request.url')"
    kind = deleted_target(url, "kind")
    # only the request goes to quarantine, never an entry's resource (a PUT may carry a whole
    # Patient); a Patient's id is masked as in other files' rows
    shown = (f"'request.method=' || coalesce(left({method}, 20), '') || '; request.url=' || "
             f"regexp_replace(coalesce(left({url}, 200), ''), '(^|/)Patient/[^/]+', '\\1Patient/(masked)')")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_entries AS
        SELECT _ord AS line, e.i AS entry,
               coalesce(upper(trim({method})) = 'DELETE', false) AS is_delete, {kind} AS kind,
               {deleted_target(url, "id")} AS id, {shown} AS shown
        FROM (SELECT _ord, unnest(list_transform(json_extract(j, '$.entry[*]'), lambda x, i: {{'i': i, 'x': x}})) AS e
              FROM fhir_json WHERE kind = 'Bundle')""")
    con.execute("""
        INSERT INTO rejects
        SELECT _ord, NULL, 'a Bundle without entries' FROM fhir_json
        WHERE kind = 'Bundle' AND coalesce(len(json_extract(j, '$.entry[*]')), 0) = 0
        UNION ALL
        SELECT line, shown, CASE WHEN NOT is_delete THEN 'an entry that is not a DELETE request'
                                 ELSE 'a DELETE whose request.url names no one resource (Type/id)' END
        FROM fhir_entries WHERE NOT is_delete OR kind = ''""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_rows AS
        SELECT line, entry, kind, {deleted_table()} AS tbl, {deleted_record_id()} AS raw_id
        FROM (SELECT line, entry, kind, json_object('id', id) AS j FROM fhir_entries WHERE is_delete AND kind <> '')""")
    con.execute("DROP TABLE fhir_entries")
    con.execute("DROP TABLE fhir_json")
    out_of_scope = int(scalar(con, "SELECT count(*) FROM fhir_rows WHERE tbl IS NULL"))
    return Input(
        kind="fhir", table="deletions", relation="(SELECT * FROM fhir_rows)", first_pass="(SELECT * FROM fhir_rows)",
        fields={"record_id": "VARCHAR"}, labels={"record_id": "request.url"}, values={}, defaults={},
        timestamp_format=None, date_format=None, timezone=WAREHOUSE_TZ, line_sql="line", rejects="rejects",
        out_of_scope=out_of_scope, system_prefix=f"ref:{source.system}:", required=(),
    )


def _reported_codes(con: duckdb.DuckDBPyConnection, kind: str, maps: dict[str, dict[str, str]]) -> dict:
    """Codes no map knows that do not make a row fail, so that the report lists them: tag
    resources whose code is not a tag (out of scope); Encounter serviceType/type codes passed
    over for the class; the type codes of elective admissions (out of scope)."""
    queries = {}
    if kind in ("Flag", "Condition", "Observation"):
        queries["tag"] = "SELECT tag, count(*) FROM fhir_rows WHERE in_category AND NOT mapped AND tag IS NOT NULL"
    if kind == "Encounter":
        keys = ", ".join(literal(k) for k in maps.get("service", {})) or "NULL"
        queries["service (class used)"] = (f"SELECT _passed_over, count(*) FROM fhir_rows WHERE in_category "
                                           f"AND _passed_over IS NOT NULL AND service IN ({keys})")
        queries["service (elective admission, not read)"] = (
            "SELECT coalesce(_passed_over, service), count(*) FROM fhir_rows WHERE NOT in_category "
            "AND status IS DISTINCT FROM 'planned'")
    out = {}
    for field, sql in queries.items():
        found = dict(con.execute(f"{sql} GROUP BY 1 ORDER BY 2 DESC LIMIT 200").fetchall())
        if found:
            out[field] = {str(k): int(v) for k, v in found.items()}
    return out


def _read_lines(con: duckdb.DuckDBPyConnection, source: Source, path: Path, fp: Fingerprint, kind: str,
                others: tuple[str, ...] = ()) -> bool:
    """The file's lines as `fhir_json` (one JSON resource each, with its line number) and the lines
    that are not resources of the file's type as `rejects`; a file that is not NDJSON at all fails.
    Lines of the `others` types are left to their own parts, and only the part that loads first
    reports the lines that are no resource. A Bundle's entries are read as resources of the file
    (`_unpack_bundles`, unless `kind` is Bundle, a `deleted` file's); returns whether any were, as
    `_ord` is then no longer the line."""
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE fhir_lines AS
                        SELECT row_number() OVER () AS _ord, j FROM {_lines_scan(source.max_line_bytes)}""",
                    [str(path)])
    except duckdb.Error as exc:
        msg = first_line(exc)
        if "invalid unicode" in str(exc).lower():
            raise WobbleError("the file is not UTF-8 text (FHIR NDJSON must be)") from None
        # DuckDB says so on a line of its own, after the offending line ("Original Line: …")
        if any(line.lower().startswith("maximum line size") for line in str(exc).splitlines()):
            raise WobbleError(f"a line is longer than the {source.max_line_bytes:,}-byte limit "
                              "(raise max_line_bytes in the source block if such resources are expected)") from None
        raise WobbleError(f"cannot read as NDJSON ({msg})") from None
    con.execute("""
        CREATE OR REPLACE TEMP TABLE fhir_lines AS
        SELECT _ord, j, CASE WHEN json_valid(j) THEN json_type(j) = 'OBJECT' ELSE false END AS ok
        FROM fhir_lines""")
    first_ok, blank = one_row(con, "SELECT min(_ord) FILTER (WHERE ok), count(*) FILTER (WHERE j IS NULL) "
                                   "FROM fhir_lines")
    if first_ok is None or first_ok > blank + 1:
        _read_documents(con, path)  # one JSON document over several lines (a pretty-printed Bundle)
    else:
        last_ok = scalar(con, "SELECT ok FROM fhir_lines ORDER BY _ord DESC LIMIT 1")
        if not fp.ends_with_newline and not path.name.endswith(".gz") and not last_ok:
            raise WobbleError("the file ends part-way through a resource: it looks truncated; copy it again")
    # Parse only the lines that are JSON objects (filtered before the cast); the others are
    # malformed lines.
    con.execute("CREATE OR REPLACE TEMP TABLE fhir_json AS SELECT _ord, j FROM fhir_lines WHERE ok")
    con.execute("""CREATE OR REPLACE TEMP TABLE fhir_json AS
                   SELECT _ord, j::JSON AS j, j::JSON->>'resourceType' AS kind FROM fhir_json""")
    unpacked = kind != "Bundle" and bool(scalar(con, "SELECT count(*) FROM fhir_json WHERE kind = 'Bundle'"))
    if unpacked:
        _unpack_bundles(con)
    line = f"_ord // {ENTRIES}" if unpacked else "_ord"
    reports = str(all(load_rank(kind) < load_rank(o) for o in others if is_read(o))).lower()
    elsewhere = ", ".join(literal(t) for t in (kind, *others))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rejects AS
        SELECT _ord AS line,
               {without_numbers_sql("left(j, 500)")} AS csv_line,
               'not a JSON object' AS error
        FROM fhir_lines WHERE NOT ok AND j IS NOT NULL AND {reports}
        UNION ALL
        SELECT {line}, NULL, CASE WHEN upper(left(kind, 1)) IN ('A', 'E', 'I', 'O', 'U') THEN 'an ' ELSE 'a ' END
                           || coalesce(kind, 'resource without resourceType') || ' in a file of {kind} resources'
        FROM fhir_json WHERE kind IS DISTINCT FROM {literal(kind)} AND {"true" if not others else
              f"{reports} AND (kind IS NULL OR kind NOT IN ({elsewhere}))"}""")
    if unpacked:
        con.execute(f"""INSERT INTO rejects SELECT line, NULL, 'a Bundle entry without a resource'
                        FROM fhir_entries WHERE (x->'resource') IS NULL AND {reports}""")
        con.execute("DROP TABLE fhir_entries")
    con.execute("DROP TABLE fhir_lines")
    return unpacked


def _read_documents(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """`fhir_lines` for a file that is not NDJSON but JSON documents over several lines (Synthea's
    default output: one pretty-printed Bundle per person), one row per document; a file that is
    neither fails in one line."""
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE fhir_lines AS
                        SELECT row_number() OVER () AS _ord, json::VARCHAR AS j, json_type(json) = 'OBJECT' AS ok
                        FROM {_documents_scan(DOCUMENT_BYTES)}""", [str(path)])
    except duckdb.Error:
        raise WobbleError("not NDJSON: the first line is not a JSON resource, nor is the file JSON (Bulk Data files "
                          "hold one resource per line; a Bundle over several lines must be whole JSON, and under "
                          f"{DOCUMENT_BYTES >> 20:,} MB)") from None
    if not scalar(con, "SELECT count(*) FILTER (WHERE ok) FROM fhir_lines"):
        raise WobbleError("not NDJSON: the first line is not a JSON resource (Bulk Data files hold one resource "
                          "per line)")


def _unpack_bundles(con: duckdb.DuckDBPyConnection) -> None:
    """Replace each Bundle in `fhir_json` by its entries' resources (a `collection`, `transaction`,
    `searchset`… Bundle, as some exporters write a person's records), numbered `_ord` = line ×
    ENTRIES + entry, the other resources line × ENTRIES. A reference to another entry by its
    `fullUrl` (`urn:uuid:…`, meaningless outside the Bundle) becomes `Type/id` of that entry, and an
    entry's resource without an id takes its urn's, so a transaction Bundle's Encounters find its
    Patient. Entries without a resource stay in `fhir_entries` for `rejects`."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE fhir_entries AS
        SELECT _ord AS line, e.i AS entry, e.x AS x
        FROM (SELECT _ord, unnest(list_transform(json_extract(j, '$.entry[*]'), lambda x, i: {'i': i, 'x': x})) AS e
              FROM fhir_json WHERE kind = 'Bundle')""")
    if scalar(con, "SELECT coalesce(max(entry), 0) FROM fhir_entries") >= ENTRIES:
        raise WobbleError(f"a Bundle holds more than {ENTRIES - 1:,} entries: split it")
    urn = "regexp_extract(x->>'fullUrl', '^urn:[a-z]+:(.+)$', 1)"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_refs AS
        WITH urls AS (
            SELECT line, x->>'fullUrl' AS url,
                   (x->'resource'->>'resourceType') || '/' || coalesce(x->'resource'->>'id', {urn}) AS target
            FROM fhir_entries WHERE (x->>'fullUrl') ILIKE 'urn:%' AND (x->'resource'->>'resourceType') IS NOT NULL),
        refs AS (
            SELECT DISTINCT line, entry, unnest(regexp_extract_all((x->'resource')::VARCHAR, '"(urn:[^"]+)"', 1)) AS url
            FROM fhir_entries WHERE (x->'resource') IS NOT NULL)
        SELECT refs.line, refs.entry, list({{'f': '"' || url || '"', 't': '"' || target || '"'}}) AS pairs
        FROM refs JOIN urls USING (line, url) GROUP BY ALL""")
    resolved = ("CASE WHEN r.pairs IS NULL THEN (e.x->'resource')::VARCHAR ELSE list_reduce(r.pairs, "
                "lambda acc, p: replace(acc, p.f, p.t), (e.x->'resource')::VARCHAR) END")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_json AS
        SELECT _ord * {ENTRIES} AS _ord, j, kind FROM fhir_json WHERE kind IS DISTINCT FROM 'Bundle'
        UNION ALL
        SELECT e.line * {ENTRIES} + e.entry,
               CASE WHEN (e.x->'resource'->>'id') IS NULL AND {urn.replace('x->', 'e.x->')} <> ''
                    THEN json_merge_patch(({resolved})::JSON, json_object('id', {urn.replace('x->', 'e.x->')}))
                    ELSE ({resolved})::JSON END,
               e.x->'resource'->>'resourceType'
        FROM fhir_entries e LEFT JOIN fhir_refs r USING (line, entry) WHERE (e.x->'resource') IS NOT NULL""")
    con.execute("DROP TABLE fhir_refs")


_LABELS = {"patient_ref": "subject", "nhs_number": "identifier(nhs-number)", "alt_id": "identifier",
           "record_id": "id", "occurred_at": "period.start", "recorded_at": "recorded",
           "service": "serviceType/type/class", "professional": "participant", "tag": "code",
           "birth_date": "birthDate", "sex": "gender", "ethnicity_group": "ethnicity",
           "postcode": "address.postalCode", "forename": "name.given", "surname": "name.family",
           "practice_id": "generalPractitioner",
           "died_on": "deceasedDateTime", "deceased": "deceased", "unresolvable_ref": "subject (unresolvable)"}


def _head(path: Path) -> bytes:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(1 << 16)
    except (OSError, EOFError) as exc:
        raise WobbleError(f"cannot read the file ({exc})") from None
