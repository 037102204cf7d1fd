"""Privacy by construction: a full demo writes no raw NHS number, postcode, name or free text
anywhere (warehouse, MLflow store, outputs, run summaries, the console), and an ad hoc FHIR load
writes no NHS number, name or postcode either."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from ingest_kit import (
    VISITS_HEADER,
    csv_text,
    numbers,
    project,
    register,
    rows,
    run,
    scan_for,
    source_nhs_numbers,
    visit,
)

from wobble.core.config import load_config


def _written(work: Path) -> list[Path]:
    """Every file the run wrote, except the synthetic world itself (the sources and the
    simulator's hidden truth are inputs, not outputs)."""
    return [p for p in work.rglob("*") if p.is_file() and "world" not in p.relative_to(work).parts]


def test_a_full_demo_writes_no_raw_identifier_anywhere(demo_run):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers = source_nhs_numbers(work / "world")
    assert len(numbers) > 10_000  # every registered person, plus invalid and unknown numbers
    reg = pl.read_csv(work / "world/raw/gp/registrations.csv", infer_schema=False)
    postcodes = tuple(sorted(set(reg["Postcode"].to_list())))
    names = tuple(sorted({f"{f} {s}" for f, s in zip(reg["Forename"], reg["Surname"], strict=True)}))
    files = _written(work)
    kinds = {p.suffix for p in files}
    assert {".duckdb", ".db", ".json", ".html", ".csv", ".md", ".vault"} <= kinds, kinds  # a real demo's outputs
    hits = scan_for(files, numbers, also=(*postcodes, *names, "Visited; noted"))
    assert hits == {}
    console = {"stdout": proc.stdout, "stderr": proc.stderr}
    for name, text in console.items():
        tmp = work / f".console-{name}.txt"
        tmp.write_text(text)
        try:
            assert scan_for([tmp], numbers, also=names) == {}, name
        finally:
            tmp.unlink()


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan must be able to fail: plant numbers in each kind of file it reads."""
    import sqlite3

    import duckdb

    number = "9434765919"
    (tmp_path / "a.txt").write_text("note: 943 476 5919 seen")
    with duckdb.connect(str(tmp_path / "w.duckdb")) as con:
        con.execute("CREATE TABLE t AS SELECT 'x' AS a, ? AS b", [number])
    with sqlite3.connect(tmp_path / "m.db") as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES ('943-476-5919')")
    pl.DataFrame({"v": [int(number)]}).write_parquet(tmp_path / "p.parquet", compression="zstd")
    (tmp_path / "ok.txt").write_text("19434765919 and 0.9434765919 are other numbers")
    hits = scan_for(sorted(tmp_path.iterdir()), {number}, also=("ZZ90 1AB",))
    assert set(hits) >= {str(tmp_path / "a.txt"), f"{tmp_path / 'w.duckdb'}:t", f"{tmp_path / 'm.db'}:t",
                         str(tmp_path / "p.parquet")}
    assert str(tmp_path / "ok.txt") not in hits


def test_a_record_id_built_from_an_nhs_number_is_kept_as_a_pseudonym(tmp_path):
    """Some systems build record ids from the NHS number: the warehouse keeps a stable pseudonym
    instead, so a correction still replaces the version held and a retraction still finds it."""
    a, b = numbers(2)
    cfg = project(tmp_path, files={"register.csv": register([a, b]), "visits.csv": csv_text(
        VISITS_HEADER, [visit(f"{a}-1", a), visit(f"{b.replace(' ', '')}-1", b), visit("V9", a)])})
    run(cfg)
    (tmp_path / "visits_2.csv").write_text(csv_text(VISITS_HEADER, [visit(f"{a}-1", a, entered="2025-03-02 09:00")]))
    result = run(cfg)
    assert result.total("rows_replaced") == 1
    ids = sorted(r[0] for r in rows(cfg, "SELECT contact_id FROM contacts"))
    hidden = [i for i in ids if i != "V9"]  # an id with no number in it is kept as sent
    assert len(ids) == 3 and len(set(hidden)) == 2
    assert all(i.startswith("pseudonym:") and len(i) == 26 for i in hidden)
    assert scan_for([load_config(cfg).warehouse], {a, b}) == {}


def test_a_record_id_whose_number_letters_or_underscores_touch_is_a_pseudonym_too(tmp_path):
    """'9434765919_20250301' or 'NHS9434765919': a word boundary did not see those numbers, and the
    ids stood in the warehouse as sent. A warehouse an earlier version filled so is put right once,
    at the next ingest: the ids become the pseudonyms a load now gives, so a correction still
    replaces the version held."""
    a, b = numbers(2)
    first, second = f"{a}_20250301", f"NHS{b.replace(' ', '')}x"
    cfg = project(tmp_path, files={"register.csv": register([a, b]), "visits.csv": csv_text(
        VISITS_HEADER, [visit(first, a), visit(second, b), visit("V9_2025", a)])})
    run(cfg)
    ids = sorted(r[0] for r in rows(cfg, "SELECT contact_id FROM contacts"))
    assert ids[0] == "V9_2025" and all(i.startswith("pseudonym:") for i in ids[1:])
    assert scan_for([load_config(cfg).warehouse], {a, b}) == {}

    # as an earlier version left it: the ids as sent, and the rule not yet applied
    import duckdb

    with duckdb.connect(str(load_config(cfg).warehouse)) as con:
        con.execute("DELETE FROM applied_rules")
        con.execute("UPDATE contacts SET contact_id = ? WHERE starts_with(contact_id, 'pseudonym:') AND person_id = "
                    "(SELECT person_id FROM contacts WHERE contact_id = 'V9_2025')", [first])  # a's other visit
        con.execute("UPDATE contacts SET contact_id = ? WHERE starts_with(contact_id, 'pseudonym:')", [second])
        con.execute("INSERT INTO quarantine VALUES ('b', 'visits', 'visits.csv', 9, 'unknown_code', ?, ?)",
                    [f"service: 'X{a}'", f"id={first}; service=X"])
    assert scan_for([load_config(cfg).warehouse], {a, b}) != {}
    (tmp_path / "visits_2.csv").write_text(csv_text(VISITS_HEADER, [visit(first, a, entered="2025-03-02 09:00")]))
    result = run(cfg)
    assert result.total("rows_replaced") == 1
    assert sorted(r[0] for r in rows(cfg, "SELECT contact_id FROM contacts")) == ids
    # every value the warehouse holds (its file's free blocks may keep the old bytes until DuckDB
    # reuses them: docs/ingest.md says how to copy it to a fresh file)
    held = " ".join(str(v) for (t,) in rows(cfg, "SELECT table_name FROM duckdb_tables()")
                    for r in rows(cfg, f'SELECT * FROM "{t}"') for v in r).replace(" ", "")
    assert a.replace(" ", "") not in held and b.replace(" ", "") not in held
    assert rows(cfg, "SELECT count(*) FROM applied_rules") == [(1,)]


def test_a_file_or_folder_named_for_an_nhs_number_is_shown_without_it(tmp_path):
    a, b = numbers(2)
    compact = a.replace(" ", "")
    cfg = project(tmp_path, files={"register.csv": register([a, b]), f"visits_{compact}.csv": csv_text(
        VISITS_HEADER, [visit("V1", a), visit("V2", b, when="not a date")])})
    result = run(cfg)
    assert [Path(f.file).name for f in result.files if "visits" in f.file] == ["visits_[number removed].csv"]
    held = rows(cfg, "SELECT file FROM load_ledger UNION ALL SELECT file FROM quarantine")
    assert len(held) >= 3 and not any(compact in f for (f,) in held)
