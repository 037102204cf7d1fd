"""An analyst's mistakes that used to pass in silence or late: a lookup that puts one key in two
places, one file read by two sources of a table, a pseudonym key other than the warehouse's, the
weekly path with nothing to publish from, and messages whose [sections] Rich took for markup."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from conftest import TEST_KEY, run_wobble
from ingest_kit import (
    NOTES_HEADER,
    VISITS_HEADER,
    by_file,
    csv_text,
    numbers,
    project,
    register,
    rows,
    run,
    scan_for,
    visit,
)

from wobble.core.calendar import as_of_for
from wobble.core.config import load_config
from wobble.core.errors import ConfigError, WobbleError
from wobble.ingest import ingest

KEY_ENV = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
PEOPLE = numbers(2)
GOOD = csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0])])
NOTES = csv_text(NOTES_HEADER, [f"N1,{PEOPLE[0]},2025-03-01 10:00,LM"])


def _files(**more: str) -> dict[str, str]:
    return {"register.csv": register(PEOPLE[:2]), "visits_a.csv": GOOD, "notes.csv": NOTES, **more}


@pytest.mark.parametrize("lookup, header, clash", [
    ("practice_team", "practice,team", "P1,T01\nP2,T02\nP1,T99\n"),
    ("lsoa_imd", "lsoa,decile", "E01000001,3\nE01000001, 6\n"),
])
def test_a_lookup_giving_one_key_two_values_is_refused_in_one_line(tmp_path, lookup, header, clash):
    cfg = project(tmp_path, lookups=f'[lookups]\n{lookup} = "lk.csv"\n',
                  files=_files(**{"lk.csv": f"{header}\n{clash}"}))
    with pytest.raises(ConfigError) as e:
        run(cfg)
    key = "P1" if lookup == "practice_team" else "E01000001"
    assert f"lookups.{lookup}:" in str(e.value) and f"'{key}' →" in str(e.value) and "\n" not in str(e.value)


def test_a_lookup_repeating_a_line_is_one_mapping(tmp_path):
    """The same key with the same value twice (an extract that repeats a row) is not a clash."""
    reg = "NHS,Sex,Born,Practice,OptOut\n" + f"{PEOPLE[0]},F,1950,P1,N\n"
    cfg = project(tmp_path, lookups='[lookups]\npractice_team = "pt.csv"\n',
                  files={"register.csv": reg, "pt.csv": "practice,team\nP1,T07\n P1 ,T07\n"})
    text = (tmp_path / "wobble.toml").read_text().replace('team_id = "Team"', 'practice_id = "Practice"')
    (tmp_path / "wobble.toml").write_text(text)
    run(cfg)
    assert rows(cfg, "SELECT team_id FROM persons") == [("T07",)]


def test_one_file_read_by_two_sources_of_a_table_is_refused(tmp_path):
    cfg = project(tmp_path, files=_files())
    text = cfg.read_text()
    block = text[text.index("[sources.visits]"):text.index("[sources.notes]")]
    cfg.write_text(text + "\n" + block.replace("[sources.visits", "[sources.visits_again")
                   .replace('system = "community"', 'system = "acute"'))
    with pytest.raises(ConfigError, match=r"sources.visits and sources.visits_again both read visits_a.csv"):
        run(cfg)
    assert not (tmp_path / "wh.duckdb").exists() or rows(cfg, "SELECT count(*) FROM contacts") == [(0,)]


def test_another_pseudonym_key_is_refused_before_anyone_is_added_again(tmp_path):
    cfg = project(tmp_path, files=_files())
    run(cfg)
    before = rows(cfg, "SELECT count(*), min(person_id) FROM persons")
    (tmp_path / "visits_b.csv").write_text(csv_text(VISITS_HEADER, [visit("V9", PEOPLE[1])]))
    with pytest.raises(ConfigError, match="built with another pseudonym key"):
        ingest(load_config(cfg), key=b"another-key-0123456789", report=False)
    assert rows(cfg, "SELECT count(*), min(person_id) FROM persons") == before
    assert by_file(run(cfg))["visits_b.csv"].rows_loaded == 1  # the right key goes on as before


def test_messages_print_bracketed_settings_as_written(tmp_path):
    (tmp_path / "wobble.toml").write_text('[wobble]\nname = "empty"\n')
    proc = run_wobble("ingest", "--config", str(tmp_path / "wobble.toml"), env=KEY_ENV)
    assert proc.returncode != 0
    assert "add a [sources.<name>] block" in proc.stderr  # Rich markup once swallowed "[sources.<name>]"


@pytest.mark.parametrize("args, says", [
    (["--as-of", "2025-03-04"], "is not a Monday"),
    ([], "in the registry; train it first with `wobble train --model early_warning_90d`"),
])
def test_the_weekly_path_refuses_before_it_ingests(tmp_path, args, says):
    cfg = project(tmp_path, files=_files())
    proc = run_wobble("run", "--config", str(cfg), *args, env=KEY_ENV)
    assert proc.returncode == 2 and says in proc.stderr, proc.stderr[-800:]
    assert not (tmp_path / "wh.duckdb").exists()  # nothing was loaded first


def test_an_as_of_date_after_the_data_is_refused(tmp_path):
    """The last record is on Saturday 1 March 2025: Sunday is not in yet, so the data's own as-of
    date (`data_end`, when no date is given) is Monday 24 February. A run may name Monday 3 March,
    since only a weekend lies between (many sources record nothing then), but not 10 March."""
    cfg = project(tmp_path, files=_files())
    run(cfg)
    late = run_wobble("features", "--config", str(cfg), "--as-of", "2025-03-10", env=KEY_ENV)
    assert late.returncode == 2 and "2025-03-10 is after the data: the latest as-of date they allow is 2025-03-03 " \
        "(the records reach 2025-03-01; " in late.stderr, late.stderr[-800:]
    assert run_wobble("features", "--config", str(cfg), "--as-of", "2025-03-03", env=KEY_ENV).returncode == 0
    assert as_of_for(load_config(cfg), None) == date(2025, 2, 24)


@pytest.mark.parametrize("last, latest", [
    ("2025-02-27 10:00", "2025-02-24"),  # a Thursday: Friday is missing too
    ("2025-02-28 10:00", "2025-03-03"), ("2025-03-02 10:00", "2025-03-03"), ("2025-03-03 10:00", "2025-03-03"),
])
def test_a_given_as_of_date_may_follow_the_last_record_by_a_weekend(tmp_path, last, latest):
    visits = csv_text(VISITS_HEADER, [visit("V1", PEOPLE[0], when=last, entered=last)])
    cfg = project(tmp_path, files=_files(**{"visits_a.csv": visits, "notes.csv": csv_text(NOTES_HEADER, [])}))
    run(cfg)
    config = load_config(cfg)
    end = date.fromisoformat(latest)
    assert as_of_for(config, end) == end
    with pytest.raises(WobbleError, match=f"the latest as-of date they allow is {latest} "):
        as_of_for(config, end + timedelta(days=7))


def test_training_on_a_dask_scheduler_nobody_runs_fails_at_once(tmp_path):
    cfg = project(tmp_path, files=_files())
    proc = run_wobble("train", "--config", str(cfg), "--dask", "tcp://127.0.0.1:9", env=KEY_ENV)
    assert proc.returncode == 2 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in proc.stderr
    assert not (tmp_path / "wh.duckdb").exists()  # before any feature was built


def test_an_outcome_summary_of_nothing_says_why(tmp_path):
    """A mistyped team or date, or a warehouse path that names nothing, is not an empty table."""
    cfg = project(tmp_path, files=_files())
    run(cfg)
    proc = run_wobble("outcome", "summary", "--config", str(cfg), "--team", "T1", env=KEY_ENV)
    assert proc.returncode == 2 and "no published list for team T1: lists are published for no team yet" \
        in proc.stderr, proc.stderr[-800:]
    cfg.write_text(cfg.read_text().replace('warehouse = "wh.duckdb"', 'warehouse = "data/wh.duckdb"'))
    proc = run_wobble("outcome", "summary", "--config", str(cfg), env=KEY_ENV)
    assert proc.returncode == 2 and f"no warehouse at {tmp_path / 'data' / 'wh.duckdb'}" in proc.stderr
    assert not (tmp_path / "data").exists()  # and none was made


def test_a_file_with_no_row_loaded_fails_and_loads_once_its_settings_are_fixed(tmp_path):
    """A timestamp format that matches nothing quarantined every row, and the file went into the
    ledger: fixed, it was skipped for good. Now it fails alone, rolled back, and loads after the fix."""
    visits = csv_text(VISITS_HEADER, [visit(f"V{k}", PEOPLE[k % 2]) for k in range(5)])
    cfg = project(tmp_path, visits_extra="", files=_files(**{"visits_b.csv": visits}))
    good = cfg.read_text()
    cfg.write_text(good.replace('timestamp_format = "%Y-%m-%d %H:%M"', 'timestamp_format = "%d/%m/%Y %H:%M"'))
    files = by_file(run(cfg))
    f = files["visits_b.csv"]
    assert f.status == "failed" and f.error.startswith("every row was quarantined: 5 impossible_date (e.g. ")
    assert "read again at the next run" in f.error and files["register.csv"].status == "loaded"
    assert rows(cfg, "SELECT count(*) FROM quarantine WHERE file = 'visits_b.csv'") == [(0,)]  # rolled back
    cfg.write_text(good)
    assert by_file(run(cfg))["visits_b.csv"].rows_loaded == 5


@pytest.mark.parametrize("field, column", [("mode", "how"), ("service", "service")])
def test_a_wrong_column_mapped_to_a_coded_field_keeps_none_of_its_values(tmp_path, field, column):
    """A column of names mapped to a coded field: more different unmapped values than a code list
    holds. None is kept (unmapped codes, quarantined rows) or shown (the report), only how many
    there were. The rows load as they would with any unknown code: `mode` left empty, a row
    without a known `service` quarantined."""
    names = [f"Ann Example{chr(65 + k % 26)}{chr(65 + k // 26 % 26)}{chr(65 + k // 676)}" for k in range(1_200)]
    visits = [visit(f"V{k}", PEOPLE[k % 2], **{column: name}) for k, name in enumerate(names)]
    visits += [visit(f"W{k}", PEOPLE[k % 2]) for k in range(300)]
    cfg = project(tmp_path, files=_files(**{"visits_a.csv": csv_text(VISITS_HEADER, visits)}))
    result = ingest(load_config(cfg), key=TEST_KEY.encode())
    f = by_file(result)["visits_a.csv"]
    assert f.unmapped == {field: {"(1,200 different values, not shown)": 1_200}}
    if field == "service":
        assert (f.rows_loaded, f.rows_quarantined) == (300, 1_200)
        assert rows(cfg, "SELECT DISTINCT detail FROM quarantine WHERE file = 'visits_a.csv'") == [
            ("service: (not shown)",)]
    else:
        assert (f.rows_loaded, f.rows_quarantined) == (1_500, 0)
    report = next((tmp_path / "out" / "reports").glob("data-quality-*.md")).read_text()
    assert f"visits_a.csv: {field} has 1,200 different values no mapping knows" in report
    found = scan_for([p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("visits")],
                     set(), also=("Ann Example",))
    assert not any(found.values()), found


@pytest.mark.parametrize("weekend_record, end", [(False, date(2025, 3, 3)), (True, date(2025, 2, 24))])
def test_sources_that_record_on_weekdays_only_reach_the_weekend_by_friday(tmp_path, weekend_record, end):
    """Four weeks of weekday records, the last on Friday 28 February 2025: nothing is awaited from
    the weekend, so the data's own as-of date is Monday 3 March. One Saturday record among them (one
    in 21) says weekends do hold records, and the weekend not yet in is awaited: 24 February."""
    days = [d for k in range(26) if (d := date(2025, 2, 3) + timedelta(days=k)).weekday() < 5]
    days += [date(2025, 2, 15)] if weekend_record else []
    visits = [visit(f"V{k}", PEOPLE[k % 2], when=f"{d} 10:00", entered=f"{d} 11:00") for k, d in enumerate(days)]
    cfg = project(tmp_path, files=_files(**{"visits_a.csv": csv_text(VISITS_HEADER, visits),
                                            "notes.csv": csv_text(NOTES_HEADER, [])}))
    run(cfg)
    assert max(days) == date(2025, 2, 28)
    assert as_of_for(load_config(cfg), None) == end


def test_a_register_with_names_in_a_coded_field_keeps_none_of_them(tmp_path):
    """A small register (150 people) whose Sex column holds names: under 1,000 values, but each on
    one row only, as names are. None is kept; the people are loaded (an unknown sex is not_known)."""
    people = numbers(150, seed=5)
    names = [f"Ann Example{chr(65 + k % 26)}{chr(65 + k // 26)}" for k in range(150)]
    rows_ = [f"{n},{name},1950,T01,N" for n, name in zip(people, names, strict=True)]
    reg = "\n".join(["NHS,Sex,Born,Team,OptOut", *rows_]) + "\n"
    cfg = project(tmp_path, files={"register.csv": reg})
    result = ingest(load_config(cfg), key=TEST_KEY.encode())
    f = by_file(result)["register.csv"]
    assert f.rows_loaded == 150 and f.unmapped == {"sex": {"(150 different values, not shown)": 150}}
    found = scan_for([p for p in tmp_path.rglob("*") if p.is_file() and p.name != "register.csv"], set(),
                     also=("Ann Example",))
    assert not any(found.values()), found


def test_names_repeated_on_each_contact_of_a_small_site_are_not_kept(tmp_path):
    """A contacts file whose How column holds the person's name on each of their contacts: 40
    people, 5 contacts each, so 40 values of 5 rows each, under both counts above. But each is seen
    with one person only, as no code of a code list is: none is kept or shown. The test fails if
    the rule is dropped (the names are then listed among the unmapped codes)."""
    people = numbers(40, seed=9)
    names = {n: f"Ann Example{chr(65 + k % 26)}{chr(65 + k // 26)}" for k, n in enumerate(people)}
    visits = [visit(f"V{k}_{j}", n, how=names[n]) for k, n in enumerate(people) for j in range(5)]
    cfg = project(tmp_path, files={"register.csv": register(people), "notes.csv": NOTES,
                                   "visits_a.csv": csv_text(VISITS_HEADER, visits)})
    f = by_file(ingest(load_config(cfg), key=TEST_KEY.encode()))["visits_a.csv"]
    assert f.rows_loaded == 200 and f.unmapped == {"mode": {"(40 different values, not shown)": 200}}
    report = next((tmp_path / "out" / "reports").glob("data-quality-*.md")).read_text()
    assert "with most on several rows of one person only" in report
    found = scan_for([p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("visits")],
                     set(), also=("Ann Example",))
    assert not any(found.values()), found


@pytest.mark.parametrize("shared", [True, False])
def test_rare_or_shared_codes_are_listed(tmp_path, shared):
    """25 unmapped codes, each on one row of each of two people (a code list), or each on one row
    only (rare codes, as at a small site): listed, so the analyst can map them."""
    visits = [visit(f"V{k}_{j}", PEOPLE[j], how=f"M{k:02d}") for k in range(25) for j in range(2 if shared else 1)]
    cfg = project(tmp_path, files=_files(**{"visits_a.csv": csv_text(VISITS_HEADER, visits)}))
    f = by_file(run(cfg))["visits_a.csv"]
    assert f.unmapped["mode"] == {f"M{k:02d}": 2 if shared else 1 for k in range(25)}


def test_unmapped_codes_on_several_rows_each_are_still_listed(tmp_path):
    """150 different codes, each on two rows: a code list the mapping does not know yet, listed so
    the analyst can map it."""
    visits = [visit(f"V{k}", PEOPLE[k % 2], how=f"M{k // 2:03d}") for k in range(300)]
    cfg = project(tmp_path, files=_files(**{"visits_a.csv": csv_text(VISITS_HEADER, visits)}))
    f = by_file(run(cfg))["visits_a.csv"]
    assert f.unmapped["mode"] == {f"M{k:03d}": 2 for k in range(150)}
