"""Ingest of CSV and Parquet extracts as real systems write them: line endings, byte-order marks,
encodings, odd headers, times with offsets, numbers saved as decimals; and a register that fails
holding back its run's activity."""

from __future__ import annotations

import duckdb
import pytest
from conftest import TEST_KEY, run_wobble
from ingest_kit import NOTES_HEADER, VISITS_HEADER, csv_text, numbers, project, register, visit

from wobble.core.config import load_config
from wobble.ingest import ingest

KEY = TEST_KEY.encode()
PEOPLE = numbers(4)
GOOD = csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0])])
NOTES = csv_text(NOTES_HEADER, [f"N1,{PEOPLE[0]},2025-03-01 10:00,LM"])


def run(cfg_path, **kw):
    return ingest(load_config(cfg_path), key=KEY, report=False, **kw)


def rows(cfg_path, sql):
    with duckdb.connect(str(load_config(cfg_path).warehouse), read_only=True) as con:
        return con.sql(sql).fetchall()


def by_file(result):
    return {f.file: f for f in result.files}


def one_line(error: str | None) -> bool:
    return bool(error) and "\n" not in error and "Traceback" not in error and len(error) < 300


# ---------------------------------------------------------------------------------------------
# A register that fails holds back its run's activity
# ---------------------------------------------------------------------------------------------


def test_activity_is_held_back_while_the_register_fails_and_loads_once_it_is_fixed(tmp_path):
    a, b = PEOPLE[:2]
    cfg = project(tmp_path, files={
        "register.csv": register([a, b]).replace(",", ";"),  # sent with the wrong delimiter this week
        "visits.csv": csv_text(VISITS_HEADER, [visit("V1", a), visit("V2", b)]),
        "notes.csv": csv_text(NOTES_HEADER, [f"N1,{b},2025-03-01 10:00,LM"]),
    })
    result = ingest(load_config(cfg), key=KEY)
    files = by_file(result)
    assert files["register.csv"].status == "failed"
    for name in ("visits.csv", "notes.csv"):
        assert files[name].status == "held" and one_line(files[name].error)
        assert "register file register.csv failed" in files[name].error
    assert {f.file for f in result.failed} == {"register.csv", "visits.csv", "notes.csv"}  # a non-zero exit
    assert result.summary()["files_held"] == 2
    assert "2 files held back until the register loads" in result.report_md.read_text()
    # neither loaded, nor quarantined as person_not_found, nor ledgered
    assert rows(cfg, "SELECT count(*) FROM quarantine") == [(0,)]
    assert rows(cfg, "SELECT count(*) FROM load_ledger") == [(0,)]
    (tmp_path / "register.csv").write_text(register([a, b]))
    again = by_file(run(cfg))
    assert {f.status for f in again.values()} == {"loaded"}
    assert rows(cfg, "SELECT count(*) FROM contacts") == [(2,)] and rows(cfg, "SELECT count(*) FROM tags") == [(1,)]


def test_activity_already_loaded_is_still_skipped_while_the_register_fails(tmp_path):
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits.csv": GOOD,
                                   "notes.csv": NOTES})
    run(cfg)
    (tmp_path / "register_2.csv").write_bytes(b"")
    files = by_file(run(cfg))
    assert files["register_2.csv"].status == "failed" and files["visits.csv"].status == "skipped"


# ---------------------------------------------------------------------------------------------
# Line endings and byte-order marks
# ---------------------------------------------------------------------------------------------


def test_cr_only_line_endings_fail_that_file_alone(tmp_path):
    cr = csv_text(VISITS_HEADER, [visit("V2", PEOPLE[0])]).replace("\n", "\r")
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits_a.csv": cr,
                                   "visits_b.csv": GOOD, "notes.csv": NOTES})
    proc = run_wobble("ingest", "--config", str(cfg), env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "visits_a.csv: lines end in CR only (old Mac format)" in proc.stderr
    assert rows(cfg, "SELECT contact_id FROM contacts") == [("V1",)]


def test_an_unexpected_error_fails_that_file_in_one_line_and_the_rest_load(tmp_path, monkeypatch):
    import wobble.ingest.run as run_module

    real = run_module.open_input

    def faulty(con, cfg, source, path, fp):
        if path.name == "visits_a.csv":
            raise KeyError("boom")
        return real(con, cfg, source, path, fp)

    monkeypatch.setattr(run_module, "open_input", faulty)
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits_a.csv": GOOD,
                                   "visits_b.csv": GOOD.replace("V1", "V2"), "notes.csv": NOTES})
    files = by_file(run(cfg))
    bad = files["visits_a.csv"]
    assert bad.status == "failed" and one_line(bad.error), bad.error
    assert "unexpected KeyError" in bad.error and "test_ingest_formats.py" in bad.error
    assert files["visits_b.csv"].status == "loaded"


