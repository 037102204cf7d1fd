"""SQL over one FHIR resource (`j`, JSON) → contract fields: what `wobble.ingest.fhir` reads from
each resource type wobble takes (Patient, Encounter, Appointment, Flag, Condition, Observation),
and whether a resource is in scope. Pure string building: nothing here runs a query."""

from __future__ import annotations

from wobble.core.clock import WAREHOUSE_TZ
from wobble.core.sql import literal

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
# UK Core's, and the one CareConnect (STU3) and older GP systems still send
NHS_NUMBER_SYSTEMS = (NHS_NUMBER_SYSTEM, "http://fhir.nhs.net/Id/nhs-number")
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
# UK Core admission method (NHS Data Dictionary): 2x codes (21-28, 2A-2D) are emergency admissions;
# 11-13 elective, 31-32 maternity, 81-83 other.
UKCORE_ADMISSION_METHOD = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod"
EMERGENCY_ADMISSION_METHOD = "2%"

_CODING = '[{"system":"VARCHAR","code":"VARCHAR"}]'
_CONCEPTS = '[{"coding":' + _CODING + '}]'
_CONCEPTS_OR_REFS = '[{"coding":' + _CODING + ',"concept":{"coding":' + _CODING + '}}]'  # R5 CodeableReference
_IDENTIFIERS = '[{"use":"VARCHAR","system":"VARCHAR","value":"VARCHAR","period":{"end":"VARCHAR"}}]'
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


def _any_codes(path: str) -> str:
    """Candidate keys from whatever FHIR R4 or R5 puts at `path`: a Coding (R4 Encounter.class), a
    CodeableConcept (R4 Encounter.serviceType), a list of CodeableConcepts (R5 Encounter.class, R4
    Appointment.serviceType) or a list of CodeableReferences (R5 serviceType: their `concept`).
    JSON of another shape reads as no codes, so at most one of the three parts has any."""
    items = f"coalesce(from_json(json_extract(j, {literal(path)}), '{_CONCEPTS_OR_REFS}'), [])"
    listed = (f"flatten(list_transform({items}, lambda cc: "
              f"list_concat({_codes('cc.coding')}, {_codes('cc.concept.coding')})))")
    return f"list_concat({_coding_codes(path)}, {_concept_codes(path)}, {listed})"


def _not_null(candidates: str) -> str:
    """SQL: the list `candidates` without its NULLs."""
    return f"list_filter({candidates}, lambda v: v IS NOT NULL)"


def _pick(cands: str, mapping: dict[str, str]) -> str:
    """The first candidate key (of `cands`, without NULLs: `_not_null`) the map knows; else the
    first candidate (reported as unmapped)."""
    if not mapping:
        return f"{cands}[1]"
    keys = ", ".join(literal(k) for k in mapping)
    return f"coalesce(list_filter({cands}, lambda v: v IN ({keys}))[1], {cands}[1])"


def _fhir_time(path: str) -> str:
    """A FHIR date or dateTime as London wall-clock text 'YYYY-MM-DD HH:MM:SS'; text that does
    not parse is kept as it is, so validation reports it as an impossible date."""
    raw = _s(path)
    offset = f"regexp_matches({raw}, '(Z|[+-][0-9][0-9]:[0-9][0-9])$')"
    parsed = (f"CASE WHEN {offset} THEN timezone({literal(WAREHOUSE_TZ)}, try_cast({raw} AS TIMESTAMPTZ)) "
              f"ELSE try_cast({raw} AS TIMESTAMP) END")
    return f"coalesce(strftime({parsed}, '%Y-%m-%d %H:%M:%S'), {raw})"


def _first_time(*paths: str) -> str:
    """`_fhir_time` of the first of `paths` that the resource has (NULL when it has none)."""
    return "coalesce(" + ", ".join(f"CASE WHEN {_s(p)} IS NOT NULL THEN {_fhir_time(p)} END" for p in paths) + ")"


def _ref_id(ref_sql: str, kind: str) -> str:
    """SQL: the id in a reference to a `kind` resource, relative ('Patient/x'), a full URL
    ('https://server/fhir/Patient/x') or versioned ('Patient/x/_history/2'); '' when not one."""
    return f"regexp_extract({ref_sql}, {literal('(^|/)' + kind + '/([^/]+)(/_history/[^/]+)?$')}, 2)"


