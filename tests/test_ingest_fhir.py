"""FHIR R4 Bulk Data ingest: a synthetic world's export loads like its CSV extracts, the ad hoc
command works with no wobble.toml, and FHIR's own cases (patients without an NHS number,
entered-in-error, out-of-scope resources, broken lines) are handled and reported."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import TEST_KEY, run_wobble

from wobble.core.config import load_config, with_fhir_folder
from wobble.ingest import ingest

KEY = TEST_KEY.encode()


@pytest.fixture(scope="module")
def export(fhir2k) -> tuple[Path, dict]:
    return fhir2k


@pytest.fixture(scope="module")
def adhoc(export, tmp_path_factory):
    """`wobble ingest --fhir DIR` from an empty folder: no wobble.toml anywhere."""
    folder, _ = export
    cwd = tmp_path_factory.mktemp("analyst")
    proc = run_wobble("ingest", "--fhir", str(folder), "--json", cwd=cwd,
                      env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    return cwd, proc


def _q(path: Path, sql: str):
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_export_is_bulk_data_ndjson(export):
    folder, counts = export
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Encounter", "Flag", "Condition", "Observation"}
    patients = [json.loads(line) for line in (folder / "Patient.ndjson").read_text().splitlines()]
    assert len(patients) == counts["Patient"] == 2000
    without = [p for p in patients if not any(i["system"].endswith("nhs-number") for i in p["identifier"])]
    assert 20 <= len(without) <= 60  # about 2%
    exts = {e["url"].rsplit("/", 1)[1] for p in patients for e in p.get("extension", [])}
    assert exts == {"Extension-UKCore-EthnicCategory", "us-core-race"}
    enc = json.loads((folder / "Encounter.ndjson").open().readline())
    assert enc["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert enc["serviceType"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert enc["subject"]["reference"].startswith("Patient/")


def test_ingest_fhir_works_without_a_config(adhoc, export):
    cwd, proc = adhoc
    assert proc.returncode == 0, proc.stderr[-2000:]
    st = json.loads(proc.stdout)["stages"]["ingest"]
    assert (cwd / "data/warehouse.duckdb").exists()
    assert Path(st["report"]).parent == cwd / "data/outputs/reports" and Path(st["report_html"]).exists()
    assert st["files_loaded"] == 5 and st["files_failed"] == 0
    assert st["rows_in"] == st["rows_loaded"] + st["rows_quarantined"] + st["rows_duplicate"]
    assert st["persons_from_other_identifier"] > 0
    report = Path(st["report"]).read_text()
    assert f"{st['persons_from_other_identifier']:,} people had no NHS number" in report
    assert "http://snomed.info/sct\\|1000001" in report  # unknown service codes are reported (| escaped)
    assert "resources are not ones wobble reads" in report
    assert "data-quality report:" in proc.stderr


def test_fhir_loads_what_the_csv_extracts_load(adhoc, world2k, tmp_path):
    """Same world, two routes: contacts of patients with an NHS number match one for one (bar
    missed appointments, which an R4 Encounter cannot say), times included."""
    from wobble.synth import demo_config

    cwd, _ = adhoc
    (tmp_path / "world").symlink_to(world2k)
    (tmp_path / "wobble.toml").write_text(demo_config("world"))
    csv_cfg = load_config(tmp_path / "wobble.toml")
    ingest(csv_cfg, key=KEY, report=False)
    fhir_wh = cwd / "data/warehouse.duckdb"
    with duckdb.connect(str(csv_cfg.warehouse)) as con:
        con.execute(f"ATTACH '{fhir_wh}' AS f (READ_ONLY)")
        persons = con.execute("""
            SELECT count(*), count(*) FILTER (
                WHERE c.birth_year = f.birth_year AND c.sex = f.sex
                  AND c.ethnicity_group = f.ethnicity_group AND c.practice_id = f.practice_id)
            FROM persons c JOIN f.persons f USING (person_id)
            WHERE NOT c.opted_out  -- the register's opt-out flag has no FHIR equivalent""").fetchone()
        assert persons[0] > 1800 and persons[1] == persons[0]
        diff = con.execute("""
            WITH a AS (SELECT contact_id, person_id, occurred_at, service, status, mode FROM contacts
                       WHERE status <> 'did_not_attend'
                         AND person_id IN (SELECT person_id FROM f.persons)),
                 b AS (SELECT contact_id, person_id, occurred_at, service, status, mode FROM f.contacts
                       WHERE person_id IN (SELECT person_id FROM persons WHERE NOT opted_out))
            SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b),
                   (SELECT count(*) FROM (SELECT * FROM a EXCEPT SELECT * FROM b)),
                   (SELECT count(*) FROM (SELECT * FROM b EXCEPT SELECT * FROM a))""").fetchone()
        assert diff[0] > 50_000 and diff[0] == diff[1] and diff[2:] == (0, 0), diff
        tags = con.execute("""
            SELECT (SELECT count(*) FROM tags WHERE person_id IN (SELECT person_id FROM f.persons)),
                   (SELECT count(*) FROM f.tags WHERE person_id IN
                    (SELECT person_id FROM persons WHERE NOT opted_out))""").fetchone()
        # (the only differences allowed: tags recorded in the hour the clocks skip in spring,
        # which an export writes an hour later than the naive CSV time)
        assert tags[0] == tags[1] > 1000


