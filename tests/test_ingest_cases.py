"""Ingest, one case at a time: every quarantine reason, every bad file, corrections, duplicates,
opt-outs and lookups, on files whose every row the test wrote."""

from __future__ import annotations

import pytest
from conftest import TEST_KEY, run_wobble
from ingest_kit import (
    NOTES_HEADER,
    VISITS_HEADER,
    broken,
    by_file,
    csv_text,
    numbers,
    project,
    register,
    rows,
    run,
    stranger,
    visit,
)

PEOPLE = numbers(6)


# ---------------------------------------------------------------------------------------------
# Every reason, each on the line the test put it
# ---------------------------------------------------------------------------------------------


def test_each_reason_is_given_to_the_row_that_earns_it(tmp_path):
    a, b, c = PEOPLE[:3]
    visits = [
        visit("V1", a),                                        # line 2: loaded
        visit("V2", a, service=""),                            # 3: missing_field (service)
        visit("V3", "", ),                                     # 4: missing_field (no NHS number)
        visit("V4", broken(a)),                                # 5: invalid_nhs_number (check digit)
        visit("V5", "12345"),                                  # 6: invalid_nhs_number (too short)
        visit("V6", a, when="2025-02-30 10:00"),               # 7: impossible_date (no such day)
        visit("V7", a, when="1850-01-01 10:00"),               # 8: impossible_date (before 1900)
        visit("V8", a, when="2099-01-01 10:00"),               # 9: impossible_date (future)
        visit("V9", a, when="2025-03-05 10:00", entered="2025-03-01 10:00"),  # 10: recorded before it happened
        visit("V10", a, service="XRAY"),                       # 11: unknown_code (service)
        visit("V11", a, outcome="Maybe"),                      # 12: unknown_code (status)
        visit("V12", stranger()),                              # 13: person_not_found
        visit("V13", c),                                       # 14: opted_out
        "V14,only,three",                                      # 15: malformed_line
        visit("V15", f"{a[:3]} {a[3:6]} {a[6:]}", how="Boat"),  # 16: loaded (spaced number; unknown mode kept empty)
        visit("V16", b, when="2025-03-02 09:00", entered=""),  # 17: loaded, recorded_at from occurred_at
    ]
    cfg = project(tmp_path, files={
        "register.csv": register([a, b, c], opted_out=(c,)),
        "visits.csv": csv_text(VISITS_HEADER, visits),
    })
    result = run(cfg)
    f = by_file(result)["visits.csv"]
    assert f.status == "loaded", f.error
    assert (f.rows_in, f.rows_loaded, f.rows_quarantined, f.rows_duplicate) == (16, 3, 13, 0)
    got = rows(cfg, "SELECT line, reason FROM quarantine WHERE file = 'visits.csv' ORDER BY line")
    assert got == [
        (3, "missing_field"), (4, "missing_field"), (5, "invalid_nhs_number"), (6, "invalid_nhs_number"),
        (7, "impossible_date"), (8, "impossible_date"), (9, "impossible_date"), (10, "impossible_date"),
        (11, "unknown_code"), (12, "unknown_code"), (13, "person_not_found"), (14, "opted_out"),
        (15, "malformed_line"),
    ]
    assert f.unmapped == {"service": {"XRAY": 1}, "status": {"Maybe": 1}, "mode": {"Boat": 1}}
    assert f.defaulted == {"recorded_at (occurred_at used)": 1}
    loaded = rows(cfg, "SELECT contact_id, mode, recorded_at = occurred_at FROM contacts ORDER BY 1")
    assert loaded == [("V1", "home_visit", False), ("V15", None, False), ("V16", "home_visit", True)]
    # the quarantined row keeps its columns, with the NHS number and staff code masked
    raw = rows(cfg, "SELECT raw FROM quarantine WHERE line = 11")[0][0]
    assert "Service=XRAY" in raw and "NHS=**********" in raw and "Staff=(masked)" in raw and a not in raw
    assert rows(cfg, "SELECT raw FROM quarantine WHERE reason = 'opted_out'") == [(None,)]
    # every other quarantined row keeps its masked copy, those found out by who they are about too
    kept = rows(cfg, "SELECT reason, raw FROM quarantine WHERE reason NOT IN ('opted_out', 'malformed_line')")
    assert len(kept) == 11 and all(raw and "NHS=" in raw for _, raw in kept)
    assert "When=2025-02-30 10:00" in rows(cfg, "SELECT raw FROM quarantine WHERE line = 7")[0][0]
    malformed = rows(cfg, "SELECT detail, raw FROM quarantine WHERE reason = 'malformed_line'")[0]
    assert "missing columns" in malformed[0] and malformed[1] == "V14,only,three"


