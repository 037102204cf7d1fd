"""FHIR ingest, case by case: what senders other than our synthetic export write (a legacy NHS
number system, UK Core admission methods, refuted Conditions, deceasedBoolean, a GP listed before
the practice, versioned references, Synthea's encounter types…), each in a world of a few lines."""

from __future__ import annotations

import json
from datetime import datetime
from functools import reduce
from pathlib import Path

import duckdb
import pytest
from conftest import TEST_KEY
from ingest_kit import numbers
from test_ingest_fhir import _config, _encounter, _mini_export, _patient, _q

from wobble.core.config import load_config, with_fhir_folder
from wobble.ingest import ingest
from wobble.ingest.plan import hashed_name

KEY = TEST_KEY.encode()
NOW = datetime(2025, 7, 1, 9, 0)
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def _load(tmp_path: Path, lines: dict[str, list], *, folder: str = "exp", toml: str = ""):
    """Write a tiny export under tmp_path/folder and ingest it (into tmp_path's warehouse)."""
    config = _config(tmp_path)
    if toml:
        config.write_text(config.read_text() + toml)
    cfg, name = with_fhir_folder(_mini_export(tmp_path / folder, lines), load_config(config))
    return cfg, ingest(cfg, key=KEY, only=[name], report=False, now=NOW)


def _file(result, table: str):
    return next(f for f in result.files if f.table == table)


def _cc(system: str, code: str) -> dict:
    return {"coding": [{"system": system, "code": code}]}


def _enc(eid: str, klass: str, pid: str = "p1", **extra) -> dict:
    """An Encounter with only a class (no serviceType): the class and type decide the service."""
    enc = _encounter(eid, pid, **extra)
    enc["class"] = {"system": ACT, "code": klass}
    enc.pop("serviceType")
    return enc


# --- 1, 16, 9: which identifier is the NHS number ------------------------------------------------

A, OLD = numbers(2, seed=21)


@pytest.mark.parametrize("identifiers", [
    [{"system": "http://fhir.nhs.net/Id/nhs-number", "value": A}],  # CareConnect (STU3), older GP systems
    [{"system": " HTTPS://FHIR.NHS.UK/Id/NHS-Number ", "value": A}],  # as some senders write it
    [{"use": "old", "system": NHS, "value": OLD}, {"use": "official", "system": NHS, "value": A}],
    [{"system": NHS, "value": OLD, "period": {"end": "2010-01-01"}}, {"system": NHS, "value": A}],
], ids=["legacy_system", "untidy_system", "old_then_current", "ended_then_current"])
def test_the_current_nhs_number_under_any_system_spelling_meets_the_opt_out_list(tmp_path, identifiers):
    (tmp_path / "opt_outs.csv").write_text(f"nhs_number\n{A}\n")
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None, identifier=identifiers)],
                                   "Encounter.ndjson": [_encounter("e1", "p1")]},
                        toml='[lookups]\nopt_outs = "opt_outs.csv"\n')
    assert _file(result, "persons").other_identifier == 0  # not "another identifier"
    assert _q(cfg.warehouse, "SELECT opted_out FROM persons") == [(True,)]
    assert _q(cfg.warehouse, "SELECT count(*) FROM contacts") == [(0,)]


@pytest.mark.parametrize("nhs", [{"value": ""}, {"value": "  "}, {}], ids=["empty", "blank", "absent"])
def test_an_nhs_identifier_without_a_value_does_not_hide_the_other_identifier(tmp_path, nhs):
    absent = {"_value": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                        "valueCode": "unknown"}]}}
    ident = [{"system": NHS, **(nhs or absent)}, {"system": "https://trust.example/mrn", "value": "M1"}]
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None, identifier=ident)],
                                   "Encounter.ndjson": [_encounter("e1", "p1")]})
    persons = _file(result, "persons")
    assert (persons.rows_loaded, persons.other_identifier) == (1, 1)
    assert _q(cfg.warehouse, "SELECT count(*) FROM contacts JOIN persons USING (person_id)") == [(1,)]
    assert _q(cfg.warehouse, "SELECT count(*) FROM quarantine") == [(0,)]


