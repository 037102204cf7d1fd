"""A FHIR file named for no type that holds several (as some exporters write one `export.ndjson`
for everything) loads each type as a part of its own: Patients first, then the activity, each part
ledgered on its own, and the warehouse holds what the same export split into one file per type
would give, row for row. Lines that are no resource are quarantined once, by the part that loads
first; types wobble does not read are reported as such, named by the file and the type."""

from __future__ import annotations

import gzip
import json
import random
import re
from datetime import datetime
from pathlib import Path

import duckdb
import pytest
from conftest import TEST_KEY
from test_ingest_other_vendors import FIXTURE, _enc, _patient

from wobble.core.config import with_fhir_folder
from wobble.ingest import ingest

KEY = TEST_KEY.encode()
NOW = datetime(2026, 12, 1)
TABLES = {
    "persons": "SELECT * EXCLUDE (batch_id) FROM persons ORDER BY person_id",
    "contacts": "SELECT * EXCLUDE (batch_id) FROM contacts ORDER BY contact_id, source_system",
    "tags": "SELECT * EXCLUDE (batch_id) FROM tags ORDER BY ALL",
}


def _resources(folder: Path) -> list[str]:
    """Every resource line of an export folder's NDJSON files (gzipped or not)."""
    lines = []
    for path in sorted(folder.iterdir()):
        if ".ndjson" in path.name:
            opener = gzip.open if path.name.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                lines += [line.rstrip("\n") for line in f if line.strip()]
    return lines