def test_blanks_and_padding(tmp_path):
    """Values padded with spaces are read as their trimmed selves; blank ones are missing."""
    a = PEOPLE[0]
    visits = [
        visit("P1", f" {a} ", when=" 2025-03-01 10:00", entered="2025-03-01 11:00 ", service=" DN ",
              outcome="DNA ", how="\tHome"),                    # line 2: loaded, as if unpadded
        visit("P2", a, service="   "),                          # 3: missing_field (blank service)
        visit("P3", "   "),                                     # 4: missing_field (blank NHS number)
        visit("P4", a, when="  "),                              # 5: missing_field (blank date)
        '"P5","","2025-03-01 10:00","","DN","Seen","Home","S1"',  # 6: missing_field (quoted empty NHS)
    ]
    cfg = project(tmp_path, files={"register.csv": register([a]), "visits.csv": csv_text(VISITS_HEADER, visits)})
    f = by_file(run(cfg))["visits.csv"]
    assert f.unmapped == {}
    assert rows(cfg, "SELECT line, reason FROM quarantine ORDER BY line") == [
        (3, "missing_field"), (4, "missing_field"), (5, "missing_field"), (6, "missing_field")]
    assert rows(cfg, "SELECT service, status, mode, occurred_at::VARCHAR FROM contacts") == [
        ("community_nursing", "did_not_attend", "home_visit", "2025-03-01 10:00:00")]


def test_tags_get_their_reasons_and_polarity(tmp_path):
    a = PEOPLE[0]
    notes = ["N1,{a},2025-03-01 10:00,LM", "N2,{a},2025-03-01 10:00,ZZ", "N3,{a},,SN", "N4,{a},2025-03-01 10:00,SN"]
    cfg = project(tmp_path, files={
        "register.csv": register([a]),
        "notes.csv": csv_text(NOTES_HEADER, [n.format(a=a) for n in notes]),
    })
    f = by_file(run(cfg))["notes.csv"]
    assert (f.rows_in, f.rows_loaded, f.reasons) == (4, 2, {"unknown_code": 1, "missing_field": 1})
    assert rows(cfg, "SELECT tag_id, tag, polarity FROM tags ORDER BY 1") == [
        ("N1", "low_mood", "concern"), ("N4", "support_network", "strength")]


def test_register_rows_get_their_reasons(tmp_path):
    a, b, c, d = PEOPLE[:4]
    reg = "\n".join(["NHS,Sex,Born,Team,OptOut", f"{a},F,1950,T01,N", f"{broken(b)},F,1950,T01,N",
                     f"{c},X,1950,T01,N", f"{d},F,1850,T01,N", f"{d},,1950,T01,N", f"{a},M,1951,T01,N",
                     f"{b},F,1950,T01,U"]) + "\n"
    cfg = project(tmp_path, files={"register.csv": reg})
    f = by_file(run(cfg))["register.csv"]
    # sex X and a blank sex are kept as "not known": nobody is dropped for an optional field
    assert (f.rows_in, f.rows_loaded, f.rows_duplicate) == (7, 3, 1)
    assert rows(cfg, "SELECT line, reason, detail FROM quarantine WHERE reason <> 'duplicate' ORDER BY line") == [
        (3, "invalid_nhs_number", None), (5, "impossible_date", "birth_year: '1850'"),
        (8, "unknown_code", "opted_out: 'U'")]  # an unreadable opt-out flag is never read as "no"
    assert rows(cfg, "SELECT sex, birth_year FROM persons ORDER BY sex") == [
        ("male", 1951), ("not_known", 1950), ("not_known", 1950)]  # for a, the last line wins
    assert f.unmapped == {"opted_out": {"U": 1}}  # X is the NHS Data Dictionary's "not known"