# --- 2, 3, 13: contacts ---------------------------------------------------------------------------


def test_an_appointment_without_last_updated_is_known_no_earlier_than_its_start(tmp_path):
    appt = {"resourceType": "Appointment", "id": "a1", "status": "fulfilled", "created": "2025-02-01T09:00:00Z",
            "start": "2025-03-03T09:00:00Z", "serviceCategory": [_cc(
                "http://terminology.hl7.org/CodeSystem/service-category", "17")],
            "participant": [{"actor": {"reference": "Patient/p1"}}, {"actor": {"reference": "Practitioner/dr1"}}]}
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Appointment.ndjson": [appt]})
    assert _q(cfg.warehouse, "SELECT line, reason FROM quarantine") == []
    assert _q(cfg.warehouse, "SELECT occurred_at::VARCHAR, recorded_at::VARCHAR, status FROM contacts") == [
        ("2025-03-03 09:00:00", "2025-03-03 09:00:00", "attended")]


def test_the_uk_core_admission_method_says_an_admission_was_an_emergency(tmp_path):
    method = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod"
    codes = "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdmissionMethodEngland"
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Encounter.ndjson": [
        _enc("e21", "IMP", extension=[{"url": method, "valueCodeableConcept": _cc(codes, "21")}]),
        _enc("e11", "IMP", extension=[{"url": method, "valueCodeableConcept": _cc(codes, "11")}]),
    ]})
    enc = _file(result, "contacts")
    assert (enc.rows_in, enc.rows_loaded, enc.rows_out_of_scope) == (1, 1, 1)  # elective: out of scope
    assert enc.unmapped.get("service (elective admission, not read)") == {"admission:elective": 1}
    assert _q(cfg.warehouse, "SELECT contact_id, service FROM contacts") == [("e21", "emergency_admission")]


def test_generic_encounter_types_are_clinic_visits_after_the_class_has_had_its_say(tmp_path):
    generic = {"e1": "185347001", "e2": "162673000", "e3": "410620009"}  # Synthea's ambulatory types
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Encounter.ndjson": [
        *[_enc(eid, "AMB", type=[_cc(SCT, code)]) for eid, code in generic.items()],
        _enc("e4", "EMER", type=[_cc(SCT, "185347001")]),  # an A&E attendance "for problem"
    ]})
    assert _file(result, "contacts").rows_loaded == 4
    assert _q(cfg.warehouse, "SELECT contact_id, service FROM contacts ORDER BY 1") == [
        ("e1", "outpatient_attendance"), ("e2", "outpatient_attendance"), ("e3", "outpatient_attendance"),
        ("e4", "ae_attendance")]


# --- 4, 14: tags ----------------------------------------------------------------------------------

VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def _condition(cid: str, verified: str) -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": "Patient/p1"},
            "code": _cc(SCT, "35489007"), "recordedDate": "2025-03-01", "verificationStatus": _cc(VER, verified),
            "category": [_cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")]}


def _flag(fid: str, status: str) -> dict:
    return {"resourceType": "Flag", "id": fid, "status": status, "subject": {"reference": "Patient/p1"},
            "code": _cc(SCT, "32911000"), "period": {"start": "2025-02-01"}}


def _observation(oid: str, status: str = "final", code: list | None = None, answer: list | None = None) -> dict:
    return {"resourceType": "Observation", "id": oid, "status": status, "subject": {"reference": "Patient/p1"},
            "category": [_cc("http://terminology.hl7.org/CodeSystem/observation-category", "social-history")],
            "code": {"coding": code or [{"system": LOINC, "code": "88122-7"}]},
            "valueCodeableConcept": {"coding": answer or [{"system": LOINC, "code": "LA28397-0"}]},
            "issued": "2025-03-02T10:00:00Z"}


def test_refuted_inactive_and_cancelled_tags_are_retracted(tmp_path):
    cfg, first = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Condition.ndjson": [
        _condition("c1", "confirmed")], "Flag.ndjson": [_flag("f1", "active")],
        "Observation.ndjson": [_observation("o1")]})
    assert sorted(_q(cfg.warehouse, "SELECT tag_id FROM tags")) == [("c1",), ("f1",), ("o1",)]
    # the next export withdraws all three, and brings a Condition refuted from the start
    _, second = _load(tmp_path, {"Condition.ndjson": [_condition("c1", "refuted"), _condition("c2", "refuted")],
                                 "Flag.ndjson": [_flag("f1", "inactive")],
                                 "Observation.ndjson": [_observation("o1", "cancelled")]}, folder="exp2")
    assert _q(cfg.warehouse, "SELECT count(*) FROM tags") == [(0,)]
    assert sum(f.rows_retracted for f in second.files) == 3
    assert _q(cfg.warehouse, "SELECT regexp_extract(file, '[A-Za-z]+\\.ndjson$'), line, reason FROM quarantine "
                             "ORDER BY 1, 2") == [
        ("Condition.ndjson", 1, "entered_in_error"), ("Condition.ndjson", 2, "entered_in_error"),
        ("Flag.ndjson", 1, "entered_in_error"), ("Observation.ndjson", 1, "entered_in_error")]


def test_an_stu3_condition_refuted_by_a_plain_code_is_retracted_and_dated_by_when_asserted(tmp_path):
    """CareConnect (STU3), as older GP systems send it: verificationStatus is a code, not a
    CodeableConcept, and the date recorded is assertedDate."""
    def stu3(cid: str, verified: str) -> dict:
        c = _condition(cid, verified) | {"verificationStatus": verified, "assertedDate": "2025-02-20"}
        c.pop("recordedDate")
        return c

    cfg, _ = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Condition.ndjson": [
        stu3("c1", "confirmed"), stu3("c2", "refuted")]})
    assert _q(cfg.warehouse, "SELECT tag_id, recorded_at::DATE::VARCHAR FROM tags") == [("c1", "2025-02-20")]
    assert _q(cfg.warehouse, "SELECT line, reason FROM quarantine") == [(2, "entered_in_error")]


def test_an_observation_maps_whichever_coding_holds_the_loinc_question_and_answer(tmp_path):
    cfg, _ = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Observation.ndjson": [
        _observation("o1", code=[{"system": SCT, "code": "1234"}, {"system": LOINC, "code": "88122-7"}]),
        _observation("o2", answer=[{"system": SCT, "code": "5678"}, {"system": LOINC, "code": "LA28397-0"}]),
    ]})
    assert _q(cfg.warehouse, "SELECT tag_id, tag FROM tags ORDER BY 1") == [
        ("o1", "food_insecurity"), ("o2", "food_insecurity")]


# --- 5, 6: persons --------------------------------------------------------------------------------


def test_deceased_boolean_gives_the_latest_date_known_dead_by(tmp_path):
    dead = {"deceasedBoolean": True}
    manifest = {"transactionTime": "2025-06-30T00:00:00Z", "output": [
        {"type": "Patient", "url": "https://x.example/files/Patient.ndjson"}]}
    _load(tmp_path, {"manifest.json": [json.dumps(manifest)], "Patient.ndjson": [
        _patient("p1", None, birthDate="1931", meta={"lastUpdated": "2025-05-05T10:00:00Z"}, **dead),
        _patient("p2", None, birthDate="1932", **dead),  # when the export was taken
        _patient("p3", None, birthDate="1933", deceasedBoolean=False)]})
    # no lastUpdated, no manifest: the run's date
    cfg, _ = _load(tmp_path, {"Patient.ndjson": [_patient("p4", None, birthDate="1934", **dead)]}, folder="exp2")
    assert _q(cfg.warehouse, "SELECT birth_year, died_on::VARCHAR FROM persons ORDER BY 1") == [
        (1931, "2025-05-05"), (1932, "2025-06-30"), (1933, None), (1934, "2025-07-01")]


