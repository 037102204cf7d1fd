"""Nobody dropped for an administrative gap, and ingest as a pure function of its files and a clock:
people without a practice (or whose practice is in no team) kept and placed by a configured rule,
sex not known kept, an unknown ethnicity Not stated; per-field date formats; quarantine rows that
name the field and value that failed, grouped so in the data-quality report; a fixed clock."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest
from conftest import TEST_KEY, run_wobble
from ingest_kit import NOTES_HEADER, VISITS_HEADER, csv_text, numbers, project, register, visit

from wobble.core.config import load_config
from wobble.core.errors import ConfigError
from wobble.core.vocab import reason_label
from wobble.ingest import ingest

KEY = TEST_KEY.encode()
PEOPLE = numbers(8, seed=5)


def _run(cfg_path, **kw):
    return ingest(load_config(cfg_path), key=KEY, **{"report": False, **kw})


def _rows(cfg_path, sql):
    with duckdb.connect(str(load_config(cfg_path).warehouse), read_only=True) as con:
        return con.sql(sql).fetchall()


GAPS_REGISTER = {
    # NHS number index: (sex, practice, LSOA, ethnicity)
    0: ("F", "P1", "E01000001", "A"),      # practice in a team
    1: ("M", "", "E01000002", "A"),        # no practice: the team of where they live
    2: ("F", "P9", "E01000002", "A"),      # practice in no team: the team of where they live
    3: ("M", "", "E01999999", "A"),        # no practice, LSOA in no team: the unattached team
    4: ("U", "P1", "E01000001", "A"),      # sex not known
    5: ("9", "P1", "E01000001", "A"),      # sex indeterminate (NHS Data Dictionary)
    6: ("", "P1", "E01000001", "??"),      # no sex at all, an unknown ethnicity
}


def _gaps_project(tmp_path):
    reg = "NHS,Sex,Born,Practice,Lsoa,Eth,OptOut\n" + "".join(
        f"{PEOPLE[i]},{sex},1950,{prac},{lsoa},{eth},N\n" for i, (sex, prac, lsoa, eth) in GAPS_REGISTER.items())
    cfg = project(tmp_path, lookups='[lookups]\npractice_team = "pt.csv"\nlsoa_team = "lt.csv"\n\n'
                  '[teams]\nunattached = "NFA"\nunattached_owner = "the inclusion health team"', files={
                      "register.csv": reg, "pt.csv": "practice,team\nP1,T01\n",
                      "lt.csv": "lsoa,team\nE01000001,T01\nE01000002,T02\n"})
    text = (tmp_path / "wobble.toml").read_text().replace(
        'birth_year = "Born"\nteam_id = "Team"',
        'birth_year = "Born"\npractice_id = "Practice"\nlsoa = "Lsoa"\nethnicity_group = "Eth"').replace(
        '[sources.register.values.opted_out]', '[sources.register.values.ethnicity_group]\nA = "White"\n\n'
        '[sources.register.values.opted_out]')
    (tmp_path / "wobble.toml").write_text(text)
    return cfg


def test_nobody_is_dropped_for_an_administrative_gap(tmp_path):
    cfg = _gaps_project(tmp_path)
    result = _run(cfg, report=True)
    f = result.files[0]
    assert (f.rows_in, f.rows_loaded, f.reasons) == (7, 7, {})
    got = {pid: rest for pid, *rest in _rows(cfg, """SELECT person_id, team_id, team_assigned_by, sex, ethnicity_group
                                                     FROM persons""")}
    from wobble.ingest.identifiers import pseudonymise

    def who(i):
        return got[pseudonymise(KEY, PEOPLE[i])]

    assert who(0) == ["T01", None, "female", "White"]
    assert who(1) == ["T02", "lsoa", "male", "White"]
    assert who(2) == ["T02", "lsoa", "female", "White"]
    assert who(3) == ["NFA", "unattached", "male", "White"]
    assert [who(i)[2] for i in (4, 5, 6)] == ["not_known"] * 3
    assert who(6)[3] == "Not stated"
    assert result.summary()["persons_team_assigned"] == {"lsoa": 2, "unattached": 1}
    report = result.report_md.read_text()
    assert ("Kept although their practice gives no team: 2 placed by where they live (LSOA → team lookup), "
            "1 in the unattached team `NFA` (2 have no GP practice on record); sex not known: 3;") in report


def test_list_rows_say_why_a_person_is_on_a_team_without_a_practice(tmp_path):
    from datetime import date

    from wobble.lists.rows import person_caveats, team_caveats

    cfg = _gaps_project(tmp_path)
    _run(cfg)
    with duckdb.connect(str(load_config(cfg).warehouse)) as con:
        con.execute("""CREATE TEMP TABLE feature_snapshots AS SELECT person_id, DATE '2025-06-02' AS as_of,
                       1000 AS days_registered, 3 AS days_since_contact FROM persons""")
        con.execute("CREATE TEMP TABLE _listed_ids AS SELECT person_id FROM persons")
        notes = person_caveats(con, date(2025, 6, 2))
        teams = team_caveats(con, date(2025, 6, 2), "NFA", "the inclusion health team")
    caveats = sorted(n for ns in notes.values() for n in ns)
    assert caveats == [
        "no GP practice on record: listed with the unattached team; check who should follow them up",
        "no GP practice on record: placed by where they live; check who should follow them up",
        "their GP practice is in no team: placed by where they live; check who should follow them up"]
    assert teams["NFA"] == ["people with no practice or team found (homeless people among them): this list goes "
                            "to the inclusion health team"]


def test_per_field_date_formats(tmp_path):
    a = PEOPLE[0]
    extra = 'formats = { occurred_at = "%d/%m/%Y %H:%M", recorded_at = "%Y-%m-%d" }'
    cfg = project(tmp_path, visits_extra=extra, files={
        "register.csv": register([a]),
        "visits.csv": csv_text(VISITS_HEADER, [
            visit("V1", a, when="01/03/2025 10:00", entered="2025-03-02"),
            visit("V2", a, when="2025-03-01 10:00", entered="2025-03-02"),   # the default format: wrong here
        ]),
    })
    _run(cfg)
    assert _rows(cfg, "SELECT contact_id, occurred_at::VARCHAR, recorded_at::VARCHAR FROM contacts") == [
        ("V1", "2025-03-01 10:00:00", "2025-03-02 00:00:00")]
    assert _rows(cfg, "SELECT line, reason, detail FROM quarantine") == [
        (3, "impossible_date", "occurred_at: '2025-03-01 10:00'")]
    text = (tmp_path / "wobble.toml").read_text().replace("occurred_at = \"%d", "staff = \"%d")
    (tmp_path / "wobble.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"sources.visits.formats.staff: not a mapped column"):
        load_config(cfg)


def test_quarantine_detail_names_the_field_and_value_and_the_report_groups_by_it(tmp_path):
    a = PEOPLE[0]
    cfg = project(tmp_path, files={"register.csv": register([a]), "visits.csv": csv_text(VISITS_HEADER, [
        visit("V1", a, service="XRAY"), visit("V2", a, service="XRAY"), visit("V3", a, outcome="Maybe"),
        visit("V4", a, when="2025-02-30 10:00"), visit("V5", a, service=""), visit("V6", "", service="DN"),
        visit("V7", a, when="2025-03-05 10:00", entered="2025-03-01 10:00"),
        visit("V8", a),  # one good row: a file none of whose rows loads fails whole (test_ingest_mistakes)
    ])})
    result = _run(cfg, report=True)
    assert _rows(cfg, "SELECT line, reason, detail FROM quarantine ORDER BY line") == [
        (2, "unknown_code", "service: 'XRAY'"), (3, "unknown_code", "service: 'XRAY'"),
        (4, "unknown_code", "status: 'Maybe'"), (5, "impossible_date", "occurred_at: '2025-02-30 10:00'"),
        (6, "missing_field", "service: (blank)"), (7, "missing_field", "nhs_number: (blank)"),
        (8, "impossible_date", "recorded_at: '2025-03-01 10:00'")]
    report = result.report_md.read_text()
    # the report names each reason in plain words, from the one vocabulary
    assert f"| visits | {reason_label('unknown_code')} | service: 'XRAY' | 2 |" in report
    assert f"| visits | {reason_label('missing_field')} | nhs_number: (blank) | 1 |" in report
    assert "unknown_code" not in report
    assert a not in report


def test_a_fixed_clock_makes_ingest_a_function_of_its_files(tmp_path):
    a = PEOPLE[0]
    files = {"register.csv": register([a]), "notes.csv": csv_text(NOTES_HEADER, [f"N1,{a},2025-03-01 10:00,LM"]),
             "visits.csv": csv_text(VISITS_HEADER, [visit("V1", a, when="2025-06-01 10:00",
                                                          entered="2025-06-01 11:00")])}
    early, late = project(tmp_path / "a", files=files), project(tmp_path / "b", files=files)
    # in the future then: the file's only row, so the file fails (rolled back, read again next run)
    visits = next(f for f in _run(early, now=datetime(2025, 5, 1)).files if f.file == "visits.csv")
    assert visits.status == "failed" and "1 impossible_date (e.g. occurred_at: '2025-06-01 10:00')" in visits.error
    assert _rows(early, "SELECT count(*) FROM quarantine") == [(0,)]
    assert _run(early, now=datetime(2025, 7, 1)).summary()["rows_loaded"] == 1  # the clock right, it loads
    assert _run(late, now=datetime(2025, 7, 1)).reasons() == {}
    # the same files at the same clock give the same warehouse, ledger times included; and the
    # clock comes from the command line or the config
    again = project(tmp_path / "c", files=files)
    (tmp_path / "c" / "wobble.toml").write_text(
        (tmp_path / "c" / "wobble.toml").read_text() + '\n[ingest]\nnow = "2025-07-01T00:00:00"\n')
    proc = run_wobble("ingest", "--config", str(again), "--now", "2025-07-01T00:00:00",
                      env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert proc.returncode == 0, proc.stderr[-2000:]
    _run(again)  # a second run, from the config's clock: nothing new
    for table in ("persons", "contacts", "tags", "load_ledger"):
        assert _rows(late, f"SELECT * FROM {table} ORDER BY ALL") == _rows(again, f"SELECT * FROM {table} ORDER BY ALL")
    assert _rows(again, "SELECT DISTINCT loaded_at::VARCHAR FROM load_ledger") == [("2025-07-01 00:00:00",)]
    bad = run_wobble("ingest", "--config", str(again), "--now", "next tuesday", env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY})
    assert bad.returncode != 0 and "--now: 'next tuesday' is not a date-time" in bad.stderr