# ---------------------------------------------------------------------------------------------
# Nothing doubled: duplicates, overlapping extracts, corrections
# ---------------------------------------------------------------------------------------------


def test_duplicates_corrections_and_older_versions(tmp_path):
    a, b = PEOPLE[:2]
    first = [visit("V1", a), visit("V2", a, outcome="Seen"), visit("V3", b), visit("V3", b, how="Tel")]
    cfg = project(tmp_path, files={
        "register.csv": register([a, b]),
        "visits_1.csv": csv_text(VISITS_HEADER, first),
    })
    f1 = by_file(run(cfg))["visits_1.csv"]
    assert (f1.rows_loaded, f1.rows_duplicate) == (3, 1)  # V3 twice: the later line wins
    assert rows(cfg, "SELECT mode FROM contacts WHERE contact_id = 'V3'") == [("phone",)]
    second = [
        visit("V1", a),                                                         # identical: duplicate
        visit("V2", a, outcome="DNA", entered="2025-03-09 09:00"),             # corrected later: replaces
        visit("V3", b, when="2025-02-01 08:00", entered="2025-02-01 09:00"),  # an older version: duplicate
        visit("V4", b),                                                         # new
    ]
    (tmp_path / "visits_2.csv").write_text(csv_text(VISITS_HEADER, second))
    f2 = by_file(run(cfg))["visits_2.csv"]
    assert (f2.rows_in, f2.rows_loaded, f2.rows_duplicate, f2.rows_replaced) == (4, 2, 2, 1)
    assert rows(cfg, "SELECT contact_id, status, mode FROM contacts ORDER BY 1") == [
        ("V1", "attended", "home_visit"), ("V2", "did_not_attend", "home_visit"),
        ("V3", "attended", "phone"), ("V4", "attended", "home_visit")]
    details = rows(cfg, "SELECT line, detail FROM quarantine WHERE file = 'visits_2.csv' ORDER BY line")
    assert details[0][0] == 2 and details[0][1].startswith("already loaded, unchanged (batch visits-")
    assert details[1][0] == 4 and details[1][1].startswith("an older version of a record already loaded")
    # the same rows in another file (Windows line endings, so not the same bytes): every row a
    # duplicate, nothing changes
    (tmp_path / "visits_3.csv").write_text(csv_text(VISITS_HEADER, second).replace("\n", "\r\n"))
    f3 = by_file(run(cfg))["visits_3.csv"]
    assert (f3.rows_loaded, f3.rows_duplicate, f3.rows_replaced) == (0, 4, 0)
    assert rows(cfg, "SELECT count(*) FROM contacts") == [(4,)]


def test_loading_the_same_file_twice_is_skipped(tmp_path):
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:2]),
                                   "visits.csv": csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0])])})
    first = run(cfg)
    assert [(f.source, f.status) for f in first.failed] == [("notes", "failed")]  # no notes file yet
    assert first.failed[0].error == "no file matches notes*.csv"
    again = run(cfg)
    assert {f.status for f in again.files if f.source != "notes"} == {"skipped"}
    assert rows(cfg, "SELECT count(*) FROM load_ledger") == [(2,)]


# ---------------------------------------------------------------------------------------------
# Opt-outs
# ---------------------------------------------------------------------------------------------