def test_the_practice_is_the_organization_whatever_comes_first(tmp_path):
    ods = "https://fhir.nhs.uk/Id/ods-organization-code"
    cfg, _ = _load(tmp_path, {"Patient.ndjson": [
        _patient("p1", None, birthDate="1931", generalPractitioner=[
            {"reference": "Practitioner/G8133438",
             "identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "G8133438"}},
            {"reference": "Organization/x1", "identifier": {"system": ods, "value": "B86003"}}]),
        _patient("p2", None, birthDate="1932", generalPractitioner=[{"reference": "Practitioner/dr1"}],
                 managingOrganization={"reference": "Organization/x2",
                                       "identifier": {"system": ods, "value": "B86002"}}),
        _patient("p3", None, birthDate="1933", generalPractitioner=[{"reference": "Practitioner/dr1"},
                                                                    {"reference": "Organization/B86001"}])]})
    assert _q(cfg.warehouse, "SELECT birth_year, practice_id FROM persons ORDER BY 1") == [
        (1931, "B86003"), (1932, "B86002"), (1933, "B86001")]


# --- 7, 8: finding the patient --------------------------------------------------------------------


def test_subject_references_absolute_versioned_and_unresolvable(tmp_path):
    def at(eid: str, ref: str) -> dict:
        return _encounter(eid, "p1", subject={"reference": ref})

    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Encounter.ndjson": [
        at("e1", "https://server.example/fhir/Patient/p1"), at("e2", "Patient/p1/_history/2"),
        at("e3", "urn:uuid:6c41ebfd-57c3-4162-9d7b-208c171a2fd7")]})
    assert _q(cfg.warehouse, "SELECT contact_id FROM contacts ORDER BY 1") == [("e1",), ("e2",)]
    [(line, reason, detail)] = _q(cfg.warehouse, "SELECT line, reason, detail FROM quarantine")
    assert (line, reason) == (3, "missing_field") and "cannot resolve" in detail


def test_two_patient_resources_with_one_nhs_number_are_one_person_found_by_both_ids(tmp_path):
    [a] = numbers(1, seed=23)
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", a), _patient("p1b", a)],
                                   "Encounter.ndjson": [_encounter("e1", "p1"), _encounter("e2", "p1b")]})
    assert _q(cfg.warehouse, "SELECT count(*) FROM persons") == [(1,)]
    assert _q(cfg.warehouse, "SELECT line, reason FROM quarantine WHERE file LIKE '%Encounter%'") == []
    assert _q(cfg.warehouse, "SELECT count(*), count(DISTINCT person_id) FROM contacts") == [(2, 1)]


# --- 15: professionals ----------------------------------------------------------------------------


def test_the_professional_is_the_first_participant_who_is_staff(tmp_path):
    def by(eid: str, *refs: str) -> dict:
        return _encounter(eid, "p1", participant=[{"individual": {"reference": r}} for r in refs])

    appt = {"resourceType": "Appointment", "id": "a1", "status": "fulfilled", "start": "2025-03-03T09:00:00Z",
            "meta": {"lastUpdated": "2025-03-04T09:00:00Z"},
            "serviceCategory": [_cc("http://terminology.hl7.org/CodeSystem/service-category", "17")],
            "participant": [{"actor": {"reference": "PractitionerRole/pr1"}}, {"actor": {"reference": "Patient/p1"}}]}
    # a conditional reference names staff by identifier, as Synthea's Bulk Data export does
    npi = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999974493"
    cfg, _ = _load(tmp_path, {"Patient.ndjson": [_patient("p1", None)], "Encounter.ndjson": [
        by("e1", "RelatedPerson/rp1", "Practitioner/dr2"), by("e2", "Practitioner/dr2"),
        by("e3", "RelatedPerson/rp1"), by("e4", "PractitionerRole/pr1"), by("e5", "Patient/p1", npi),
        by("e6", npi), by("e7", "Patient?identifier=x|1")], "Appointment.ndjson": [appt]})
    staff = dict(_q(cfg.warehouse, "SELECT contact_id, professional_id FROM contacts"))
    assert staff["e1"] is not None and staff["e1"] == staff["e2"] != "Practitioner/dr2"  # pseudonymised
    assert staff["e3"] is None and staff["e7"] is None  # a relative, the patient: not staff
    assert staff["Appointment/a1"] is not None and staff["Appointment/a1"] == staff["e4"] != staff["e2"]
    assert staff["e5"] is not None and staff["e5"] == staff["e6"] not in (staff["e2"], staff["e4"])


