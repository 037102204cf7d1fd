"""FHIR R4 Bulk Data (`$export`) NDJSON → the rows ingest validates and loads.

A Bulk Data export is a folder of newline-delimited JSON files, one resource per line, each file
holding one resource type (e.g. `Patient.ndjson`, `Encounter.000.ndjson`, gzipped or not).
wobble reads:

- Patient → persons: NHS number identifier (else the first other identifier, pseudonymised and
  counted), birthDate (year only), gender, UK Core ethnic category extension or US Core race,
  address postalCode (only to look up the LSOA; never stored), generalPractitioner (practice),
  deceasedDateTime;
- Encounter → contacts: subject, class (v3 ActCode), serviceType and type codings, status,
  period.start, meta.lastUpdated (as recorded_at), first participant individual (continuity);
- Flag, Condition (category problem-list-item or health-concern) and Observation (category
  social-history) → tags, through the code → tag map.

Each line becomes one row of contract fields in temp table `fhir_rows` (`_ord` is its line
number); lines that are not JSON objects of the file's type go to temp table `rejects`
(malformed_line). Resources wobble does not read (an Observation of vital signs, a Condition
whose code is not a tag) are counted as out of scope, and their codes reported as unmapped.
Codes map through `fhir_maps.toml`, extended by the source's `values` in wobble.toml.
"""

from __future__ import annotations

import gzip
import json
import tomllib
from functools import cache
from pathlib import Path

import duckdb

from wobble.core.config import Config, Source
from wobble.core.errors import WobbleError
from wobble.core.sql import literal
from wobble.ingest.identifiers import without_numbers_sql
from wobble.ingest.reader import Fingerprint, Input

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
UKCORE_ETHNICITY = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
USCORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
TABLE_OF = {"Patient": "persons", "Encounter": "contacts", "Flag": "tags", "Condition": "tags",
            "Observation": "tags"}
# Categories that make a Condition or Observation a frontline tag.
TAG_CATEGORIES = {"Condition": ("problem-list-item", "health-concern"), "Observation": ("social-history",)}
_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


@cache
def default_maps() -> dict[str, dict[str, str]]:
    """The built-in FHIR code maps (field → code → contract value)."""
    return tomllib.loads((Path(__file__).parent / "fhir_maps.toml").read_text(encoding="utf-8"))


def code_maps(source: Source) -> dict[str, dict[str, str]]:
    """Built-in maps, extended and overridden by the source's own `values`."""
    maps = {k: dict(v) for k, v in default_maps().items()}
    for f, mapping in source.values.items():
        maps.setdefault(f, {}).update(mapping)
    return maps


def fhir_files(folder: Path) -> list[tuple[str, Path]]:
    """(resource type, file) for every NDJSON file of an export folder (or a single file).

    The type comes from the export's manifest when there is one, else from the file name
    (`Patient.ndjson`, `Patient.000.ndjson`, `1.Patient.ndjson`), else from the first line.
    Files of types wobble does not read are listed too (with their type, or ''), so a run can
    say it left them alone.
    """
    folder = Path(folder)
    if folder.is_file():
        paths = [folder]
    elif folder.is_dir():
        paths = sorted(p for p in folder.iterdir() if p.name.endswith(_SUFFIXES))
    else:
        return []
    manifest = {}
    mf = folder / "manifest.json" if folder.is_dir() else None
    if mf and mf.exists():
        try:
            for item in json.loads(mf.read_text(encoding="utf-8")).get("output", []):
                manifest[Path(str(item.get("url", ""))).name] = str(item.get("type", ""))
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            pass
    out = [(manifest.get(p.name) or _type_from_name(p.name) or _type_from_first_line(p), p) for p in paths]
    order = {"Patient": 0, "Encounter": 1, "Flag": 2, "Condition": 3, "Observation": 4}
    return sorted(out, key=lambda t: (order.get(t[0], 5), t[1].name))