def test_opt_out_list_excludes_people_and_withdraws_what_was_loaded(tmp_path):
    a, b, c = PEOPLE[:3]
    cfg = project(tmp_path, files={
        "register.csv": register([a, b, c]),
        "visits_1.csv": csv_text(VISITS_HEADER, [visit("V1", a), visit("V2", b), visit("V3", c)]),
        "notes.csv": csv_text(NOTES_HEADER, [f"N1,{b},2025-03-01 10:00,LM"]),
    })
    first = run(cfg)
    assert first.opt_out_list == {}
    assert rows(cfg, "SELECT count(*) FROM contacts") == [(3,)]
    # b opts out: the list is read on every run
    (tmp_path / "optouts.csv").write_text(f"nhs_number\n{b}\n{broken(a)}\n{stranger()}\n")
    text = (tmp_path / "wobble.toml").read_text().replace(
        "[sources.register]", '[lookups]\nopt_outs = "optouts.csv"\n\n[sources.register]')
    (tmp_path / "wobble.toml").write_text(text)
    (tmp_path / "visits_2.csv").write_text(csv_text(VISITS_HEADER, [visit("V4", b), visit("V5", a)]))
    second = run(cfg)
    assert second.opt_out_list == {"entries": 3, "people": 2, "invalid": 1, "registered": 1,
                                   "persons_flagged": 1, "rows_withdrawn": 2}
    assert second.opted_out_persons == 1
    assert rows(cfg, "SELECT contact_id FROM contacts ORDER BY 1") == [("V1",), ("V3",), ("V5",)]
    assert rows(cfg, "SELECT count(*) FROM tags") == [(0,)]
    assert rows(cfg, "SELECT reason FROM quarantine WHERE file = 'visits_2.csv'") == [("opted_out",)]
    assert rows(cfg, "SELECT birth_year, opted_out FROM persons WHERE opted_out") == [(None, True)]
    audit = rows(cfg, "SELECT action, detail FROM audit_log")
    assert audit and audit[0][0] == "opt_out_applied" and "removed 2" in audit[0][1]


def test_a_new_register_flagging_an_opt_out_withdraws_activity(tmp_path):
    a, b = PEOPLE[:2]
    cfg = project(tmp_path, files={"register_1.csv": register([a, b]),
                                   "visits.csv": csv_text(VISITS_HEADER, [visit("V1", a), visit("V2", b)])})
    run(cfg)
    (tmp_path / "register_2.csv").write_text(register([a, b], opted_out=(a,)))
    result = run(cfg)
    reg2 = by_file(result)["register_2.csv"]
    assert (reg2.rows_loaded, reg2.rows_duplicate, reg2.rows_replaced, reg2.rows_withdrawn) == (1, 1, 1, 1)
    assert rows(cfg, "SELECT contact_id FROM contacts") == [("V2",)]


# ---------------------------------------------------------------------------------------------
# Lookups and time zones
# ---------------------------------------------------------------------------------------------


def test_postcode_lsoa_imd_and_practice_team_lookups(tmp_path):
    a, b = PEOPLE[:2]
    reg = "\n".join(["NHS,Sex,Born,Post,Practice,OptOut", f"{a},F,1950,zz9 9aa,P1,N", f"{b},M,1960,ZZ99AB,P9,N"]) + "\n"
    cfg = project(tmp_path, lookups='[lookups]\npostcode_lsoa = "pc.csv"\nlsoa_imd = "imd.csv"\n'
                  'practice_team = "pt.csv"', files={
        "register.csv": reg, "pc.csv": "pcd,lsoa\nZZ9 9AA,E01000001\n", "imd.csv": "lsoa,decile\nE01000001,3\n",
        "pt.csv": "practice,team\nP1,T07\n"})
    text = (tmp_path / "wobble.toml").read_text().replace(
        'birth_year = "Born"\nteam_id = "Team"', 'birth_year = "Born"\npostcode = "Post"\npractice_id = "Practice"')
    (tmp_path / "wobble.toml").write_text(text)
    f = by_file(run(cfg))["register.csv"]
    assert (f.rows_loaded, f.reasons) == (2, {})  # P9 is in no team: kept, in the unattached team
    assert rows(cfg, "SELECT imd_decile, team_id, practice_id, team_assigned_by FROM persons ORDER BY 2") == [
        (3, "T07", "P1", None), (None, "unattached", "P9", "unattached")]
    assert "ZZ9" not in str(rows(cfg, "SELECT * FROM persons"))  # postcodes are never kept