# --- 12: files ------------------------------------------------------------------------------------


def test_a_line_over_max_line_bytes_fails_the_file_and_says_so(tmp_path):
    folder = _mini_export(tmp_path / "exp", {"Patient.ndjson": [
        _patient("p1", None), _patient("p2", None, text={"div": "x" * 3000}), _patient("p3", None)]})
    config = _config(tmp_path)
    config.write_text(config.read_text() + f'[sources.ehr]\nkind = "fhir"\nsystem = "ehr"\npath = "{folder}"\n'
                                           "max_line_bytes = 2048\n")
    result = ingest(load_config(config), key=KEY, report=False, now=NOW)
    [f] = result.files
    assert f.status == "failed" and "longer than the 2,048-byte limit" in f.error, f.error


def test_a_file_of_bundles_loads_their_entries(tmp_path):
    """Bulk Data is one resource per line, but some systems write Bundles: their entries' resources
    load as the file's own, and a quarantined one is named by the Bundle's line."""
    a, = numbers(1, seed=3)
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": _encounter("e1", "p1")}, {"resource": _encounter("e2", "p1")},
                        {"resource": {**_encounter("e3", "p1"), "period": {"start": "not a date"}}}]}
    cfg, result = _load(tmp_path, {"Patient.ndjson": [_patient("p1", a)],
                                   "Encounter.ndjson": [_encounter("e0", "p1"), bundle]})
    enc = _file(result, "contacts")
    assert (enc.status, enc.rows_in, enc.rows_loaded) == ("loaded", 4, 3), enc.error
    assert _q(cfg.warehouse, "SELECT contact_id FROM contacts ORDER BY 1") == [("e0",), ("e1",), ("e2",)]
    assert _q(cfg.warehouse, "SELECT line FROM quarantine") == [(2,)]


