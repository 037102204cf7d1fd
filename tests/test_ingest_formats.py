"""Ingest of CSV and Parquet extracts as real systems write them: line endings, byte-order marks,
encodings, odd headers, times with offsets, numbers saved as decimals; and a register that fails
holding back its run's activity."""

from __future__ import annotations

import csv
import io

import duckdb
import pytest
from conftest import TEST_KEY, run_wobble
from ingest_kit import (
    KEY,
    NOTES_HEADER,
    REGISTER_HEADER,
    VISITS_HEADER,
    broken,
    by_file,
    csv_text,
    numbers,
    project,
    register,
    rows,
    run,
    visit,
)

from wobble.core.config import load_config
from wobble.ingest import ingest

PEOPLE = numbers(4)
GOOD = csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0])])
NOTES = csv_text(NOTES_HEADER, [f"N1,{PEOPLE[0]},2025-03-01 10:00,LM"])


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


def test_no_register_file_holds_activity_back_only_until_a_register_has_loaded(tmp_path):
    """A site that moves loaded extracts away sends no register some weeks: the register already
    loaded places that week's activity. With no register ever loaded, the activity waits."""
    a = PEOPLE[0]
    cfg = project(tmp_path, files={"visits.csv": GOOD})
    files = by_file(run(cfg))
    assert files["visits.csv"].status == "held" and rows(cfg, "SELECT count(*) FROM quarantine") == [(0,)]
    (tmp_path / "register.csv").write_text(register([a]))
    assert by_file(run(cfg))["visits.csv"].status == "loaded"
    (tmp_path / "register.csv").unlink()  # moved away once loaded
    (tmp_path / "notes.csv").write_text(NOTES)
    files = by_file(run(cfg))
    assert files["register*.csv"].status == "failed" and files["notes.csv"].status == "loaded"
    assert rows(cfg, "SELECT count(*) FROM tags") == [(1,)]


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

    def faulty(con, cfg, f, fp):
        if f.path.name == "visits_a.csv":
            raise KeyError("boom")
        return real(con, cfg, f, fp)

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


# ---------------------------------------------------------------------------------------------
# NHS numbers that Excel saved as decimals
# ---------------------------------------------------------------------------------------------


def _scientific(nhs: str, digits: int = 9) -> str:
    """The number as Excel writes it in scientific notation, with `digits` after the point."""
    return f"{nhs[0]}.{nhs[1:1 + digits]}E+09"


def test_nhs_numbers_saved_as_whole_decimals_are_the_number_and_others_say_what_they_looked_like(tmp_path):
    a, b, c = PEOPLE[:3]
    reg = "NHS,Sex,Born,Team,OptOut\n" + f"{a}.0,F,1950,T01,N\n{b},F,1950,T01,N\n{c}.5,F,1950,T01,N\n"
    visits = [visit("V1", f"{a}.0"), visit("V2", _scientific(b)), visit("V3", f" {a}.00\u00a0"),
              visit("V4", f"{a}.5"), visit("V5", _scientific(b, 5)), visit("V6", f"{broken(a)}.0"),
              visit("V7", broken(a)), visit("V8", "unknown")]
    cfg = project(tmp_path, files={"register.csv": reg, "visits.csv": csv_text(VISITS_HEADER, visits)})
    files = by_file(run(cfg))
    assert (files["register.csv"].rows_loaded, files["visits.csv"].rows_loaded) == (2, 3)
    assert rows(cfg, "SELECT contact_id FROM contacts ORDER BY 1") == [("V1",), ("V2",), ("V3",)]
    got = rows(cfg, "SELECT file, line, reason, detail FROM quarantine ORDER BY file, line")
    assert got == [
        ("register.csv", 4, "invalid_nhs_number", "nhs_number: '##########.#' (a decimal, not a whole number)"),
        ("visits.csv", 5, "invalid_nhs_number", "nhs_number: '##########.#' (a decimal, not a whole number)"),
        ("visits.csv", 6, "invalid_nhs_number",
         "nhs_number: '#.#####E+##' (scientific notation without all ten digits: save the column as text)"),
        ("visits.csv", 7, "invalid_nhs_number", "nhs_number: '##########.#' (check digit does not match)"),
        ("visits.csv", 8, "invalid_nhs_number", None),  # ten digits, check digit wrong: the reason says it all
        ("visits.csv", 9, "invalid_nhs_number", "nhs_number: not written as a number (length 7)"),
    ]