def test_fhir_reasons_out_of_scope_and_other_identifiers(adhoc, export):
    cwd, proc = adhoc
    folder, counts = export
    files = {Path(f): f for f in json.loads(proc.stdout)["stages"]["ingest"].get("errors", [])}
    assert not files
    wh = cwd / "data/warehouse.duckdb"
    ledger = dict(_q(wh, "SELECT regexp_extract(file, '[A-Za-z]+\\.ndjson$'), rows_in FROM load_ledger"))
    # every vital-sign Observation and diagnosis Condition is out of scope, not quarantined, and
    # so are tags whose code the map does not know (those are reported as unmapped codes)
    for kind in ("Observation", "Condition"):
        unknown = (folder / f"{kind}.ndjson").read_text().count('"code":"1000002"')
        assert ledger[f"{kind}.ndjson"] == counts[kind] - 80 - unknown
    unmapped = dict(_q(wh, "SELECT source || field || code, rows FROM ingest_unmapped"))
    assert unmapped.get("fhirtaghttp://snomed.info/sct|1000002", 0) > 0
    assert "fhirtaghttp://snomed.info/sct|75367002" not in unmapped  # a blood pressure is not a tag
    assert unmapped.get("fhirtaghttp://snomed.info/sct|44054006") == 80  # a diagnosis on the problem list
    reasons = dict(_q(wh, "SELECT reason, count(*) FROM quarantine GROUP BY ALL"))
    expected = {"invalid_nhs_number", "impossible_date", "unknown_code", "missing_field", "person_not_found"}
    assert expected <= set(reasons)
    raw = _q(wh, "SELECT raw FROM quarantine WHERE file LIKE '%Patient.ndjson' LIMIT 1")[0][0]
    assert "identifier(nhs-number)=**********" in raw and "address.postalCode=(removed)" in raw
    # patients without an NHS number are people too: loaded, and their encounters found
    other = _q(wh, """SELECT count(DISTINCT p.person_id), count(c.contact_id) FROM persons p
                      LEFT JOIN contacts c USING (person_id) WHERE p.person_id NOT IN
                      (SELECT person_id FROM persons WHERE source_system = 'fhir' AND birth_year IS NULL)""")
    assert other[0][1] > 0
    us_core = _q(wh, "SELECT count(*) FROM persons WHERE ethnicity_group IN ('White', 'Black', 'Asian', 'Other')")
    assert us_core[0][0] > 1500