def _one_file(lines: list[str], path: Path, *, seed: int = 3) -> Path:
    """`lines` in one file, shuffled so that activity comes before the Patients it names."""
    lines = list(lines)
    random.Random(seed).shuffle(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _load(export: Path, root: Path):
    cfg, name = with_fhir_folder(export)
    cfg = cfg.model_copy(update={"root": root})
    root.mkdir(parents=True, exist_ok=True)
    return cfg, ingest(cfg, key=KEY, only=[name], report=False, now=NOW)


def _name(f) -> str:
    return Path(f.file).name


def _tables(cfg) -> dict[str, list[tuple]]:
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        return {t: con.sql(sql).fetchall() for t, sql in TABLES.items()}


@pytest.mark.parametrize("which", ["ours", "another vendor's"])
def test_one_file_of_every_type_loads_as_the_split_export_does(which, tmp_path, request):
    split = request.getfixturevalue("fhir2k")[0] if which == "ours" else FIXTURE
    name = "export.ndjson" if which == "ours" else "everything.ndjson.gz"
    mixed = _one_file(_resources(split), tmp_path / "mixed" / name)
    cfg_split, res_split = _load(split, tmp_path / "a")
    cfg_mixed, res_mixed = _load(mixed.parent, tmp_path / "b")
    assert not res_mixed.failed, [(f.file, f.error) for f in res_mixed.failed]
    want, got = _tables(cfg_split), _tables(cfg_mixed)
    assert len(want["contacts"]) > (50_000 if which == "ours" else 200) and want["persons"] and want["tags"]
    assert got == want
    by_table = {}
    for f in res_mixed.files:
        by_table.setdefault(f.table, []).append(f)
    for table in ("persons", "contacts", "tags"):  # the same counts, file by file, as parts
        parts = [f for f in res_split.files if f.table == table]
        assert sum(f.rows_loaded for f in by_table[table]) == sum(f.rows_loaded for f in parts)
        assert sum(f.rows_quarantined for f in by_table[table]) == sum(f.rows_quarantined for f in parts)
    assert {_name(f) for f in res_mixed.files if f.table == "persons"} == {f"{name} (Patient resources)"}

    again = ingest(cfg_mixed, key=KEY, report=False, now=NOW)  # each part is in the ledger
    assert {f.status for f in again.files if f.status != "not_read"} == {"skipped"}
    assert _tables(cfg_mixed) == want


def test_malformed_lines_are_quarantined_once_and_unread_types_named(tmp_path):
    lines = [json.dumps(r) for r in (
        _enc("e1", "EMER"), _patient("p1"), {"resourceType": "Practitioner", "id": "dr1"},
        _enc("e2", "EMER"), {"id": "no-type"}, _patient("p2"))] + ["{not json", "[1, 2]"]
    mixed = _one_file(lines, tmp_path / "x" / "bulk.ndjson")
    cfg, result = _load(mixed.parent, tmp_path / "w")
    files = {(_name(f), f.table): f for f in result.files}
    pat, enc = files[("bulk.ndjson (Patient resources)", "persons")], files[("bulk.ndjson (Encounter resources)",
                                                                              "contacts")]
    assert (pat.rows_loaded, pat.reasons) == (2, {"malformed_line": 3})
    assert (enc.rows_in, enc.rows_loaded, enc.reasons) == (2, 2, {})
    practitioner = next(f for f in result.files if f.status == "not_read")
    assert _name(practitioner) == "bulk.ndjson (Practitioner resources)"
    assert "Practitioner is not read" in practitioner.error
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        assert con.sql("SELECT count(*) FROM quarantine").fetchall() == [(3,)]
        assert con.sql("SELECT count(*) FROM load_ledger").fetchall() == [(2,)]


def test_a_file_named_for_its_type_still_quarantines_other_types(tmp_path):
    """The file's name says what it holds, so a Patient in an Encounter file is a fault, as before."""
    folder = tmp_path / "x"
    _one_file([json.dumps(_patient("p1"))], folder / "Patient.ndjson")
    _one_file([json.dumps(_enc("e1", "EMER")), json.dumps(_patient("p2"))], folder / "Encounter.ndjson")
    cfg, result = _load(folder, tmp_path / "w")
    enc = next(f for f in result.files if f.table == "contacts")
    assert (_name(enc), enc.rows_loaded, enc.reasons) == ("Encounter.ndjson", 1, {"malformed_line": 1}), enc


def _by_patient(lines: list[str]) -> dict[str, list[dict]]:
    """Resources grouped by the Patient they are about (the first 'Patient/<id>' they name)."""
    groups: dict[str, list[dict]] = {}
    for line in lines:
        r = json.loads(line)
        about = r["id"] if r["resourceType"] == "Patient" else (
            re.search(r'"Patient/([^"/]+)"', line).group(1) if '"Patient/' in line else "")
        groups.setdefault(about, []).append(r)
    return groups


def _bundle(resources: list[dict], kind: str = "transaction") -> dict:
    """A Bundle of `resources` as a transaction names them: each by a urn:uuid fullUrl, and every
    reference to another entry by that urn, not by Type/id."""
    urns = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:{r['resourceType']}-{r['id']}" for r in resources}
    text = json.dumps(resources)
    for ref, urn in urns.items():
        text = text.replace(f'"{ref}"', f'"{urn}"')
    return {"resourceType": "Bundle", "type": kind, "entry": [
        {"fullUrl": urns[f"{r['resourceType']}/{r['id']}"], "resource": r,
         "request": {"method": "POST", "url": r["resourceType"]}} for r in json.loads(text)]}


def test_bundles_of_a_persons_records_load_as_the_split_export_does(fhir2k, tmp_path):
    """Two layouts other systems write: a file of Bundles, one person's records per line (all 2,000
    people), and one pretty-printed transaction Bundle per person named for the person (as Synthea
    does; 40 people). Entries name each other by urn:uuid; the warehouse must hold what the split
    export gives, row for row."""
    groups = _by_patient(_resources(fhir2k[0]))
    assert "" not in groups  # every resource is about a Patient
    lines = [json.dumps(_bundle(rs, "collection")) for rs in groups.values()]
    cfg_b, res_b = _load(_one_file(lines, tmp_path / "bundles" / "people.ndjson").parent, tmp_path / "b")
    assert not res_b.failed, [(f.file, f.error) for f in res_b.failed]
    cfg_s, _ = _load(fhir2k[0], tmp_path / "s")
    want = _tables(cfg_s)
    assert _tables(cfg_b) == want

    few = dict(list(groups.items())[:40])
    folder = tmp_path / "synthea"
    folder.mkdir()
    for k, (pid, rs) in enumerate(few.items()):
        (folder / f"Given{k}_Family{k}_{pid}.json").write_text(json.dumps(_bundle(rs), indent=2))
    cfg_p, res_p = _load(folder, tmp_path / "p")
    assert not res_p.failed, [(f.file, f.error) for f in res_p.failed]
    got = _tables(cfg_p)
    with duckdb.connect(str(cfg_p.warehouse), read_only=True) as con:
        people = {r[0] for r in con.sql("SELECT person_id FROM persons").fetchall()}
    assert len(people) == 40 and got["contacts"] and got["tags"]
    assert got == {t: [r for r in rows if (r[0] if t == "persons" else r[1]) in people] for t, rows in want.items()}


def test_a_file_of_several_types_is_read_once_a_run_and_not_again_once_loaded(tmp_path, monkeypatch):
    """Its parts share one fingerprint; once every part is in the ledger and the file has settled,
    its stat data stand for its bytes (`known_hash`), as for any other file."""
    import time

    import wobble.ingest.reader as reader

    lines = [json.dumps(r) for r in (_patient("p1"), _enc("e1", "EMER"), _enc("e2", "EMER"))]
    mixed = _one_file(lines, tmp_path / "x" / "bulk.ndjson")
    read: list[str] = []
    real = reader.fingerprint
    monkeypatch.setattr(reader, "fingerprint", lambda path: read.append(Path(path).name) or real(path))
    cfg, first = _load(mixed.parent, tmp_path / "w")
    assert read == ["bulk.ndjson"] and [f.status for f in first.files] == ["loaded", "loaded"]
    time.sleep(reader.SETTLED_NS / 1e9)
    ingest(cfg, key=KEY, report=False, now=NOW)  # hashed again (written just before), now settled
    read.clear()
    again = ingest(cfg, key=KEY, report=False, now=NOW)
    assert read == [] and [f.status for f in again.files] == ["skipped", "skipped"]


def test_a_persons_file_is_named_by_its_hash_not_its_name_anywhere(tmp_path):
    """Synthea names each person's Bundle `Given_Family_<id>.json`: the console, the report, the run
    summary, the vault and the warehouse (ledger, quarantine, the stat cache) name such a file by
    its folder and content hash. A file named for its type, or holding several people, keeps its name."""
    import hashlib

    from conftest import run_wobble

    folder = tmp_path / "export"
    folder.mkdir()
    names = {}
    for k, pid in enumerate(("9434765919", "p2")):
        enc = _enc(f"e{k}", "EMER", subject={"reference": f"Patient/{pid}"})
        bad = _enc(f"x{k}", "EMER", subject={"reference": f"Patient/{pid}"}, period={"start": "not a date"})
        nhs = {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": pid} if pid[0].isdigit() else {}
        patient = _patient(pid, identifier=[nhs] if nhs else _patient(pid)["identifier"])
        path = folder / f"Zebedee{k}_Quartermain{k}_{pid}.json"
        path.write_text(json.dumps(_bundle([patient, enc, bad]), indent=2))
        names[path] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    bulk = [json.dumps(r) for r in (_patient("p3"), _patient("p4"), _enc("e9", "EMER", subject={
        "reference": "Patient/p3"}))]
    _one_file(bulk, folder / "everyone_Quartermain.ndjson")
    _one_file([json.dumps(_patient("p5"))], folder / "Patient.ndjson")
    cwd = tmp_path / "analyst"
    cwd.mkdir()
    proc = run_wobble("ingest", "--fhir", str(folder), "--json", cwd=cwd, env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout + proc.stderr + "".join(
        p.read_text(encoding="utf-8") for p in (cwd / "data").rglob("*") if p.suffix in (".md", ".html", ".json"))
    with duckdb.connect(str(cwd / "data" / "warehouse.duckdb"), read_only=True) as con:
        kept = con.sql("SELECT string_agg(file, ' ') FROM load_ledger").fetchall()[0][0]
        said += kept + con.sql("SELECT string_agg(file, ' ') FROM quarantine").fetchall()[0][0]
        said += con.sql("SELECT string_agg(path, ' ') FROM file_hashes").fetchall()[0][0]
    assert "Zebedee" not in said and "9434765919" not in said
    for sha in names.values():
        assert f"export/one person's records, sha256 {sha} (Encounter resources)" in kept
    assert "everyone_Quartermain.ndjson (Encounter resources)" in kept and "Patient.ndjson" in kept


def test_the_paths_an_earlier_version_kept_in_the_stat_cache_go_when_the_warehouse_is_opened(tmp_path):
    from wobble.core.warehouse import connect

    wh = tmp_path / "warehouse.duckdb"
    with connect(wh) as con:
        for key in ("/data/Zebedee_Quartermain_1.json", r"C:\data\Zebedee.json", "ab" * 32):
            con.execute("INSERT INTO file_hashes VALUES (?, 1, 1, 1, 1, 1, 'h', 1)", [key])
    with connect(wh) as con:
        assert con.sql("SELECT path FROM file_hashes").fetchall() == [("ab" * 32,)]