def _reference(path: str, kind: str) -> str:
    """'Kind/id' from a reference (see `_ref_id`); NULL when it does not name one."""
    return f"nullif({literal(kind + '/')} || {_ref_id(_s(path), kind)}, {literal(kind + '/')})"


def _unresolvable(ref_sql: str) -> str:
    """SQL: why a reference can never be resolved across an export's files, else NULL. (A
    urn:uuid names a resource inside one Bundle or transaction, and '#id' one contained in the
    resource itself: neither is a Patient of the export. Shown as the quarantine detail, so at
    most 60 characters.)"""
    return (f"CASE WHEN {ref_sql} ILIKE 'urn:uuid:%' OR {ref_sql} ILIKE 'urn:oid:%' "
            "THEN 'a urn: reference (a Bundle''s); the export cannot resolve it' "
            f"WHEN {ref_sql} LIKE '#%' THEN 'a contained (#id) resource, not a Patient of the export' END")


def resource_fields(kind: str, maps: dict[str, dict[str, str]], system: str, export_date: str | None) -> dict[str, str]:
    """Contract field → SQL over `j`, for one resource type."""
    if kind == "Patient":
        return _patient_fields(system, export_date)
    if kind == "Encounter":
        return _encounter_fields(maps)
    if kind == "Appointment":
        return _appointment_fields(maps)
    return _tag_fields(kind, maps)


# What withdraws a record wobble may have loaded before: the source marked it entered in error,
# or (for a tag) it no longer holds: a refuted Condition, an inactive Flag, a cancelled
# Observation. The load removes the version held and quarantines the line (entered_in_error).
RETRACTING = {"Condition": ("$.verificationStatus", ("entered-in-error", "refuted")),
              "Flag": ("$.status", ("entered-in-error", "inactive")),
              "Observation": ("$.status", ("entered-in-error", "cancelled"))}


def _retracted(kind: str) -> str:
    path, codes = RETRACTING.get(kind, ("$.status", ("entered-in-error",)))
    if path == "$.status":
        found = f"[{_s(path)}]"
    else:  # a CodeableConcept: any of its codings; in STU3 (CareConnect) the code alone
        codes_of = f"list_transform({_concept_codes(path)}, lambda v: regexp_extract(v, '[^|]+$'))"
        found = f"list_append({codes_of}, {_s(path)})"
    return f"list_has_any({found}, [{', '.join(map(literal, codes))}])"