def _type_from_name(name: str) -> str:
    stem = name.split(".ndjson")[0].split(".jsonl")[0]
    parts = [p for p in stem.replace("_", ".").replace("-", ".").split(".") if p]
    return next((p for p in parts if p in TABLE_OF), next((p for p in parts if p[:1].isupper()), ""))


def _type_from_first_line(path: Path) -> str:
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            line = f.readline(1 << 20)
        return str(json.loads(line).get("resourceType", ""))
    except (OSError, ValueError, AttributeError, EOFError):
        return ""


# ---------------------------------------------------------------------------------------------
# SQL over one resource (`j`, JSON)
# ---------------------------------------------------------------------------------------------

_CODING = '[{"system":"VARCHAR","code":"VARCHAR"}]'
_CONCEPTS = '[{"coding":' + _CODING + '}]'
_IDENTIFIERS = '[{"system":"VARCHAR","value":"VARCHAR"}]'
_EXTENSIONS = ('[{"url":"VARCHAR","valueCodeableConcept":{"coding":' + _CODING + '},'
               '"extension":[{"url":"VARCHAR","valueCoding":{"system":"VARCHAR","code":"VARCHAR"}}]}]')


def _s(path: str) -> str:
    """A string at a JSON path."""
    return f"json_extract_string(j, {literal(path)})"


def _codes(list_sql: str) -> str:
    """SQL list of candidate keys ('system|code', then 'code') from a list of codings."""
    return (f"flatten(list_transform(coalesce({list_sql}, []), "
            "lambda c: [c.system || '|' || c.code, c.code]))")


def _concept_codes(path: str) -> str:
    """Candidate keys from one CodeableConcept at `path`."""
    return _codes(f"from_json(json_extract(j, {literal(path + '.coding')}), '{_CODING}')")


def _concepts_codes(path: str) -> str:
    """Candidate keys from a list of CodeableConcepts at `path`."""
    concepts = f"from_json(json_extract(j, {literal(path)}), '{_CONCEPTS}')"
    return f"flatten(list_transform(coalesce({concepts}, []), lambda cc: {_codes('cc.coding')}))"


def _coding_codes(path: str) -> str:
    """Candidate keys from one Coding at `path` (Encounter.class)."""
    return (f"CASE WHEN {_s(path + '.code')} IS NULL THEN []::VARCHAR[] ELSE "
            f"[{_s(path + '.system')} || '|' || {_s(path + '.code')}, {_s(path + '.code')}] END")


def _pick(candidates: str, mapping: dict[str, str]) -> str:
    """The first candidate key the map knows; else the first candidate (reported as unmapped)."""
    cands = f"list_filter({candidates}, lambda v: v IS NOT NULL)"
    if not mapping:
        return f"{cands}[1]"
    keys = ", ".join(literal(k) for k in mapping)
    return f"coalesce(list_filter({cands}, lambda v: v IN ({keys}))[1], {cands}[1])"


def _fhir_time(path: str) -> str:
    """A FHIR date or dateTime as London wall-clock text 'YYYY-MM-DD HH:MM:SS'; text that does
    not parse is kept as it is, so validation reports it as an impossible date."""
    raw = _s(path)
    offset = f"regexp_matches({raw}, '(Z|[+-][0-9][0-9]:[0-9][0-9])$')"
    parsed = (f"CASE WHEN {offset} THEN timezone('Europe/London', try_cast({raw} AS TIMESTAMPTZ)) "
              f"ELSE try_cast({raw} AS TIMESTAMP) END")
    return f"coalesce(strftime({parsed}, '%Y-%m-%d %H:%M:%S'), {raw})"


def _reference(path: str, kind: str) -> str:
    """'Kind/id' from a reference, whether relative or a full URL."""
    return f"regexp_extract({_s(path)}, {literal(kind + '/[^/]+$')})"