def _mini_export(folder: Path, lines: dict[str, list[dict | str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, items in lines.items():
        text = "\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n"
        if name.endswith(".gz"):
            (folder / name).write_bytes(gzip.compress(text.encode()))
        else:
            (folder / name).write_text(text)
    return folder


def _patient(pid: str, nhs: str | None, **extra) -> dict:
    ident = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}] if nhs else [
        {"system": "https://hospital.example/Id/mrn", "value": f"MRN-{pid}"}]
    return {"resourceType": "Patient", "id": pid, "identifier": ident, "gender": "female", "birthDate": "1950",
            "generalPractitioner": [{"reference": "Organization/P1"}], **extra}


def _encounter(eid: str, pid: str, start="2025-03-01T10:00:00+00:00", status="finished", **extra) -> dict:
    return {"resourceType": "Encounter", "id": eid, "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
            "serviceType": {"coding": [{"system": "http://snomed.info/sct", "code": "310138006"}]},
            "subject": {"reference": f"https://server.example/fhir/Patient/{pid}"},
            "period": {"start": start}, "meta": {"lastUpdated": "2025-03-02T09:00:00Z"}, **extra}


def test_fhir_edge_cases(tmp_path):
    from ingest_kit import numbers

    a, b = numbers(2, seed=9)
    first = _mini_export(tmp_path / "exp1", {
        "Patient.ndjson": [_patient("p1", a), _patient("p2", None), _patient("p3", b, gender="unknown")],
        "Practitioner.ndjson": [{"resourceType": "Practitioner", "id": "dr1"}],
        "Encounter.000.ndjson.gz": [
            _encounter("e1", "p1"), _encounter("e2", "p2"), _encounter("e3", "p3"),
            '{"resourceType": "Encounter", "id": "e4", ',  # a line cut short
            {"resourceType": "Flag", "id": "f1"},  # not an Encounter
            _encounter("e5", "nobody"),
            _encounter("e6", "p1", start="2025-13-01T10:00:00+00:00"),
        ],
    })
    cfg, name = with_fhir_folder(first)
    cfg = cfg.model_copy(update={"root": tmp_path})
    r1 = ingest(cfg, key=KEY, only=[name], report=False)
    files = {Path(f.file).name: f for f in r1.files}
    assert not r1.failed
    assert (files["Practitioner.ndjson"].status, files["Practitioner.ndjson"].error) == (
        "not_read", "resource type Practitioner is not read")
    assert files["Patient.ndjson"].rows_loaded == 3 and files["Patient.ndjson"].other_identifier == 1
    enc = files["Encounter.000.ndjson.gz"]
    assert enc.status == "loaded", enc.error
    assert (enc.rows_in, enc.rows_loaded) == (7, 3)
    wh = cfg.warehouse
    assert _q(wh, "SELECT line, reason FROM quarantine ORDER BY line") == [
        (4, "malformed_line"), (5, "malformed_line"), (6, "person_not_found"), (7, "impossible_date")]
    assert _q(wh, "SELECT sex, birth_year FROM persons ORDER BY sex NULLS LAST") == [
        ("female", 1950), ("female", 1950), ("not_known", 1950)]  # gender unknown: kept as not known
    assert _q(wh, "SELECT DISTINCT service, mode, occurred_at::VARCHAR FROM contacts") == [
        ("community_nursing", "home_visit", "2025-03-01 10:00:00")]
    # a later export retracts e1: it is removed, and the retraction is quarantined with its reason
    second = _mini_export(tmp_path / "exp2", {"Encounter.ndjson": [
        _encounter("e1", "p1", status="entered-in-error"),
        _encounter("e2", "p2", start="2025-07-01T10:00:00+01:00", meta={"lastUpdated": "2025-07-02T10:00:00+01:00"}),
    ]})
    cfg2, _ = with_fhir_folder(second, cfg)
    r2 = ingest(cfg2, key=KEY, only=[name], report=False)
    f2 = r2.files[0]
    assert (f2.rows_retracted, f2.rows_replaced, f2.reasons) == (1, 1, {"entered_in_error": 1})
    assert _q(wh, "SELECT contact_id, occurred_at::VARCHAR FROM contacts ORDER BY 1") == [
        ("e2", "2025-07-01 10:00:00"), ("e3", "2025-03-01 10:00:00")]


@pytest.mark.parametrize("content, phrase", [
    ('{\n  "resourceType": "Patient",\n  "id": "x"\n', "not NDJSON"),  # JSON over several lines, cut short
    ('{"resourceType": "Patient", "id": "Zoë"}\n'.encode("latin-1"), "not UTF-8"),
    ("", "the file is empty"),
    ('{"resourceType": "Patient", "id": "x"}\n{"resourceType": "Patient", "id": "y", "gen', "looks truncated"),
])
def test_bad_fhir_files_fail_in_one_line(tmp_path, content, phrase):
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "Patient.ndjson").write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg, name = with_fhir_folder(folder, load_config(_config(tmp_path)))
    result = ingest(cfg, key=KEY, only=[name], report=False)
    assert result.files[0].status == "failed" and phrase in result.files[0].error
    assert "\n" not in result.files[0].error


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "wobble.toml"
    path.write_text('[paths]\nwarehouse = "wh.duckdb"\noutputs = "out"\n')
    return path


def test_opt_out_list_applies_to_fhir_patients(export, tmp_path):
    folder, _ = export
    path = tmp_path / "wobble.toml"
    path.write_text('[paths]\nwarehouse = "wh.duckdb"\noutputs = "out"\n'
                    f'[lookups]\nopt_outs = "{folder}/opt_outs.csv"\n'
                    f'[sources.ehr]\nkind = "fhir"\nsystem = "ehr"\npath = "{folder}"\n'
                    '[sources.ehr.values.service]\n"http://snomed.info/sct|1000001" = "gp_appointment"\n')
    cfg = load_config(path)
    result = ingest(cfg, key=KEY, report=False)
    listed = pl.read_csv(folder / "opt_outs.csv").height
    assert result.opt_out_list["entries"] == listed > 50
    assert result.opted_out_persons == result.opt_out_list["registered"] > 50
    assert result.reasons()["opted_out"] > 1000
    assert "unknown_code" not in {r for f in result.files if f.table == "contacts" for r in f.reasons}
    assert _q(cfg.warehouse, "SELECT count(*) FROM contacts JOIN persons USING (person_id) WHERE opted_out") == [(0,)]