def _patient_fields(system: str, export_date: str | None) -> dict[str, str]:
    """Patient → persons. Without an NHS number, the first other identifier; without any, the
    resource id in this source (stable across its exports), so nobody is dropped for lacking one."""
    ids = f"from_json(json_extract(j, '$.identifier'), '{_IDENTIFIERS}')"
    # Either NHS number system, as senders write it (case, stray spaces): a number missed here
    # would escape the national data opt-out and the check-digit test.
    systems = ", ".join(literal(s.lower()) for s in NHS_NUMBER_SYSTEMS)
    is_nhs = f"lower(trim(coalesce(i.system, ''))) IN ({systems})"
    # An identifier with no value (a data-absent-reason extension, or "") says nothing: it must
    # not stand in the way of the person's other identifier.
    valued = "nullif(trim(i.value), '') IS NOT NULL"
    # A current number (not `use: old`, no end to its period: identifiers are given one when
    # retired) before an old one, and an official or usual one first; an old number is still
    # better than none (it finds the person's opt-out and their records under it).
    current = "coalesce(i.use, '') <> 'old' AND i.period.\"end\" IS NULL"
    nhs = (f"list_concat(list_filter({ids}, lambda i: {is_nhs} AND {valued} AND {current} "
           "AND i.use IN ('official', 'usual')), "
           f"list_filter({ids}, lambda i: {is_nhs} AND {valued} AND {current}), "
           f"list_filter({ids}, lambda i: {is_nhs} AND {valued}))")
    other = f"list_filter({ids}, lambda i: NOT ({is_nhs}) AND {valued})"
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
    taken = literal(export_date) if export_date else "NULL::VARCHAR"
    return {
        "patient_ref": "'Patient/' || " + _s("$.id"),
        "nhs_number": f"{nhs}[1].value",
        "alt_id": f"CASE WHEN coalesce(len({nhs}), 0) = 0 THEN coalesce({other}[1].system || '|' || {other}[1].value, "
                  f"{literal(f'resource:{system}|Patient/')} || {_s('$.id')}) END",
        # a partial birth date (year, or year-month) is enough for the birth year
        "birth_date": f"CASE length({birth}) WHEN 4 THEN {birth} || '-07-01' "
                      f"WHEN 7 THEN {birth} || '-15' ELSE {birth} END",
        "sex": _s("$.gender"),
        "ethnicity_group": f"coalesce({uk}, {us})",
        "postcode": _s("$.address[0].postalCode"),
        # identity only: read into the vault, never the warehouse
        "forename": _s("$.name[0].given[0]"),
        "surname": _s("$.name[0].family"),
        "practice_id": _practice(),
        # deceasedBoolean says they died, not when: the latest date we know they were dead by is
        # when the record last changed, else when the export was taken (a later date only keeps
        # them listable for longer); with neither, load uses the run's date (`deceased`).
        "died_on": f"coalesce(left({_s('$.deceasedDateTime')}, 10), CASE WHEN {_deceased()} THEN "
                   f"coalesce(left({_s('$.meta.lastUpdated')}, 10), {taken}) END)",
        "deceased": _deceased(),
    }


def _deceased() -> str:
    """SQL: the Patient says they died (deceasedBoolean true, or a deceasedDateTime)."""
    return (f"(coalesce(json_extract(j, '$.deceasedBoolean') = 'true'::JSON, false) "
            f"OR {_s('$.deceasedDateTime')} IS NOT NULL)")


def _practice() -> str:
    """SQL: the registered practice's code. generalPractitioner may list the usual GP (a
    Practitioner) as well as the practice, in any order: the first entry that is an Organization
    (by reference, type or ODS organisation code), else managingOrganization."""
    shape = '{"reference":"VARCHAR","type":"VARCHAR","identifier":{"system":"VARCHAR","value":"VARCHAR"}}'
    gps = f"from_json(json_extract(j, '$.generalPractitioner'), '[{shape}]')"
    managing = f"from_json(json_extract(j, '$.managingOrganization'), '{shape}')"
    is_org = (f"(g.type = 'Organization' OR lower(trim(g.identifier.system)) = {literal(ODS_SYSTEM.lower())} "
              f"OR nullif({_ref_id('g.reference', 'Organization')}, '') IS NOT NULL)")

    def code(g: str) -> str:
        org = _ref_id(g + ".reference", "Organization")
        return f"coalesce(nullif(trim({g}.identifier.value), ''), nullif({org}, ''))"

    return f"coalesce({code(f'list_filter({gps}, lambda g: {is_org})[1]')}, {code(managing)})"


def _urgent() -> str:
    """SQL: an Encounter's priority, admitSource (R4 `hospitalization`, R5 `admission`) or UK Core
    admission method says it was unplanned (an emergency admission, when its class is inpatient)."""
    ext = f"from_json(json_extract(j, '$.extension'), '{_EXTENSIONS}')"
    method = (f"flatten(list_transform(list_filter({ext}, lambda e: e.url = {literal(UKCORE_ADMISSION_METHOD)}), "
              "lambda e: list_transform(e.valueCodeableConcept.coding, lambda c: c.code)))")
    return (f"list_has_any({_concept_codes('$.priority')}, [{', '.join(map(literal, EMERGENCY_PRIORITY))}]) "
            f"OR list_has_any(list_concat({_concept_codes('$.hospitalization.admitSource')}, "
            f"{_concept_codes('$.admission.admitSource')}), "
            f"[{', '.join(map(literal, EMERGENCY_ADMIT_SOURCE))}]) "
            f"OR len(list_filter({method}, lambda c: c LIKE {literal(EMERGENCY_ADMISSION_METHOD)})) > 0")