def _fields(kind: str, maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Contract field → SQL over `j`, for one resource type."""
    retracted = f"coalesce({_s('$.status')} = 'entered-in-error', false)"
    if kind == "Patient":
        ids = f"from_json(json_extract(j, '$.identifier'), '{_IDENTIFIERS}')"
        nhs = f"list_filter({ids}, lambda i: i.system = {literal(NHS_NUMBER_SYSTEM)})"
        other = (f"list_filter({ids}, lambda i: coalesce(i.system, '') <> {literal(NHS_NUMBER_SYSTEM)} "
                 "AND i.value IS NOT NULL)")
        ext = f"from_json(json_extract(j, '$.extension'), '{_EXTENSIONS}')"
        uk = (f"list_filter({ext}, lambda e: e.url = {literal(UKCORE_ETHNICITY)})[1]"
              ".valueCodeableConcept.coding[1].code")
        omb = (f"list_transform(list_filter(list_filter({ext}, lambda e: e.url = {literal(USCORE_RACE)})[1].extension, "
               "lambda x: x.url = 'ombCategory'), lambda x: x.valueCoding.code)")
        birth = _s("$.birthDate")
        gp_shape = '[{"reference":"VARCHAR","identifier":{"value":"VARCHAR"}}]'
        practices = f"from_json(json_extract(j, '$.generalPractitioner'), '{gp_shape}')"
        return {
            "patient_ref": "'Patient/' || " + _s("$.id"),
            "nhs_number": f"{nhs}[1].value",
            "alt_id": f"CASE WHEN len({nhs}) = 0 THEN {other}[1].system || '|' || {other}[1].value END",
            # a partial birth date (year, or year-month) is enough for the birth year
            "birth_date": f"CASE length({birth}) WHEN 4 THEN {birth} || '-07-01' "
                          f"WHEN 7 THEN {birth} || '-15' ELSE {birth} END",
            "sex": _s("$.gender"),
            "ethnicity_group": f"coalesce({uk}, CASE WHEN len({omb}) > 1 THEN 'Mixed' ELSE {omb}[1] END)",
            "postcode": _s("$.address[0].postalCode"),
            # identity only: read into the vault, never the warehouse
            "forename": _s("$.name[0].given[0]"),
            "surname": _s("$.name[0].family"),
            "practice_id": f"coalesce({practices}[1].identifier.value, "
                           f"regexp_extract({practices}[1].reference, '[^/]+$'))",
            "died_on": f"left({_s('$.deceasedDateTime')}, 10)",
        }
    if kind == "Encounter":
        service = _pick(f"list_concat({_concept_codes('$.serviceType')}, {_concepts_codes('$.type')}, "
                        f"{_coding_codes('$.class')})", maps.get("service", {}))
        mode = _pick(f"list_concat({_concepts_codes('$.type')}, {_coding_codes('$.class')})", maps.get("mode", {}))
        return {
            "record_id": _s("$.id"),
            "patient_ref": _reference("$.subject.reference", "Patient"),
            "occurred_at": _fhir_time("$.period.start"),
            "recorded_at": _fhir_time("$.meta.lastUpdated"),
            "service": service,
            "status": f"CASE WHEN {retracted} THEN NULL ELSE {_s('$.status')} END",
            "mode": mode,
            "professional": f"coalesce({_s('$.participant[0].individual.reference')}, "
                            f"{_s('$.participant[0].individual.identifier.value')})",
            "retracted": retracted,
        }
    # Flag, Condition, Observation → tags
    recorded = {"Flag": ("$.meta.lastUpdated", "$.period.start"),
                "Condition": ("$.recordedDate", "$.meta.lastUpdated", "$.onsetDateTime"),
                "Observation": ("$.issued", "$.meta.lastUpdated", "$.effectiveDateTime")}[kind]
    if kind == "Condition":
        retracted = f"coalesce({_s('$.verificationStatus.coding[0].code')} = 'entered-in-error', false)"
    return {
        "record_id": _s("$.id"),
        "patient_ref": _reference("$.subject.reference", "Patient"),
        "recorded_at": "coalesce(" + ", ".join(f"CASE WHEN {_s(p)} IS NOT NULL THEN {_fhir_time(p)} END"
                                               for p in recorded) + ")",
        "tag": _pick(_concept_codes("$.code"), maps.get("tag", {})),
        "retracted": retracted,
    }


def _in_scope(kind: str, maps: dict[str, dict[str, str]]) -> tuple[str, str]:
    """SQL: (is this resource of a kind wobble reads, does its code map). Tags need a category
    (Condition, Observation) and a code in the tag map; other read types always qualify."""
    if kind not in ("Flag", "Condition", "Observation"):
        return "true", "true"
    keys = ", ".join(literal(k) for k in maps.get("tag", {})) or "NULL"
    mapped = f"len(list_filter({_concept_codes('$.code')}, lambda v: v IN ({keys}))) > 0"
    if kind == "Flag":
        return "true", mapped
    cats = ", ".join(literal(c) for c in TAG_CATEGORIES[kind])
    category = (f"len(list_filter({_concepts_codes('$.category')}, "
                f"lambda v: regexp_extract(v, '[^|]+$') IN ({cats}))) > 0")
    return category, mapped


# ---------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------


def read_fhir(con: duckdb.DuckDBPyConnection, cfg: Config, source: Source, path: Path, fp: Fingerprint) -> Input:
    """Read one NDJSON file into `fhir_rows` and `rejects`; return the ingest `Input` for it."""
    kind = next((k for k, p in fhir_files(path) if p == path), "")
    if kind not in TABLE_OF:
        raise WobbleError(f"not a FHIR resource type wobble reads ({kind or 'unknown type'})")
    if fp.size == 0:
        raise WobbleError("the file is empty")
    head = _head(path)
    if b"\x00" in head:
        raise WobbleError("the file is binary, not NDJSON text")
    maps = code_maps(source)
    _read_lines(con, source, path, fp, kind)
    fields = _fields(kind, maps)
    cols = ", ".join(f"({sql}) AS {name}" for name, sql in fields.items())
    category, mapped = _in_scope(kind, maps)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_rows AS
        SELECT _ord, {cols}, {category} AS in_category, {mapped} AS mapped
        FROM fhir_json WHERE kind = {literal(kind)}""")
    out_of_scope = int(con.execute("SELECT count(*) FROM fhir_rows WHERE NOT (in_category AND mapped)")
                       .fetchone()[0])
    # Codes of resources that are tags but whose code the map does not know: report them.
    unmapped_tags = {}
    if kind in ("Flag", "Condition", "Observation"):
        unmapped_tags = dict(con.execute(
            "SELECT tag, count(*) FROM fhir_rows WHERE in_category AND NOT mapped AND tag IS NOT NULL "
            "GROUP BY tag ORDER BY 2 DESC LIMIT 200").fetchall())
    con.execute("DELETE FROM fhir_rows WHERE NOT (in_category AND mapped)")
    con.execute("ALTER TABLE fhir_rows DROP COLUMN in_category")
    con.execute("ALTER TABLE fhir_rows DROP COLUMN mapped")
    con.execute("DROP TABLE fhir_json")
    names = [n for n in fields if n != "retracted"]
    types = {n: ("BOOLEAN" if n == "retracted" else "VARCHAR") for n in fields}
    labels = {n: _LABELS.get(n, n) for n in names}
    return Input(
        kind="fhir", table=TABLE_OF[kind], relation="(SELECT * FROM fhir_rows)",
        first_pass="(SELECT * FROM fhir_rows)", fields=types, labels=labels,
        values={k: v for k, v in maps.items()}, defaults={},
        timestamp_format="%Y-%m-%d %H:%M:%S", date_format="%Y-%m-%d", timezone="Europe/London",
        line_sql="_ord", rejects="rejects", out_of_scope=out_of_scope,
        system_prefix=f"ref:{source.system}:", required=(),
        extra_unmapped={"tag": {str(k): int(v) for k, v in unmapped_tags.items()}} if unmapped_tags else {},
    )


