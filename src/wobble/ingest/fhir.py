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
from wobble.core.errors import WobbleError, first_line
from wobble.core.sql import literal
from wobble.ingest.identifiers import without_numbers_sql
from wobble.ingest.reader import Fingerprint, Input

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
UKCORE_ETHNICITY = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
CARECONNECT_ETHNICITY = "https://fhir.hl7.org.uk/STU3/StructureDefinition/CareConnect-EthnicCategory-1"
USCORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
USCORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "icd-10"  # the key prefix for every ICD-10 flavour (WHO, -CM, -UK), codes without dots
TABLE_OF = {"Patient": "persons", "Encounter": "contacts", "Appointment": "contacts", "Flag": "tags",
            "Condition": "tags", "Observation": "tags"}
# Categories that make a Condition or Observation a frontline tag (when its code means one).
TAG_CATEGORIES = {"Condition": ("problem-list-item", "health-concern", "encounter-diagnosis"),
                  "Observation": ("social-history", "survey")}
# Appointment statuses that say what happened (the others are plans: booked, proposed, waitlist…).
APPOINTMENT_DONE = ("fulfilled", "arrived", "checked-in", "noshow", "cancelled", "entered-in-error")
# Encounter.priority (v3 ActPriority) and admitSource codes that make an admission an emergency
# (unplanned) one: emergency, urgent, stat, as soon as possible; admitted from the emergency department.
EMERGENCY_PRIORITY = ("EM", "UR", "S", "A")
EMERGENCY_ADMIT_SOURCE = ("emd",)
INPATIENT_CLASSES = ("IMP", "ACUTE", "NONAC")
_SUFFIXES = (".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")


@cache
def default_maps() -> dict[str, dict[str, str]]:
    """The built-in FHIR code maps (field → code → contract value): `fhir_maps.toml`, with the
    clinical codes that mean a concern tag (`concept_tags.toml`: SNOMED CT, ICD-10, LOINC)."""
    here = Path(__file__).parent
    maps = tomllib.loads((here / "fhir_maps.toml").read_text(encoding="utf-8"))
    concepts = tomllib.loads((here / "concept_tags.toml").read_text(encoding="utf-8"))
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
    order = {"Patient": 0, "Encounter": 1, "Appointment": 2, "Flag": 3, "Condition": 4, "Observation": 5}
    return sorted(out, key=lambda t: (order.get(t[0], 6), t[1].name))


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
    """SQL list of candidate keys ('system|code', then 'code') from a list of codings; an ICD-10
    code (any flavour) also as 'icd-10|' + the code without its dot, then its first four and
    first three characters (so 'F32' in a map stands for every depressive episode)."""
    icd = "upper(replace(c.code, '.', ''))"
    icd_keys = (f"CASE WHEN c.system LIKE '%icd-10%' OR c.system LIKE '%icd10%' THEN "
                f"['{ICD10}|' || {icd}, '{ICD10}|' || left({icd}, 4), '{ICD10}|' || left({icd}, 3)] "
                "ELSE []::VARCHAR[] END")
    return (f"flatten(list_transform(coalesce({list_sql}, []), "
            f"lambda c: list_concat([c.system || '|' || c.code, c.code], {icd_keys})))")


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


def _fields(kind: str, maps: dict[str, dict[str, str]], system: str) -> dict[str, str]:
    """Contract field → SQL over `j`, for one resource type."""
    if kind == "Patient":
        return _patient_fields(system)
    if kind == "Encounter":
        return _encounter_fields(maps)
    if kind == "Appointment":
        return _appointment_fields(maps)
    return _tag_fields(kind, maps)


def _retracted(path: str = "$.status") -> str:
    return f"coalesce({_s(path)} = 'entered-in-error', false)"