def test_nhs_numbers_excel_kept_as_text_are_the_number(tmp_path):
    """Excel's text forms ('9434765919, ="9434765919", the latter quoted as CSV writes it) are the
    number, on the register and on activity alike; a form of a form, or a wrong number, is not."""
    a, b = PEOPLE[:2]
    reg = "NHS,Sex,Born,Team,OptOut\n" + f"'{a},F,1950,T01,N\n\"=\"\"{b}\"\"\",F,1950,T01,N\n"
    visits = [visit("V1", a), visit("V2", f"'{b}"), visit("V3", f'"=""{a}"""'), visit("V4", f"' {a[:3]} {a[3:]}"),
              visit("V5", f"''{a}"), visit("V6", f"'{broken(a)}"), visit("V7", f'"=""{a[:9]}"""')]
    cfg = project(tmp_path, files={"register.csv": reg, "visits.csv": csv_text(VISITS_HEADER, visits)})
    files = by_file(run(cfg))
    assert (files["register.csv"].rows_loaded, files["visits.csv"].rows_loaded) == (2, 4)
    assert rows(cfg, "SELECT count(DISTINCT person_id) FROM contacts") == [(2,)]  # one person per number
    got = rows(cfg, "SELECT line, reason, detail FROM quarantine ORDER BY line")
    assert got == [(6, "invalid_nhs_number", "nhs_number: \'\'\'##########\' (not ten digits)"),
                   (7, "invalid_nhs_number", None),
                   (8, "invalid_nhs_number", "nhs_number: \'=\"#########\"\' (9 digits, not 10)")]


def test_sql_reads_excel_decimals_as_python_does():
    from wobble.ingest.identifiers import is_valid_nhs_number, nhs_digits, nhs_normalised_sql, nhs_valid_sql

    a = PEOPLE[0]
    values = [f"{a}.0", f"{a}.", f"\t{a}.000 ", _scientific(a), _scientific(a).lower().replace("+", ""),
              _scientific(a).replace("+09", "+009"), _scientific(a).replace("+", "-"), f"{a}.01", f"{a[:3]} {a[3:]}.0",
              _scientific(a, 8), f"{a}0.0", f"1{a}.0", f"{a}.0.0", "1.5", ".0", f"{a}.٠"]
    with duckdb.connect() as con:
        got = con.execute(f"SELECT {nhs_normalised_sql('v')}, {nhs_valid_sql(nhs_normalised_sql('v'))} "
                          "FROM unnest(?::VARCHAR[]) WITH ORDINALITY AS t(v, i) ORDER BY i", [values]).fetchall()
    assert got == [(nhs_digits(v), is_valid_nhs_number(v)) for v in values]
    assert [ok for _, ok in got] == [True] * 6 + [False] * 10


# ---------------------------------------------------------------------------------------------
# Compressed and UTF-16 files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["visits.csv.gz", "visits_gz.csv"])  # by name, or by its first bytes alone
def test_a_gzip_compressed_csv_loads_with_the_files_own_line_numbers(tmp_path, name):
    import gzip

    a = PEOPLE[0]
    text = csv_text(VISITS_HEADER + ",Note", [visit("V1", a) + ',"two\nlines"', visit("V2", a, service="XRAY") + ",x"])
    cfg = project(tmp_path, files={"register.csv": register([a]), name: gzip.compress(text.encode())})
    cfg.write_text(cfg.read_text().replace('path = "visits*.csv"', 'path = "visits*.csv*"'))
    f = by_file(run(cfg))[name]
    assert (f.status, f.rows_in, f.rows_loaded, f.error) == ("loaded", 2, 1, None)
    assert rows(cfg, "SELECT line, reason, detail FROM quarantine") == [(4, "unknown_code", "service: 'XRAY'")]