def _read_lines(con: duckdb.DuckDBPyConnection, source: Source, path: Path, fp: Fingerprint, kind: str) -> None:
    """The file's lines as `fhir_json` (one JSON resource each, with its line number) and the lines
    that are not resources of the file's type as `rejects`; a file that is not NDJSON at all fails."""
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE fhir_lines AS
            SELECT row_number() OVER () AS _ord, j FROM read_csv(?, columns = {{'j': 'VARCHAR'}},
                delim = ?, quote = '', escape = '', header = false, auto_detect = false,
                strict_mode = false, max_line_size = {source.max_line_bytes})""",
            [str(path), "\x1f"],
        )
    except duckdb.Error as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "invalid unicode" in str(exc).lower():
            raise WobbleError("the file is not UTF-8 text (FHIR NDJSON must be)") from None
        if "maximum line size" in msg.lower():
            raise WobbleError(f"a line is longer than the {source.max_line_bytes:,}-byte limit "
                              "(raise max_line_bytes in the source block if such resources are expected)") from None
        raise WobbleError(f"cannot read as NDJSON ({msg[:200]})") from None
    con.execute("""
        CREATE OR REPLACE TEMP TABLE fhir_lines AS
        SELECT _ord, j, CASE WHEN json_valid(j) THEN json_type(j) = 'OBJECT' ELSE false END AS ok
        FROM fhir_lines""")
    first_ok, blank = con.execute("SELECT min(_ord) FILTER (WHERE ok), count(*) FILTER (WHERE j IS NULL) "
                                  "FROM fhir_lines").fetchone()
    if first_ok is None or first_ok > blank + 1:
        raise WobbleError("not NDJSON: the first line is not a JSON resource (a pretty-printed JSON file, "
                          "or a Bundle? Bulk Data files hold one resource per line)")
    last_ok = con.execute("SELECT ok FROM fhir_lines ORDER BY _ord DESC LIMIT 1").fetchone()[0]
    if not fp.ends_with_newline and not path.name.endswith(".gz") and not last_ok:
        raise WobbleError("the file ends part-way through a resource: it looks truncated; copy it again")
    # Parse only the lines that are JSON objects (filtered before the cast); the others are
    # malformed lines.
    con.execute("CREATE OR REPLACE TEMP TABLE fhir_json AS SELECT _ord, j FROM fhir_lines WHERE ok")
    con.execute("""CREATE OR REPLACE TEMP TABLE fhir_json AS
                   SELECT _ord, j::JSON AS j, j::JSON->>'resourceType' AS kind FROM fhir_json""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rejects AS
        SELECT _ord AS line,
               {without_numbers_sql("left(j, 500)")} AS csv_line,
               'not a JSON object' AS error
        FROM fhir_lines WHERE NOT ok AND j IS NOT NULL
        UNION ALL
        SELECT _ord, NULL, 'a ' || coalesce(kind, 'resource without resourceType') || ' in a file of {kind} resources'
        FROM fhir_json WHERE kind IS DISTINCT FROM {literal(kind)}""")
    con.execute("DROP TABLE fhir_lines")


_LABELS = {"patient_ref": "subject", "nhs_number": "identifier(nhs-number)", "alt_id": "identifier",
           "record_id": "id", "occurred_at": "period.start", "recorded_at": "recorded",
           "service": "serviceType/type/class", "professional": "participant", "tag": "code",
           "birth_date": "birthDate", "sex": "gender", "ethnicity_group": "ethnicity",
           "postcode": "address.postalCode", "forename": "name.given", "surname": "name.family",
           "practice_id": "generalPractitioner",
           "died_on": "deceasedDateTime"}


def _head(path: Path) -> bytes:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read(1 << 16)
    except (OSError, EOFError) as exc:
        raise WobbleError(f"cannot read the file ({exc})") from None