def _patient_fields(system: str) -> dict[str, str]:
    """Patient → persons. Without an NHS number, the first other identifier; without any, the
    resource id in this source (stable across its exports), so nobody is dropped for lacking one."""
    ids = f"from_json(json_extract(j, '$.identifier'), '{_IDENTIFIERS}')"
    nhs = f"list_filter({ids}, lambda i: i.system = {literal(NHS_NUMBER_SYSTEM)})"
    other = (f"list_filter({ids}, lambda i: coalesce(i.system, '') <> {literal(NHS_NUMBER_SYSTEM)} "
             "AND i.value IS NOT NULL)")
    ext = f"from_json(json_extract(j, '$.extension'), '{_EXTENSIONS}')"
    uk = (f"list_filter({ext}, lambda e: e.url IN ({literal(UKCORE_ETHNICITY)}, {literal(CARECONNECT_ETHNICITY)}))[1]"
          ".valueCodeableConcept.coding[1].code")

    def omb(url: str) -> str:
        return (f"list_transform(list_filter(list_filter({ext}, lambda e: e.url = {literal(url)})[1].extension, "
                "lambda x: x.url = 'ombCategory'), lambda x: x.valueCoding.code)")

    race, hispanic = omb(USCORE_RACE), f"list_contains({omb(USCORE_ETHNICITY)}, '2135-2')"
    # US Core: two or more OMB races is Mixed; Hispanic or Latino with no race stated is Other
    # (ONS groups have no Hispanic category)
    us = (f"CASE WHEN len({race}) > 1 THEN 'Mixed' WHEN len({race}) = 1 THEN {race}[1] "
          f"WHEN coalesce({hispanic}, false) THEN '2131-1' END")
    birth = _s("$.birthDate")
    gp_shape = '[{"reference":"VARCHAR","identifier":{"value":"VARCHAR"}}]'
    practices = f"from_json(json_extract(j, '$.generalPractitioner'), '{gp_shape}')"
    own = literal(f"resource:{system}|Patient/")
    return {
        "patient_ref": "'Patient/' || " + _s("$.id"),
        "nhs_number": f"{nhs}[1].value",
        "alt_id": f"CASE WHEN coalesce(len({nhs}), 0) = 0 THEN coalesce({other}[1].system || '|' || {other}[1].value, "
                  f"{own} || {_s('$.id')}) END",
        # a partial birth date (year, or year-month) is enough for the birth year
        "birth_date": f"CASE length({birth}) WHEN 4 THEN {birth} || '-07-01' "
                      f"WHEN 7 THEN {birth} || '-15' ELSE {birth} END",
        "sex": _s("$.gender"),
        "ethnicity_group": f"coalesce({uk}, {us})",
        "postcode": _s("$.address[0].postalCode"),
        # identity only: read into the vault, never the warehouse
        "forename": _s("$.name[0].given[0]"),
        "surname": _s("$.name[0].family"),
        "practice_id": f"coalesce({practices}[1].identifier.value, "
                       f"regexp_extract({practices}[1].reference, '[^/]+$'))",
        "died_on": f"left({_s('$.deceasedDateTime')}, 10)",
    }


def _admission_class() -> str:
    """Candidate keys from Encounter.class, where an inpatient class becomes 'admission:emergency'
    when its priority or admitSource says it was unplanned, else 'admission:elective' (which is
    not a wobble service: out of scope, counted)."""
    urgent = (f"list_has_any({_concept_codes('$.priority')}, [{', '.join(map(literal, EMERGENCY_PRIORITY))}]) "
              f"OR list_has_any({_concept_codes('$.hospitalization.admitSource')}, "
              f"[{', '.join(map(literal, EMERGENCY_ADMIT_SOURCE))}])")
    return (f"CASE WHEN {_s('$.class.code')} IN ({', '.join(map(literal, INPATIENT_CLASSES))}) THEN "
            f"[CASE WHEN {urgent} THEN 'admission:emergency' ELSE 'admission:elective' END] "
            f"ELSE {_coding_codes('$.class')} END")