def test_times_in_another_zone_are_stored_as_london_wall_clock(tmp_path):
    a = PEOPLE[0]
    cfg = project(tmp_path, visits_extra='timezone = "UTC"', files={
        "register.csv": register([a]),
        "visits.csv": csv_text(VISITS_HEADER, [visit("V1", a, when="2025-07-01 10:00", entered="2025-07-01 11:00")])})
    run(cfg)
    assert str(rows(cfg, "SELECT occurred_at FROM contacts")[0][0]) == "2025-07-01 11:00:00"  # BST = UTC+1


# ---------------------------------------------------------------------------------------------
# Bad files: one line each, the other files still load, a non-zero exit
# ---------------------------------------------------------------------------------------------

GOOD = csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0])])
BAD_FILES = {
    "wrong delimiter": (GOOD.replace(",", ";"), "is the delimiter right?"),
    "missing columns": (GOOD.replace(",Staff", ",Clinician"), "missing column(s) Staff"),
    "not UTF-8 (header)": (GOOD.replace("Id,", "Idé,").encode("latin-1"), "not utf-8 text"),
    "not UTF-8 (a row)": (GOOD.encode() + "V9,x,y,z,Café,Seen,Home,S1\n".encode("latin-1"), "line 3 is not utf-8 text"),
    "truncated": (GOOD + visit("V2", PEOPLE[0])[:20], "looks truncated"),
    "unclosed quote": (GOOD + 'V2,"' + PEOPLE[0] + ",x\n" + GOOD.split("\n")[1] + "\n", "never closed"),
    "empty": (b"", "the file is empty"),
    "a 10 MB field": (GOOD + visit("V2", PEOPLE[0], staff="x" * 10_000_000) + "\n",
                      "longer than the 1,048,576-byte limit (the longest line is 10.0 MB)"),
    "binary named .csv": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40, "binary"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_fails_with_one_clear_line_and_the_rest_load(tmp_path, case):
    content, phrase = BAD_FILES[case]
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:2]), "visits_good.csv": GOOD.replace("V1", "G1"),
                                   "visits_bad.csv": content,
                                   "notes.csv": csv_text(NOTES_HEADER, [f"N1,{PEOPLE[1]},2025-03-01 10:00,LM"])})
    result = run(cfg)
    files = by_file(result)
    bad = files["visits_bad.csv"]
    assert bad.status == "failed"
    assert phrase in bad.error and "\n" not in bad.error and len(bad.error) < 300, bad.error
    assert all(f.status == "loaded" for name, f in files.items() if name != "visits_bad.csv")
    assert rows(cfg, "SELECT count(*) FROM contacts") == [(1,)]
    assert rows(cfg, "SELECT count(*) FROM load_ledger WHERE file = 'visits_bad.csv'") == [(0,)]
    # once fixed, the file loads on the next run
    (tmp_path / "visits_bad.csv").write_text(GOOD)
    assert by_file(run(cfg))["visits_bad.csv"].status == "loaded"


def test_bad_parquet_and_the_command_line_exit(tmp_path):
    import polars as pl

    pl.DataFrame({"Id": ["V1"]}).write_parquet(tmp_path / "full.parquet")
    data = (tmp_path / "full.parquet").read_bytes()
    cfg = project(tmp_path, files={"register.csv": register(PEOPLE[:1]), "visits_1.csv": GOOD,
                                   "visits_2.csv": b"\x00garbage", "acute.parquet": data[: len(data) // 2]})
    text = (tmp_path / "wobble.toml").read_text() + (
        '\n[sources.acute]\nkind = "parquet"\ntable = "contacts"\nsystem = "acute"\npath = "acute.parquet"\n'
        '[sources.acute.columns]\nrecord_id = "Id"\nnhs_number = "NHS"\noccurred_at = "When"\nservice = "Pod"\n')
    (tmp_path / "wobble.toml").write_text(text)
    proc = run_wobble("ingest", "--config", str(cfg), env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "visits_2.csv: the file is binary" in err
    assert "acute.parquet: not a readable Parquet file: truncated or damaged?" in err
    assert "rows in 2 = loaded 2" in err  # the register and the good file loaded
    assert "data-quality report:" in err and "no file matches notes*.csv" in err