def test_a_damaged_gzip_file_fails_alone_in_one_line(tmp_path):
    import gzip

    packed = gzip.compress((GOOD * 2000).encode())
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits_a.csv": packed[:40],
                                   "visits_b.csv": GOOD.replace("V1", "V2")})
    files = by_file(run(cfg))
    assert files["visits_a.csv"].status == "failed" and one_line(files["visits_a.csv"].error)
    assert "gzip" in files["visits_a.csv"].error, files["visits_a.csv"].error
    assert files["visits_b.csv"].status == "loaded"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_text_as_excel_saves_unicode_text_loads(tmp_path, codec):
    """Excel's "Unicode text": UTF-16 with a byte-order mark, tab-delimited."""
    a, b = PEOPLE[:2]
    lines = [visit("V1", a, staff="Zo\u00eb"), visit("V2", b, service="XRAY"), visit("V3", b, outcome="DNA")]
    text = "\ufeff" + csv_text(VISITS_HEADER, lines).replace(",", "\t").replace("\n", "\r\n")
    cfg = project(tmp_path, visits_extra='delimiter = "\\t"',
                  files={"register.csv": register([a, b]), "visits.csv": text.encode(codec)})
    f = by_file(run(cfg))["visits.csv"]
    assert (f.status, f.rows_loaded, f.error) == ("loaded", 2, None)
    assert rows(cfg, "SELECT line, detail FROM quarantine") == [(3, "service: 'XRAY'")]
    assert rows(cfg, "SELECT count(DISTINCT professional_id) FROM contacts") == [(2,)]
    assert not (tmp_path / "wh.duckdb.transcoded").exists()  # the UTF-8 copy is gone


def test_utf16_without_a_byte_order_mark_is_named_as_such(tmp_path):
    text = GOOD.encode("utf-16-le")
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits.csv": text})
    f = by_file(run(cfg))["visits.csv"]
    assert f.status == "failed" and "UTF-16" in f.error and one_line(f.error), f.error


# ---------------------------------------------------------------------------------------------
# Codes with other white space, or in another case
# ---------------------------------------------------------------------------------------------


def test_codes_match_ignoring_case_and_white_space_of_any_kind(tmp_path):
    a = PEOPLE[0]
    spelt = [("DN", "Seen\u00a0"), ("dn", "seen"), ("DN\u2003", " SEEN"), ("\u200bDN", "dna"), (" Dn\t", "DNA\u3000"),
             ("XRAY\u00a0", "Seen"), ("\u00a0", "Seen")]
    visits = [visit(f"V{i}", a, service=s, outcome=o, how="home\u00a0") for i, (s, o) in enumerate(spelt, 1)]
    notes = [f"N1,{a},2025-03-01 10:00,lm\u00a0", f"N2,{a},2025-03-01 10:00,Sn"]
    cfg = project(tmp_path, files={"register.csv": register([a]), "visits.csv": csv_text(VISITS_HEADER, visits),
                                   "notes.csv": csv_text(NOTES_HEADER, notes)})
    files = by_file(run(cfg))
    assert rows(cfg, "SELECT contact_id, service, status, mode FROM contacts ORDER BY 1") == [
        (f"V{i}", "community_nursing", status, "home_visit")
        for i, status in enumerate(["attended", "attended", "attended", "did_not_attend", "did_not_attend"], 1)]
    assert rows(cfg, "SELECT tag FROM tags ORDER BY 1") == [("low_mood",), ("support_network",)]
    assert rows(cfg, "SELECT line, reason, detail FROM quarantine ORDER BY line") == [
        (7, "unknown_code", "service: 'XRAY'"), (8, "missing_field", "service: (blank)")]
    assert files["visits.csv"].unmapped == {"service": {"XRAY\u00a0": 1}}  # only what is really unmapped


def test_two_codes_that_differ_only_by_case_and_mean_different_things_are_a_config_error(tmp_path):
    from wobble.core.errors import ConfigError

    cfg = project(tmp_path, files={})
    text = cfg.read_text()
    same = text.replace('Seen = "attended"', 'Seen = "attended"\n"SEEN " = "attended"')
    load_config(cfg).sources["visits"]  # (the kit's own config is fine)
    cfg.write_text(same)
    assert load_config(cfg).sources["visits"].values["status"]["SEEN "] == "attended"  # same meaning: fine
    cfg.write_text(text.replace('Seen = "attended"', 'Seen = "attended"\nseen = "did_not_attend"'))
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert one_line(str(err.value)) and str(err.value).startswith("sources.visits.values.status: 'Seen' and 'seen'")