def _encounter_fields(maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Encounter → contacts: the first coding that maps wins, across serviceType, type and class."""
    specific = f"list_concat({_concept_codes('$.serviceType')}, {_concepts_codes('$.type')})"
    service_map = maps.get("service", {})
    return {
        "record_id": _s("$.id"),
        "patient_ref": _reference("$.subject.reference", "Patient"),
        "occurred_at": _fhir_time("$.period.start"),
        "recorded_at": _fhir_time("$.meta.lastUpdated"),
        "service": _pick(f"list_concat({specific}, {_admission_class()})", service_map),
        "status": f"CASE WHEN {_retracted()} THEN NULL ELSE {_s('$.status')} END",
        "mode": _pick(f"list_concat({_concepts_codes('$.type')}, {_coding_codes('$.class')})", maps.get("mode", {})),
        "professional": f"coalesce({_s('$.participant[0].individual.reference')}, "
                        f"{_s('$.participant[0].individual.identifier.value')})",
        "retracted": _retracted(),
        # a serviceType or type code no map knows, where the class decided instead (reported)
        "_passed_over": _unmapped_first(specific, service_map),
    }


def _appointment_fields(maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Appointment → contacts: what happened to a booked appointment (fulfilled, noshow,
    cancelled); its service from serviceType, serviceCategory, specialty or appointmentType."""
    shape = '[{"actor":{"reference":"VARCHAR","identifier":{"value":"VARCHAR"}}}]'
    actors = f"from_json(json_extract(j, '$.participant'), '{shape}')"

    def actor(kind: str) -> str:
        return f"list_filter({actors}, lambda p: p.actor.reference LIKE '%{kind}/%')[1].actor"

    service = (f"list_concat({_concepts_codes('$.serviceType')}, {_concepts_codes('$.serviceCategory')}, "
               f"{_concepts_codes('$.specialty')}, {_concept_codes('$.appointmentType')})")
    return {
        "record_id": "'Appointment/' || " + _s("$.id"),
        "patient_ref": f"regexp_extract({actor('Patient')}.reference, 'Patient/[^/]+$')",
        "occurred_at": _fhir_time("$.start"),
        "recorded_at": f"coalesce(CASE WHEN {_s('$.meta.lastUpdated')} IS NOT NULL THEN "
                       f"{_fhir_time('$.meta.lastUpdated')} END, {_fhir_time('$.created')})",
        "service": _pick(service, maps.get("service", {})),
        "status": f"CASE WHEN {_retracted()} THEN NULL ELSE {_s('$.status')} END",
        "mode": "NULL::VARCHAR",
        "professional": f"coalesce({actor('Practitioner')}.reference, {actor('Practitioner')}.identifier.value)",
        "retracted": _retracted(),
    }


def _tag_fields(kind: str, maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Flag, Condition, Observation → tags, through the tag map. An Observation's candidates are
    its code with its answer ('question=answer'), then its code, then the answer alone."""
    recorded = {"Flag": ("$.meta.lastUpdated", "$.period.start"),
                "Condition": ("$.recordedDate", "$.meta.lastUpdated", "$.onsetDateTime"),
                "Observation": ("$.issued", "$.meta.lastUpdated", "$.effectiveDateTime")}[kind]
    retracted = _retracted()
    if kind == "Condition":
        retracted = f"coalesce({_s('$.verificationStatus.coding[0].code')} = 'entered-in-error', false)"
    return {
        "record_id": _s("$.id"),
        "patient_ref": _reference("$.subject.reference", "Patient"),
        "recorded_at": "coalesce(" + ", ".join(f"CASE WHEN {_s(p)} IS NOT NULL THEN {_fhir_time(p)} END"
                                               for p in recorded) + ")",
        "tag": _pick(_tag_codes(kind), maps.get("tag", {})),
        "retracted": retracted,
    }


def _tag_codes(kind: str) -> str:
    """SQL: the candidate keys of a tag resource's code (and, for an Observation, its answer)."""
    if kind != "Observation":
        return _concept_codes("$.code")
    answer = (f"{_s('$.code.coding[0].system')} || '|' || {_s('$.code.coding[0].code')} || '=' || "
              f"{_s('$.valueCodeableConcept.coding[0].code')}")
    return (f"list_concat(list_filter([{answer}], lambda v: v IS NOT NULL), {_concept_codes('$.code')}, "
            f"{_concept_codes('$.valueCodeableConcept')})")


def _unmapped_first(candidates: str, mapping: dict[str, str]) -> str:
    """SQL: the first candidate when none of `candidates` maps (else NULL)."""
    keys = ", ".join(literal(k) for k in mapping) or "NULL"
    cands = f"list_filter({candidates}, lambda v: v IS NOT NULL)"
    return f"CASE WHEN len(list_filter({cands}, lambda v: v IN ({keys}))) = 0 THEN {cands}[1] END"


def _in_scope(kind: str, maps: dict[str, dict[str, str]]) -> tuple[str, str]:
    """SQL: (is this resource of a kind wobble reads, does its code map). Tags need a category
    (Condition, Observation) and a code in the tag map; an Appointment or Encounter must have
    happened (not booked or planned); an elective admission is not a wobble service. Patients
    always qualify."""
    if kind == "Encounter":
        keys = ", ".join(literal(k) for k in maps.get("service", {})) or "NULL"
        service = f"list_concat({_concept_codes('$.serviceType')}, {_concepts_codes('$.type')}, {_admission_class()})"
        elective = (f"len(list_filter({service}, lambda v: v IN ({keys}))) = 0 "
                    f"AND list_contains({service}, 'admission:elective')")
        planned = f"coalesce({_s('$.status')} = 'planned', false)"  # it has not happened (yet)
        return f"NOT ({elective} OR {planned})", "true"
    if kind == "Appointment":
        return f"coalesce({_s('$.status')} IN ({', '.join(map(literal, APPOINTMENT_DONE))}), false)", "true"
    if kind not in ("Flag", "Condition", "Observation"):
        return "true", "true"
    keys = ", ".join(literal(k) for k in maps.get("tag", {})) or "NULL"
    mapped = f"len(list_filter({_tag_codes(kind)}, lambda v: v IN ({keys}))) > 0"
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
    fields = _fields(kind, maps, source.system)
    cols = ", ".join(f"({sql}) AS {name}" for name, sql in fields.items())
    category, mapped = _in_scope(kind, maps)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE fhir_rows AS
        SELECT _ord, {cols}, {category} AS in_category, {mapped} AS mapped
        FROM fhir_json WHERE kind = {literal(kind)}""")
    out_of_scope = int(con.execute("SELECT count(*) FROM fhir_rows WHERE NOT (in_category AND mapped)")
                       .fetchone()[0])
    reported = _reported_codes(con, kind, maps)
    con.execute("DELETE FROM fhir_rows WHERE NOT (in_category AND mapped)")
    for col in ("in_category", "mapped", *(["_passed_over"] if "_passed_over" in fields else [])):
        con.execute(f"ALTER TABLE fhir_rows DROP COLUMN {col}")
    con.execute("DROP TABLE fhir_json")
    fields.pop("_passed_over", None)
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
        extra_unmapped=reported,
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
        msg = first_line(exc)
        if "invalid unicode" in str(exc).lower():
            raise WobbleError("the file is not UTF-8 text (FHIR NDJSON must be)") from None
        if "maximum line size" in msg.lower():
            raise WobbleError(f"a line is longer than the {source.max_line_bytes:,}-byte limit "
                              "(raise max_line_bytes in the source block if such resources are expected)") from None
        raise WobbleError(f"cannot read as NDJSON ({msg})") from None
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