def test_bundles_load_a_broken_json_file_fails_in_one_line_and_a_listed_file_without_suffix_loads(tmp_path):
    """A pretty-printed transaction Bundle named for a person (Synthea's default output) and a file
    of Bundles named for no type load their entries' resources (`test_ingest_fhir_mixed.py` checks
    them row for row); an entry without a resource is quarantined; a JSON file cut short fails in
    one line; a file the manifest lists loads whatever its name ends in."""
    a, b, c = numbers(3, seed=3)

    def person(k: int, nhs: str) -> dict:
        return {"resourceType": "Bundle", "type": "transaction",
                "entry": [{"fullUrl": f"urn:uuid:p{k}", "resource": _patient(f"p{k}", nhs)},
                          {"fullUrl": f"urn:uuid:e{k}", "resource": {**_encounter(f"e{k}", f"p{k}"),
                                                                     "subject": {"reference": f"urn:uuid:p{k}"}}},
                          {"request": {"method": "DELETE", "url": "Encounter/e0"}}]}

    bundle = person(2, b)
    folder = _mini_export(tmp_path / "exp", {"Encounter.ndjson": [_encounter("e1", "p1")],
                                              "bundles.ndjson": [bundle], "patients": [_patient("p1", a)]})
    (folder / "Aaron697_Brekke496_5f1c.json").write_text(json.dumps(person(3, c), indent=2))
    (folder / "Cut_Short_1.json").write_text(json.dumps(bundle, indent=2)[:-40])
    (folder / "job_status.json").write_text(json.dumps({"job": 7, "state": "complete"}, indent=2))
    (folder / "manifest.json").write_text(json.dumps({"transactionTime": "2025-06-01T00:00:00Z", "output": [
        {"type": "Patient", "url": "https://server.example/files/patients"},
        {"type": "Encounter", "url": "https://server.example/files/Encounter.ndjson"}]}))
    cfg, name = with_fhir_folder(folder, load_config(_config(tmp_path)))
    result = ingest(cfg, key=KEY, only=[name], report=False, now=NOW)
    shown = [Path(f.file).name for f in result.files]
    # one person's records are named by their hash, as their name may be the person's
    assert not any(n.startswith(("Aaron", "bundles")) for n in shown)
    hashed = {hashed_name(folder / n): n for n in ("Aaron697_Brekke496_5f1c.json", "bundles.ndjson")}
    files = {reduce(lambda n, h: n.replace(h, hashed[h]), hashed, n): f
             for n, f in zip(shown, result.files, strict=True)}
    assert "manifest.json" not in files
    assert (files["patients"].status, files["patients"].rows_loaded) == ("loaded", 1)  # listed: named
    for f in ("bundles.ndjson", "Aaron697_Brekke496_5f1c.json"):
        parts = (files[f"{f} (Patient resources)"], files[f"{f} (Encounter resources)"])
        assert [part.rows_loaded for part in parts] == [1, 1]
    assert files["bundles.ndjson (Patient resources)"].reasons == {"malformed_line": 1}  # the DELETE entry
    assert files["job_status.json"].status == "not_read"  # JSON, but no resource: left alone, listed
    cut = files["Cut_Short_1.json"]
    assert cut.status == "failed" and cut.error.startswith("not NDJSON: the first line is not a JSON resource, nor")
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        got = con.sql("SELECT contact_id FROM contacts ORDER BY 1").fetchall()
        subjects = con.sql("SELECT count(DISTINCT person_id) FROM contacts").fetchall()
    assert got == [("e1",), ("e2",), ("e3",)] and subjects == [(3,)]



def test_the_servers_export_errors_are_worth_a_look_and_never_shown(tmp_path):
    """A manifest's `error` files hold OperationOutcomes: what the server could not export. The
    report counts their issues by severity and code under 'Worth a look' (the export may be missing
    resources), never their text, which may name a patient; an informational note is left alone."""
    from wobble.ingest.quality import build, status

    a, = numbers(1, seed=3)
    secret = "Patient/p1 (Jane Doe, 943 476 5919) could not be read"
    outcome = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "processing", "diagnostics": secret},
        {"severity": "error", "code": "processing", "diagnostics": secret},
        {"severity": "warning", "code": "too-costly"}]}
    note = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}
    folder = _mini_export(tmp_path / "exp", {"Patient.ndjson": [_patient("p1", a)], "err_1.ndjson": [outcome],
                                              "OperationOutcome.ndjson": [note]})
    (folder / "manifest.json").write_text(json.dumps({"transactionTime": "2025-06-01T00:00:00Z", "output": [
        {"type": "Patient", "url": "https://s.example/Patient.ndjson"}], "error": [
        {"type": "OperationOutcome", "url": "https://s.example/err_1.ndjson"}]}))
    cfg, name = with_fhir_folder(folder, load_config(_config(tmp_path)))
    result = ingest(cfg, key=KEY, only=[name], report=False, now=NOW)
    files = {Path(f.file).name: f for f in result.files}
    assert files["err_1.ndjson"].export_issues == {"error: processing": 2, "warning: too-costly": 1}
    import duckdb

    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        data = build(con, cfg, result)
    look = [w for w in data["warnings"] if "err_1.ndjson" in w]
    assert look and ("the server reported 2 errors while exporting (error: processing 2, warning: too-costly 1)"
                     in look[0])
    assert not any("Jane" in w or "943" in w for w in data["warnings"] + data["left_alone"])
    assert any("OperationOutcome" in w for w in data["left_alone"])  # the informational note
    assert status(data)["level"] == "look"
