"""Huddle outcomes: checked notes, decisions only for listed people, summaries, and the CLI."""

from __future__ import annotations

import json
from datetime import date, datetime

import pytest
from conftest import ROOT, run_wobble

from wobble.core.config import load_config
from wobble.core.vocab import OUTCOMES
from wobble.core.warehouse import connect
from wobble.lists.outcomes import (
    OutcomeRefused,
    check_outcome,
    identifier_in,
    last_outcomes,
    summarise,
    summary_sentence,
)
from wobble.lists.service import pull_outcomes, push_lists
from wobble.review.records import current_list, record_outcome
from wobble.review.tokens import db_of

D1, D2 = date(2026, 11, 16), date(2026, 11, 23)


@pytest.mark.parametrize("text, found", [
    ("NHS no 943 476 5919", "an NHS number"),          # valid check digit, spaced 3-3-4
    ("9434765919", "an NHS number"),
    ("ref 943-476-5918", "an NHS number"),             # invalid check digit, but laid out like one
    ("ring 0161 496 0000 after 5", "a phone number"),
    ("mobile +44 7700 900123", "a phone number"),
    ("(0161) 496-0000", "a phone number"),
    ("07700900123", "a phone number"),
    ("943/476/5919", "an NHS number"),                 # any separator between the groups
    ("943_476_5919", "an NHS number"),
    ("943,476,5919", "an NHS number"),
    ("9 4 3 4 7 6 5 9 1 9", "an NHS number"),
    ("943 / 476 / 5919", "an NHS number"),             # laid out 3-3-4, however split
    ("0161\u00a0496\u00a00000", "a phone number"),     # a no-break space is a separator too
    ("seen on 12/03/2026 and 15.03.2026 - 3 visits", None),
    ("owes £1,250 in rent arrears; 2 falls in 30 days", None),
    ("home visit at 10:30, room 12", None),
    ("", None),
])
def test_identifier_in(text, found):
    assert identifier_in(text) == found


def test_check_outcome_refuses_what_it_must():
    assert check_outcome("referred_on", "  to falls clinic ", " Nurse B ") == ("referred_on", "to falls clinic",
                                                                              "Nurse B")
    assert check_outcome("deferred", "   ", "GP")[1] is None
    assert check_outcome("deferred", "line one\r\nline two", "GP")[1] == "line one line two"
    for args, words in [(("escalated", None, "GP"), "unknown outcome"),
                        (("deferred", None, "  "), "who is recording"),
                        (("deferred", "x" * 301, "GP"), "301 characters"),
                        (("deferred", "call 07700 900123", "GP"), "phone number"),
                        (("deferred", None, "GP 943 476 5919"), "name looks like it holds an NHS number"),
                        (("deferred", "ok\x00", "GP"), "control character"),
                        (("deferred", "fine", "GP\u202e"), "control character")]:
        with pytest.raises(OutcomeRefused, match=words):
            check_outcome(*args)


@pytest.fixture
def small_warehouse(tmp_path):
    """Two teams; A listed p1-p3 on 16 Nov and p1, p2, p4 on 23 Nov (twice: model versions 1 then 2)."""
    path = tmp_path / "w.duckdb"
    rows = [("A", D1, p, r, "1", datetime(2026, 11, 16, 6)) for r, p in enumerate(["p1", "p2", "p3"], 1)]
    rows += [("A", D2, p, r, "1", datetime(2026, 11, 23, 6)) for r, p in enumerate(["p1", "p2", "p3"], 1)]
    rows += [("A", D2, p, r, "2", datetime(2026, 11, 23, 7)) for r, p in enumerate(["p1", "p2", "p4"], 1)]
    rows += [("B", D2, p, r, "2", datetime(2026, 11, 23, 7)) for r, p in enumerate(["q1", "q2"], 1)]
    with connect(path) as con:
        con.executemany(
            "INSERT INTO huddle_lists (team_id, as_of, person_id, rank, risk, model_name, model_version, demo, "
            "published_at) VALUES (?, ?, ?, ?, 0.5, 'm', ?, false, ?)", rows)
    (tmp_path / "wobble.toml").write_text('[paths]\nwarehouse = "w.duckdb"\noutputs = "out"\n')
    lists: dict[tuple, list] = {}
    for team, as_of, pid, _, version, published in rows:  # the same lists, pushed as publish does
        lists.setdefault((team, as_of, version, published), []).append({"person_id": pid, "section": "capacity"})
    push_lists(load_config(tmp_path / "wobble.toml"), [
        ({"team_id": t, "as_of": d, "model_name": "m", "model_version": v, "published_at": p}, {}, views)
        for (t, d, v, p), views in lists.items()])
    return path


def _db(path):
    return db_of(load_config(path.parent / "wobble.toml"))


def _record(path, team, pid, outcome, as_of=None, note=None):
    return record_outcome(_db(path), team_id=team, person_id=pid, outcome=outcome, note=note, recorded_by="Nurse B",
                          actor="test", as_of=as_of)


def test_the_current_list_is_the_latest_as_of_and_version(small_warehouse):
    db = _db(small_warehouse)
    ref = current_list(db, "A")
    assert (ref.as_of, ref.list_id) == (D2, "A|2026-11-23|m|2")
    assert current_list(db, "A", D1).as_of == D1
    assert current_list(db, "C") is None


