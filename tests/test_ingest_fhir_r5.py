"""FHIR R5 Encounters and Appointments load as their R4 twins would.

R5 moved what wobble reads: `period` is `actualPeriod`, `class` is a list of CodeableConcepts,
`serviceType` a list of CodeableReferences (`concept`), a participant's `individual` is its
`actor`, `hospitalization` is `admission`, and `finished` is `completed` (`arrived`, `triaged`
are `in-progress`, `onleave` is `on-hold`). Each export here is written twice, as it came and
with every Encounter and Appointment rewritten to R5, and the two warehouses must hold the same
contacts, row for row."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import TEST_KEY
from test_ingest_other_vendors import FIXTURE, _enc, _export, _patient, class_cases

from wobble.core.config import with_fhir_folder
from wobble.ingest import ingest

KEY = TEST_KEY.encode()
R5_STATUS = {"finished": "completed", "arrived": "in-progress", "triaged": "in-progress", "onleave": "on-hold"}


def as_r5(resource: dict) -> dict:
    """An R4 Encounter or Appointment in R5's shapes (anything else as it is)."""
    r = dict(resource)
    kind = r.get("resourceType")
    if kind not in ("Encounter", "Appointment"):
        return r
    if isinstance(r.get("serviceType"), dict):  # R4 Encounter: one CodeableConcept
        r["serviceType"] = [r["serviceType"]]
    if "serviceType" in r:
        r["serviceType"] = [{"concept": cc} for cc in r["serviceType"]]
    if kind == "Appointment":
        return r
    r["status"] = R5_STATUS.get(r["status"], r["status"])
    if "class" in r:
        r["class"] = [{"coding": [r["class"]]}]
    if "period" in r:
        r["actualPeriod"] = r.pop("period")
    if "hospitalization" in r:
        r["admission"] = r.pop("hospitalization")
    if "participant" in r:
        r["participant"] = [{("actor" if k == "individual" else k): v for k, v in p.items()}
                            for p in r["participant"]]
    return r


def _rewrite(src: Path, dst: Path) -> Path:
    """A copy of export folder `src` with every resource rewritten by `as_r5`."""
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if ".ndjson" not in path.name:
            shutil.copy(path, dst / path.name)
            continue
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f, opener(dst / path.name, "wt", encoding="utf-8") as out:
            for line in f:
                out.write(json.dumps(as_r5(json.loads(line))) + "\n")
    return dst


def _load(folder: Path, root: Path):
    cfg, name = with_fhir_folder(folder)
    cfg = cfg.model_copy(update={"root": root})
    root.mkdir(parents=True, exist_ok=True)
    return cfg, ingest(cfg, key=KEY, only=[name], report=False)


def _contacts(cfg) -> list[tuple]:
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        return con.sql("SELECT contact_id, person_id, occurred_at, recorded_at, service, status, mode, "
                       "professional_id FROM contacts ORDER BY contact_id").fetchall()


@pytest.mark.parametrize("which", ["ours", "another vendor's"])
def test_an_r5_export_loads_the_same_contacts_as_its_r4_twin(which, tmp_path, request):
    r4 = request.getfixturevalue("fhir2k")[0] if which == "ours" else FIXTURE
    cfg4, res4 = _load(r4, tmp_path / "a")
    cfg5, res5 = _load(_rewrite(r4, tmp_path / "r5"), tmp_path / "b")
    enc4, enc5 = ([f for f in res.files if f.table == "contacts"] for res in (res4, res5))
    assert [(f.rows_in, f.rows_loaded, f.rows_out_of_scope, f.reasons) for f in enc5] == [
        (f.rows_in, f.rows_loaded, f.rows_out_of_scope, f.reasons) for f in enc4]
    got, want = _contacts(cfg5), _contacts(cfg4)
    assert len(want) > (50_000 if which == "ours" else 200)
    assert any(r[7] is not None for r in want)  # participants were read, so `actor` was tested
    assert got == want


def test_r5_classes_admissions_and_statuses(tmp_path):
    """The class cases of the R4 test (`class_cases`), in R5, and R5's status for an encounter begun
    and not finished (it happened)."""
    encounters, contacts = class_cases()
    encounters = [as_r5(e) for e in encounters + [_enc("e10", "EMER", status="discontinued")]]
    assert all(isinstance(e["class"], list) and "actualPeriod" in e for e in encounters)
    cfg, result = _load(_export(tmp_path / "x", {"Patient": [_patient("p1")], "Encounter": encounters}), tmp_path)
    enc = next(f for f in result.files if f.table == "contacts")
    assert (enc.rows_in, enc.rows_loaded, enc.rows_out_of_scope) == (8, 8, 2)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        got = con.sql("SELECT contact_id, service, mode, status FROM contacts ORDER BY 1").fetchall()
    assert got == sorted(contacts + [("e10", "ae_attendance", "face_to_face", "attended")])
    assert enc.unmapped.get("service (elective admission, not read)") == {"admission:elective": 1}