# ---------------------------------------------------------------------------------------------
# Parquet column names with spaces around them
# ---------------------------------------------------------------------------------------------


def test_parquet_column_names_are_matched_without_surrounding_spaces(tmp_path):
    import polars as pl

    a = PEOPLE[0]
    frame = {"Id ": ["P1", "P2"], " NHS": [a, a], "When\u00a0": ["2025-03-01 10:00"] * 2, "Service": ["DN", "XRAY"]}
    cfg = project(tmp_path, files={"register.csv": register([a])})
    cfg.write_text(cfg.read_text() + ACUTE + '[sources.acute.values.service]\nDN = "community_nursing"\n')
    pl.DataFrame(frame).write_parquet(tmp_path / "acute.parquet")
    f = by_file(run(cfg))["acute.parquet"]
    assert (f.status, f.rows_loaded, f.error) == ("loaded", 1, None)
    # the quarantined row names the columns as the config does
    assert rows(cfg, "SELECT raw FROM quarantine") == [("Id=P2; NHS=**********; When=2025-03-01 10:00; Service=XRAY",)]
    pl.DataFrame({**frame, "NHS": [a, a]}).write_parquet(tmp_path / "acute.parquet")
    f = by_file(run(cfg))["acute.parquet"]
    assert (f.status, f.error) == ("failed", "the file names a column twice (NHS)")


# ---------------------------------------------------------------------------------------------
# Quarantined rows carry the file's own line numbers
# ---------------------------------------------------------------------------------------------


def _reference_lines(text: str, reasons) -> list[tuple[int, str]]:
    """The slow, obvious version: Python's csv module, which counts the lines it has read.
    `reasons(row, later)` says why a row is quarantined; `later` is whether a later row has its id."""
    rows_at = []
    reader = csv.reader(io.StringIO(text, newline=""))
    next(reader)
    start = reader.line_num + 1
    for row in reader:
        if row:  # a blank line is no row
            rows_at.append((start, row))
        start = reader.line_num + 1
    last = {row[0]: line for line, row in rows_at if len(row) == 9}
    out = [(line, reasons(row, len(row) == 9 and last[row[0]] > line)) for line, row in rows_at]
    return [(line, reason) for line, reason in out if reason]


def test_quarantine_lines_are_the_files_lines_when_fields_hold_line_breaks(tmp_path):
    a, b = PEOPLE[:2]
    notes = ['"a\nb"', "x", '"he said ""no""\r\n\r\nthen left"', "", '"\n"']
    visits = []
    for i in range(60):
        service = "XRAY" if i % 7 == 3 else "DN"
        nhs = broken(a) if i % 11 == 5 else a
        visits.append(f"{visit(f'V{i}', nhs, service=service)},{notes[i % len(notes)]}")
        if i % 13 == 4:
            visits.append("too,few")
        if i % 17 == 8:
            visits.append("")  # a blank line
        if i % 19 == 9:
            visits.append(f"{visit(f'V{i}', a)},again")  # the same record again: the earlier line is a duplicate
    text = csv_text(VISITS_HEADER + ",Note", visits)
    reg = csv_text(REGISTER_HEADER + ",Note", [f"{a},F,1950,T01,N,\"lives\nalone\"", f"{broken(b)},F,1950,T01,N,x",
                                               f"{b},F,1850,T01,N,\"two\n\nblank\"", f"{b},F,1950,T01,N,y"])
    cfg = project(tmp_path, files={"register.csv": reg, "visits.csv": text})
    files = by_file(run(cfg))
    assert files["register.csv"].status == files["visits.csv"].status == "loaded", files

    def why(row, later):
        if len(row) != 9:
            return "malformed_line"
        if row[1] != a:
            return "invalid_nhs_number"
        if row[4] != "DN":
            return "unknown_code"
        return "duplicate" if later else None

    got = rows(cfg, "SELECT line, reason FROM quarantine WHERE file = 'visits.csv' ORDER BY line")
    assert got == _reference_lines(text, why) and len(got) > 15
    assert rows(cfg, "SELECT line, reason FROM quarantine WHERE file = 'register.csv' ORDER BY line") == [
        (4, "invalid_nhs_number"), (5, "impossible_date")]