def _professional(participants: str, who: str) -> str:
    """SQL: the first participant (`who`: its individual, or actor) that is a member of staff,
    by reference or type (a Practitioner or PractitionerRole; a conditional reference such as
    'Practitioner?identifier=…|123' too), or known by an identifier alone; a RelatedPerson, the
    Patient, a Location or a Device is not (continuity of care is with staff)."""
    staff = f"regexp_matches(coalesce(p.{who}.reference, ''), '(^|/)Practitioner(Role)?[/?]')"
    shape = '{"reference":"VARCHAR","type":"VARCHAR","identifier":{"value":"VARCHAR"}}'
    listed = f"from_json(json_extract(j, {literal(participants)}), '[{{\"{who}\":{shape}}}]')"
    first = (f"list_filter({listed}, lambda p: {staff} OR p.{who}.type IN ('Practitioner', 'PractitionerRole') "
             f"OR (p.{who}.reference IS NULL AND p.{who}.type IS NULL AND p.{who}.identifier.value IS NOT NULL))"
             f"[1].{who}")
    return f"coalesce({first}.reference, {first}.identifier.value)"


def resource_steps(kind: str, maps: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Helper columns `resource_fields` and `in_scope` read, computed once per resource, not once
    per use (an Encounter's class codes stood in its SQL some twenty times, and DuckDB took 0.15 s
    to plan it for each file however small): each step's SQL is over `j` and the steps before.
    Encounter: `_class` (Encounter.class's candidate keys), `_inpatient`, `_specific` (serviceType
    and the type codes that name a setting), `_candidates` (the service candidates, in order, the
    first that maps winning: `_specific`, the class, where an inpatient class becomes
    'admission:emergency' when `_urgent` says so, else 'admission:elective' (not a wobble service:
    out of scope, counted), then the type codes that name no setting (`[service_any_setting]`) only when
    the class names no service itself and is not an inpatient one). Tag resources: `_candidates`
    (`_tag_codes`). Others: none."""
    if kind in ("Flag", "Condition", "Observation"):
        return [{"_candidates": _not_null(_tag_codes(kind))}]
    if kind != "Encounter":
        return []
    generic = ", ".join(literal(k) for k in maps.get("service_any_setting", {})) or "NULL"
    keys = ", ".join(literal(k) for k in maps.get("service", {})) or "NULL"
    is_generic = f"coalesce(c.system || '|' || c.code IN ({generic}) OR c.code IN ({generic}), false)"
    codings = (f"flatten(list_transform(coalesce(from_json(json_extract(j, '$.type'), '{_CONCEPTS}'), []), "
               "lambda cc: coalesce(cc.coding, [])))")
    inpatient = ", ".join(map(literal, INPATIENT_CLASSES))
    # (urgency is read for inpatient encounters only: CASE evaluates it for those rows alone)
    admission = (f"CASE WHEN _inpatient THEN [CASE WHEN {_urgent()} THEN 'admission:emergency' "
                 "ELSE 'admission:elective' END] ELSE _class END")
    after = (f"CASE WHEN _inpatient OR len(list_filter(_class, lambda v: v IN ({keys}))) > 0 THEN []::VARCHAR[] "
             f"ELSE {_codes('list_filter(_type_codings, lambda c: ' + is_generic + ')')} END")
    return [
        {"_class": _any_codes("$.class"), "_type_codings": codings},
        {"_inpatient": f"list_has_any(_class, [{inpatient}])",
         "_specific": _not_null(f"list_concat({_any_codes('$.serviceType')}, "
                                f"{_codes('list_filter(_type_codings, lambda c: NOT ' + is_generic + ')')})")},
        {"_candidates": _not_null(f"list_concat(_specific, {admission}, {after})")},
    ]


def _encounter_fields(maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Encounter → contacts, over `resource_steps`: the first coding that maps wins, across
    serviceType, type and class. R5's shapes are read too: `actualPeriod`, class as a list,
    serviceType as CodeableReferences, participant `actor`."""
    service_map = maps.get("service", {})
    return {
        "record_id": _s("$.id"),
        "patient_ref": _reference("$.subject.reference", "Patient"),
        "unresolvable_ref": _unresolvable(_s("$.subject.reference")),
        "occurred_at": _first_time("$.period.start", "$.actualPeriod.start"),
        "recorded_at": _fhir_time("$.meta.lastUpdated"),
        "service": _pick("_candidates", service_map),
        "status": f"CASE WHEN {_retracted('Encounter')} THEN NULL ELSE {_s('$.status')} END",
        "mode": _pick(_not_null(f"list_concat({_concepts_codes('$.type')}, _class)"), maps.get("mode", {})),
        "professional": (f"coalesce({_professional('$.participant', 'individual')}, "
                         f"{_professional('$.participant', 'actor')})"),
        "retracted": _retracted("Encounter"),
        # a serviceType or type code no map knows, where the class decided instead (reported)
        "_passed_over": _unmapped_first("_specific", service_map),
    }


def _appointment_fields(maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Appointment → contacts: what happened to a booked appointment (fulfilled, noshow,
    cancelled); its service from serviceType, serviceCategory, specialty or appointmentType."""
    refs = "list_transform(from_json(json_extract(j, '$.participant'), '[{\"actor\":{\"reference\":\"VARCHAR\"}}]'), " \
           "lambda p: p.actor.reference)"
    patient = f"list_filter({refs}, lambda r: nullif({_ref_id('r', 'Patient')}, '') IS NOT NULL)[1]"
    unresolvable = f"list_filter(list_transform({refs}, lambda r: {_unresolvable('r')}), lambda v: v IS NOT NULL)[1]"
    service = (f"list_concat({_any_codes('$.serviceType')}, {_concepts_codes('$.serviceCategory')}, "
               f"{_concepts_codes('$.specialty')}, {_concept_codes('$.appointmentType')})")
    # Without lastUpdated, what happened is known no earlier than the start: `created` is only
    # when it was booked (before the start, so it would read as an impossible date).
    updated = f"CASE WHEN {_s('$.meta.lastUpdated')} IS NOT NULL THEN {_fhir_time('$.meta.lastUpdated')} END"
    return {
        "record_id": "'Appointment/' || " + _s("$.id"),
        "patient_ref": f"nullif('Patient/' || {_ref_id(patient, 'Patient')}, 'Patient/')",
        "unresolvable_ref": f"CASE WHEN {patient} IS NULL THEN {unresolvable} END",
        "occurred_at": _fhir_time("$.start"),
        "recorded_at": f"coalesce({updated}, greatest({_fhir_time('$.created')}, {_fhir_time('$.start')}))",
        "service": _pick(_not_null(service), maps.get("service", {})),
        "status": f"CASE WHEN {_retracted('Appointment')} THEN NULL ELSE {_s('$.status')} END",
        "mode": "NULL::VARCHAR",
        "professional": _professional("$.participant", "actor"),
        "retracted": _retracted("Appointment"),
    }


def _tag_fields(kind: str, maps: dict[str, dict[str, str]]) -> dict[str, str]:
    """Flag, Condition, Observation → tags, through the tag map. An Observation's candidates are
    its code with its answer ('question=answer'), then its code, then the answer alone."""
    recorded = {"Flag": ("$.meta.lastUpdated", "$.period.start"),
                "Condition": ("$.recordedDate", "$.assertedDate", "$.meta.lastUpdated", "$.onsetDateTime"),
                "Observation": ("$.issued", "$.meta.lastUpdated", "$.effectiveDateTime")}[kind]
    return {
        "record_id": _s("$.id"),
        "patient_ref": _reference("$.subject.reference", "Patient"),
        "unresolvable_ref": _unresolvable(_s("$.subject.reference")),
        "recorded_at": _first_time(*recorded),
        "tag": _pick("_candidates", maps.get("tag", {})),
        "retracted": _retracted(kind),
    }


def _tag_codes(kind: str) -> str:
    """SQL: the candidate keys of a tag resource's code (and, for an Observation, its answer):
    every coding of each, since the LOINC question or answer need not be the first."""
    if kind != "Observation":
        return _concept_codes("$.code")

    def codings(path: str) -> str:
        return f"coalesce(from_json(json_extract(j, {literal(path + '.coding')}), '{_CODING}'), [])"

    answers = (f"flatten(list_transform({codings('$.code')}, lambda q: list_transform("
               f"{codings('$.valueCodeableConcept')}, lambda a: q.system || '|' || q.code || '=' || a.code)))")
    return (f"list_concat(list_filter({answers}, lambda v: v IS NOT NULL), {_concept_codes('$.code')}, "
            f"{_concept_codes('$.valueCodeableConcept')})")


def _unmapped_first(cands: str, mapping: dict[str, str]) -> str:
    """SQL: the first of `cands` (without NULLs) when none maps (else NULL)."""
    keys = ", ".join(literal(k) for k in mapping) or "NULL"
    return f"CASE WHEN len(list_filter({cands}, lambda v: v IN ({keys}))) = 0 THEN {cands}[1] END"


def in_scope(kind: str, maps: dict[str, dict[str, str]]) -> tuple[str, str]:
    """SQL: (is this resource of a kind wobble reads, does its code map). Tags need a category
    (Condition, Observation) and a code in the tag map; an Appointment or Encounter must have
    happened (not booked or planned); an elective admission is not a wobble service. Patients
    always qualify."""
    if kind == "Encounter":
        keys = ", ".join(literal(k) for k in maps.get("service", {})) or "NULL"
        elective = (f"len(list_filter(_candidates, lambda v: v IN ({keys}))) = 0 "
                    "AND list_contains(_candidates, 'admission:elective')")
        planned = f"coalesce({_s('$.status')} = 'planned', false)"  # it has not happened (yet)
        return f"NOT ({elective} OR {planned})", "true"
    if kind == "Appointment":
        return f"coalesce({_s('$.status')} IN ({', '.join(map(literal, APPOINTMENT_DONE))}), false)", "true"
    if kind not in ("Flag", "Condition", "Observation"):
        return "true", "true"
    keys = ", ".join(literal(k) for k in maps.get("tag", {})) or "NULL"
    mapped = f"len(list_filter(_candidates, lambda v: v IN ({keys}))) > 0"
    if kind == "Flag":
        return "true", mapped
    cats = ", ".join(literal(c) for c in TAG_CATEGORIES[kind])
    category = (f"len(list_filter({_concepts_codes('$.category')}, "
                f"lambda v: regexp_extract(v, '[^|]+$') IN ({cats}))) > 0")
    return category, mapped


# ---------------------------------------------------------------------------------------------
# Bulk Data `deleted` files: Bundles whose entries are DELETE requests
# ---------------------------------------------------------------------------------------------

# request.url of a deleted resource, relative ('Encounter/1'), absolute ('https://server/fhir/
# Encounter/1') or versioned ('Encounter/1/_history/2'): groups 'kind' and 'id'.
DELETED_URL = r"(^|/)([A-Za-z]+)/([^/?#]+)(/_history/[^/]+)?$"


def deleted_target(url_sql: str, part: str) -> str:
    """SQL: the resource type (`part` 'kind') or id ('id') a DELETE request.url names; '' when it
    names no one resource (a search URL, a urn:uuid)."""
    return f"regexp_extract({url_sql}, {literal(DELETED_URL)}, {2 if part == 'kind' else 3})"


def deleted_record_id() -> str:
    """SQL over `kind` and `j` (a stub resource {"id": …}): the record id the load keeps a deleted
    contact or tag under, before `record_id_sql`. It is each type's own `record_id` SQL (an
    Encounter's id, 'Appointment/' || an Appointment's id, a tag resource's id), so a deletion
    finds what the load stored by construction; NULL for other types."""
    kinds = [k for k, t in TABLE_OF.items() if t in ("contacts", "tags")]
    arms = " ".join(f"WHEN {literal(k)} THEN {resource_fields(k, {}, '', None)['record_id']}" for k in kinds)
    return f"CASE kind {arms} END"


def deleted_table() -> str:
    """SQL over `kind`: the table a deleted resource's record lives in (persons, contacts, tags),
    NULL for a type wobble does not read."""
    return f"CASE kind {' '.join(f'WHEN {literal(k)} THEN {literal(t)}' for k, t in TABLE_OF.items())} END"