def test_a_byte_order_mark_before_a_quoted_header(tmp_path):
    quoted = "\ufeff" + ",".join(f'"{c}"' for c in VISITS_HEADER.split(",")) + "\n" + visit("V1", PEOPLE[0]) + "\n"
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits.csv": quoted})
    f = by_file(run(cfg))["visits.csv"]
    assert (f.status, f.rows_loaded) == ("loaded", 1), f.error


# ---------------------------------------------------------------------------------------------
# Times with an offset: the instant, as London wall-clock time, whatever the session's zone
# ---------------------------------------------------------------------------------------------

ZONES = ("UTC", "America/New_York", "Asia/Kolkata")


def _in_zone(monkeypatch, zone: str) -> None:
    """Run ingest with DuckDB's session TimeZone set to `zone` (as a host in that zone would)."""
    from contextlib import contextmanager

    import wobble.ingest.run as run_module

    real = run_module.connect

    @contextmanager
    def connect(*args, **kw):
        with real(*args, **kw) as con:
            con.execute(f"SET TimeZone = '{zone}'")
            yield con

    monkeypatch.setattr(run_module, "connect", connect)


@pytest.mark.parametrize("zone", ZONES)
def test_text_times_with_an_offset_are_stored_as_london_wall_clock(tmp_path, monkeypatch, zone):
    _in_zone(monkeypatch, zone)
    a = PEOPLE[0]
    visits = [visit("V1", a, when="2025-07-01T10:00:00Z", entered="2025-07-01T10:30:00Z"),  # BST: 11:00
              visit("V2", a, when="2025-01-15T10:00:00-05:00", entered="2025-01-15T10:30:00-05:00"),  # 15:00
              visit("V3", a, when="2025-07-01 10:00:00+0100", entered="2025-07-01 10:30"),  # 10:00
              visit("V4", a, when="2025-07-01 10:00", entered="2025-07-01 10:30")]  # naive: as written
    cfg = project(tmp_path, files={"register.csv": register([a]), "visits.csv": csv_text(VISITS_HEADER, visits)})
    text = (tmp_path / "wobble.toml").read_text().replace('timestamp_format = "%Y-%m-%d %H:%M"\n', "", 1)
    (tmp_path / "wobble.toml").write_text(text)
    run(cfg)
    assert rows(cfg, "SELECT contact_id, occurred_at::VARCHAR, recorded_at::VARCHAR FROM contacts ORDER BY 1") == [
        ("V1", "2025-07-01 11:00:00", "2025-07-01 11:30:00"), ("V2", "2025-01-15 15:00:00", "2025-01-15 15:30:00"),
        ("V3", "2025-07-01 10:00:00", "2025-07-01 10:30:00"), ("V4", "2025-07-01 10:00:00", "2025-07-01 10:30:00")]


@pytest.mark.parametrize("zone", ZONES)
def test_a_format_with_an_offset_ignores_the_host_zone_and_the_source_zone(tmp_path, monkeypatch, zone):
    _in_zone(monkeypatch, zone)
    a = PEOPLE[0]
    visits = [visit("V1", a, when="2025-07-01T10:00:00+0000", entered="2025-07-01 10:30"),
              visit("V2", a, when="2025-01-15T10:00:00-0500", entered="2025-01-15 15:30")]
    cfg = project(tmp_path, visits_extra='timezone = "UTC"\nformats = { occurred_at = "%Y-%m-%dT%H:%M:%S%z" }',
                  files={"register.csv": register([a]), "visits.csv": csv_text(VISITS_HEADER, visits)})
    run(cfg)
    assert rows(cfg, "SELECT contact_id, occurred_at::VARCHAR, recorded_at::VARCHAR FROM contacts ORDER BY 1") == [
        ("V1", "2025-07-01 11:00:00", "2025-07-01 11:30:00"), ("V2", "2025-01-15 15:00:00", "2025-01-15 15:30:00")]