def test_decisions_only_for_people_on_the_teams_list(small_warehouse):
    with pytest.raises(OutcomeRefused, match="not on team A's list"):
        _record(small_warehouse, "A", "q1", "deferred")       # team B's person
    with pytest.raises(OutcomeRefused, match="not on team A's list"):
        _record(small_warehouse, "A", "p3", "deferred")       # dropped from version 2 of the 23 Nov list
    with pytest.raises(OutcomeRefused, match="no published list"):
        _record(small_warehouse, "C", "p1", "deferred")
    with connect(small_warehouse) as con:
        assert pull_outcomes(load_config(small_warehouse.parent / "wobble.toml"), con) == 0
        assert con.execute("SELECT count(*) FROM huddle_outcomes").fetchall() == [(0,)]


def test_summaries_count_the_latest_decision_per_person(small_warehouse):
    _record(small_warehouse, "A", "p1", "referred_on", D1)
    _record(small_warehouse, "A", "p2", "deferred", D1)
    _record(small_warehouse, "A", "p1", "outreach_agreed")          # 23 Nov
    _record(small_warehouse, "A", "p2", "deferred")
    _record(small_warehouse, "A", "p2", "not_a_concern", note="known to district nurses")  # latest for p2 wins
    _record(small_warehouse, "B", "q1", "data_problem")
    cfg = load_config(small_warehouse.parent / "wobble.toml")
    with connect(small_warehouse) as con:
        assert pull_outcomes(cfg, con) == 6
        assert pull_outcomes(cfg, con) == 0  # the next run brings back nothing twice
        rows = {(s["team_id"], s["as_of"]): s for s in summarise(con)}
        earlier = last_outcomes(con, D2)
    with _db(small_warehouse).read() as conn:
        audit = conn.exec_driver_sql("SELECT count(*) FROM service_audit WHERE action = 'record_outcome' "
                                     "AND result = 'recorded'").all()
    # by hand: A 16 Nov: 3 listed, p1 referred on, p2 deferred → 1 discussed
    assert rows[("A", "2026-11-16")] == {
        "team_id": "A", "as_of": "2026-11-16", "listed": 3, "recorded": 2, "discussed": 1,
        "share_discussed": 0.333, "by_kind": {"referred_on": 1, "deferred": 1}}
    # A 23 Nov counts version 2 (p1, p2, p4): p1 outreach, p2 not a concern → 2 of 3
    a2 = rows[("A", "2026-11-23")]
    assert (a2["listed"], a2["discussed"], a2["by_kind"]) == (3, 2, {"outreach_agreed": 1, "not_a_concern": 1})
    assert summary_sentence(a2) == "2 of 3 people discussed; outreach agreed 1, not a concern 1"
    assert rows[("B", "2026-11-23")]["discussed"] == 1
    # what the 23 Nov list shows as "last huddle outcome": decisions on earlier lists only
    assert set(earlier) == {("A", "p1"), ("A", "p2")}
    assert earlier[("A", "p1")]["label"] == "referred on" and earlier[("A", "p1")]["list_date"] == "2026-11-16"
    assert audit == [(6,)]


def test_cli_records_refuses_and_summarises(small_warehouse):
    config = str(small_warehouse.parent / "wobble.toml")
    ok = run_wobble("outcome", "record", "--config", config, "--team", "A", "--person", "p4",
                    "--outcome", "outreach_agreed", "--by", "Dr C (GP)", "--note", "<b>call</b> this week", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["as_of"] == "2026-11-23"
    for args, words in [(["--person", "p4", "--outcome", "deferred", "--note", "her number is 07700 900123"],
                         "phone number"),
                        (["--person", "q1", "--outcome", "deferred"], "not on team A's list"),
                        (["--person", "p4", "--outcome", "sectioned"], "unknown outcome")]:
        proc = run_wobble("outcome", "record", "--config", config, "--team", "A", "--by", "GP", *args)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
    summary = run_wobble("outcome", "summary", "--config", config, "--team", "A", "--json")
    assert summary.returncode == 0, summary.stderr
    latest = json.loads(summary.stdout)[-1]
    assert (latest["as_of"], latest["discussed"], latest["by_kind"]) == ("2026-11-23", 1, {"outreach_agreed": 1})
    with connect(small_warehouse) as con:  # the summary brought the decision back to the warehouse
        assert con.execute("SELECT note, recorded_by FROM huddle_outcomes").fetchall() == [
            ("<b>call</b> this week", "Dr C (GP)")]
    with _db(small_warehouse).read() as conn:
        rows = conn.exec_driver_sql("SELECT actor, result, detail, source FROM service_audit "
                                    "WHERE action = 'record_outcome' ORDER BY seq").all()
    assert [r[1] for r in rows] == ["recorded", "refused", "refused", "refused"]  # refusals are audited too
    assert all(r[0].endswith("(command line)") and r[3] == "command line" for r in rows)
    assert [r[2] for r in rows[1:]] == ["identifier in note", "not on the list", "unknown outcome"]
    assert "07700" not in str(rows) and "<b>" not in str(rows)


def test_readme_lists_the_outcomes_and_shows_the_pages():
    readme = (ROOT / "README.md").read_text()
    assert all(o in readme for o in OUTCOMES)
    for img in ("docs/img/list.png", "docs/img/person.png"):
        assert f"]({img})" in readme and (ROOT / img).stat().st_size > 10_000