# ---------------------------------------------------------------------------------------------
# Headers with blank names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header_end", "row_end"), [(",", ","), (",", ""), (",,", ",a,b")])
def test_blank_header_names_are_unmapped_columns(tmp_path, header_end, row_end):
    """A trailing delimiter (on every line, or on the header only) or two unnamed columns."""
    text = VISITS_HEADER + header_end + "\n" + "".join(visit(f"V{i}", PEOPLE[0]) + row_end + "\n" for i in (1, 2))
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits.csv": text})
    f = by_file(run(cfg))["visits.csv"]
    assert (f.status, f.rows_loaded, f.rows_quarantined) == ("loaded", 2, 0), f.error


# ---------------------------------------------------------------------------------------------
# Windows-1252 text
# ---------------------------------------------------------------------------------------------


def test_windows_1252_files_load_with_encoding_cp1252(tmp_path):
    a, b = PEOPLE[:2]
    reg = "NHS,Sex,Born,Team,OptOut,Name\n" + f"{a},F,1950,T01,N,O\u2019Brien \u20ac\n{b},F,1950,T01,N,Zo\u00eb\n"
    visits = csv_text(VISITS_HEADER, [visit("V1", a, staff="S\u20191"), visit("V2", b)])
    cfg = project(tmp_path, visits_extra='encoding = "windows-1252"',
                  files={"register.csv": reg.encode("cp1252"), "visits.csv": visits.encode("cp1252")})
    text = (tmp_path / "wobble.toml").read_text().replace('path = "register*.csv"',
                                                          'path = "register*.csv"\nencoding = "cp1252"')
    (tmp_path / "wobble.toml").write_text(text)
    files = by_file(run(cfg))
    assert [(f.status, f.rows_loaded) for f in files.values() if f.source != "notes"] == [("loaded", 2)] * 2
    assert not (tmp_path / "wh.duckdb.transcoded").exists()  # the UTF-8 copies are gone
    # latin-1 cannot hold those bytes: one line says what to set
    (tmp_path / "wobble.toml").write_text(text.replace('"cp1252"', '"latin-1"'))
    (tmp_path / "register_2.csv").write_bytes(reg.replace("Zo", "Zoe").encode("cp1252"))
    bad = by_file(run(cfg))["register_2.csv"]
    assert bad.status == "failed" and 'set encoding = "cp1252"' in bad.error and one_line(bad.error), bad.error


def test_a_byte_windows_1252_does_not_define_fails_the_file_naming_its_line(tmp_path):
    data = (GOOD + visit("V2", PEOPLE[0]) + "\n").encode("cp1252") + b"V3,\x81\n"
    cfg = project(tmp_path, visits_extra='encoding = "cp1252"',
                  files={"register.csv": register(PEOPLE[:1]), "visits.csv": data})
    bad = by_file(run(cfg))["visits.csv"]
    assert bad.status == "failed" and bad.error.startswith("line 4 is not cp1252 text (byte 0x81)"), bad.error


# ---------------------------------------------------------------------------------------------
# A header and no rows is an empty file
# ---------------------------------------------------------------------------------------------


ACUTE = ('\n[sources.acute]\nkind = "parquet"\ntable = "contacts"\nsystem = "acute"\npath = "acute.parquet"\n'
         '[sources.acute.columns]\nrecord_id = "Id"\nnhs_number = "NHS"\noccurred_at = "When"\nservice = "Service"\n')


@pytest.mark.parametrize("content", [VISITS_HEADER + "\n", VISITS_HEADER, VISITS_HEADER + "\r\n\r\n", "parquet"])
def test_a_file_with_no_rows_after_the_header_fails_alone(tmp_path, content):
    import polars as pl

    files = {"register.csv": register(PEOPLE[:1]), "visits_a.csv": GOOD, "notes.csv": NOTES}
    if content == "parquet":
        empty, phrase = "acute.parquet", "no rows: the file is empty"
        pl.DataFrame(schema=dict.fromkeys(VISITS_HEADER.split(","), pl.String)).write_parquet(tmp_path / empty)
    else:
        empty, phrase = "visits_b.csv", "no rows after the header: the file is empty"
        files[empty] = content
    cfg = project(tmp_path, files=files)
    cfg.write_text(cfg.read_text() + (ACUTE if content == "parquet" else ""))
    result = ingest(load_config(cfg), key=KEY)
    got = by_file(result)
    assert (got[empty].status, got[empty].error) == ("failed", phrase)
    assert all(f.status == "loaded" for name, f in got.items() if name != empty)
    assert "All well" not in result.report_md.read_text()
