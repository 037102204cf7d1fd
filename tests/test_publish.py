"""Publish: what each row says, how the page is framed, outcomes on the next list, Prefect artifacts."""

from __future__ import annotations

import csv
import json
from datetime import date, timedelta
from html import unescape
from types import SimpleNamespace

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wobble.core.warehouse import connect
from wobble.lists.publish import publish
from wobble.lists.reasons import (
    MAX_REASONS,
    MIN_REASONS,
    STRENGTH_WORTH_SHOWING,
    STRONG_REASON,
    choose_reasons,
    reason_sentence,
)
from wobble.lists.views import BANDS, band, change_label, risk_phrase, spark_caption, sparkline_svg
from wobble.review.records import record_outcome
from wobble.review.tokens import db_of


def _feature(description, unit):
    return SimpleNamespace(description=description, unit=unit)


@pytest.mark.parametrize("p, pct, text", [
    (0.26, 0.985, "2 to 4 in 10 chance of a crisis in the next 90 days; higher than 98 in 100 people in this team"),
    (0.25, None, "2 to 4 in 10 chance of a crisis in the next 90 days"),
    (0.08, 0.5, "1 in 20 to 1 in 10 chance of a crisis in the next 90 days; higher than 50 in 100 people in this team"),
    (0.95, 0.9999,
     "more than 8 in 10 chance of a crisis in the next 90 days; higher than 99 in 100 people in this team"),
    (1.0, None, "more than 8 in 10 chance of a crisis in the next 90 days"),  # never "100%"
    (0.0, 0.0, "less than 1 in 20 chance of a crisis in the next 90 days; higher than 0 in 100 people in this team"),
])
def test_risk_phrase(p, pct, text):
    assert risk_phrase(p, pct, 90) == text


def test_risk_phrase_names_the_models_outcome():
    assert risk_phrase(0.5, None, 90, "contacts or concerns rising well above their usual") == (
        "4 to 6 in 10 chance of contacts or concerns rising well above their usual in the next 90 days")


@given(st.floats(0, 1), st.floats(0, 1))
def test_bands_cover_every_chance_once_and_change_follows_them(p, q):
    k = band(p)
    assert (0 if k == 0 else BANDS[k - 1][0]) <= p < BANDS[k][0]
    assert change_label(p, q) == ("higher" if band(p) > band(q) else "lower" if band(p) < band(q) else "same")


def test_change_labels():
    assert [change_label(0.3, None), change_label(0.5, 0.3), change_label(0.3, 0.25), change_label(0.1, 0.3)] == [
        "new", "higher", "same", "lower"]


@pytest.mark.parametrize("feature, value, typical, text", [
    (_feature("A&E attendances in the last 90 days", "contacts"), 4, 0,
     "4 A&E attendances in the last 90 days — most people in this team have none"),
    (_feature("A&E attendances in the last 90 days", "contacts"), 1, 0,
     "1 A&E attendance in the last 90 days — most people in this team have none"),
    (_feature("GP appointments in the last year", "contacts"), 12, 7,
     "12 GP appointments in the last year — typical in this team: 7"),
    (_feature("share of booked appointments missed in the last year", "share"), 0.4, 0.05,
     "Share of booked appointments missed in the last year: 40% — typical in this team: 5%"),
    (_feature("recorded as female", ""), 1, 1, "Recorded as female"),
    (_feature("age", "years"), 83, 74, "Age: 83 years"),
    (_feature("age", "years"), 1, 74, "Age: 1 year"),
    (_feature("days since the last crisis contact", "days"), None, 200,
     "Days since the last crisis contact: none on record"),
    (_feature("days since the last missed appointment (blank: none in the last year)", "days"), 19, 167,
     "19 days since the last missed appointment — typical in this team: 167"),
    (_feature("continuity with one GP over the last year (Usual Provider of Care: the share of GP appointments with "
              "the GP seen most; 1 = always the same GP; blank with fewer than two)", "index"), 0.8, 0.7,
     "Continuity with one GP over the last year (Usual Provider of Care: the share of GP appointments with the GP "
     "seen most; 1 = always the same GP): 0.8 — typical in this team: 0.7"),
    (_feature("weeks since the person's contacts began running above their own usual rate (blank unless the last 4 "
              "weeks ran at least double the usual rate)", "weeks"), 3, 0,
     "3 weeks since the person's contacts began running above their own usual rate — most people in this team "
     "have none"),
    (_feature("contacts beyond the person's usual number (negative: fewer than usual)", "contacts"), -52, 0,
     "-52 contacts beyond the person's usual number (negative: fewer than usual) — typical in this team: 0"),
])
def test_reason_sentences(feature, value, typical, text):
    assert reason_sentence(feature, value, typical) == text


def pick_reasons(contributions: list[float], readable: list[bool], measures: list[int] | None = None) -> list[int]:
    """The obvious, slow reference for choose_reasons: one person, plain Python. Features of one
    measure (its windows) are shown once, the strongest."""
    order, seen = [], set()
    for i in sorted((i for i in range(len(contributions)) if readable[i]), key=lambda i: (-abs(contributions[i]), i)):
        m = i if measures is None else measures[i]
        if m not in seen:
            seen.add(m)
            order.append(i)
    chosen = [i for k, i in enumerate(order)
              if k < MIN_REASONS or (k < MAX_REASONS and abs(contributions[i]) >= STRONG_REASON)]
    strengths = [i for i in order if contributions[i] <= -STRENGTH_WORTH_SHOWING]
    if strengths and not any(contributions[i] < 0 for i in chosen):
        chosen = chosen[: MAX_REASONS - 1] + [strengths[0]]
    return chosen


def _choose(people: list[tuple]) -> list[list[int]]:
    """choose_reasons on several people, each (contributions, readable[, measures]); the features
    are named f00, f01, … so ties break by index."""
    rows = [{"person_id": f"p{p:03d}", "feature": f"f{i:02d}", "contribution": c, "readable": r}
            | ({"measure": f"m{person[2][i]}"} if len(person) > 2 else {})
            for p, person in enumerate(people) for i, (c, r) in enumerate(zip(*person[:2], strict=True))]
    out = choose_reasons(pl.DataFrame(rows))
    return [[int(f[1:]) for f in out.filter(pl.col("person_id") == f"p{p:03d}")["feature"]]
            for p in range(len(people))]


def test_reasons_are_three_to_five_and_show_a_strength():
    people = [
        ([0.9, 0.5, 0.02, 0.01, -0.01, 0.0, 0.0, 0.0], [True] * 8),
        ([0.9, 0.5, 0.4, 0.3, 0.2, 0.15, 0.0, 0.0], [True] * 8),
        # no strength among the strongest five: the strongest one replaces the fifth
        ([0.9, 0.5, 0.4, 0.3, 0.2, 0.15, -0.06, -0.08], [True] * 8),
        # a strength already shown: nothing added; an unreadable one is never shown
        ([0.9, -0.5, 0.4, 0.01, 0.0], [True] * 5),
        ([0.9, -0.5, 0.4, 0.01, 0.0], [True, False, True, True, True]),
    ]
    expected = [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 7], [0, 1, 2], [0, 2, 3]]
    assert [pick_reasons(*p) for p in people] == expected
    assert _choose(people) == expected


def test_choosing_reasons_for_everyone_at_once_matches_the_reference():
    rng = np.random.default_rng(5)
    people = []
    for _ in range(300):
        n = int(rng.integers(1, 12))
        cs = np.round(rng.normal(0, 0.15, n), 2)  # rounding makes ties
        people.append((cs.tolist(), (rng.random(n) > 0.2).tolist()))
    assert _choose(people) == [pick_reasons(*p) for p in people]


def test_one_measure_gives_one_reason_whatever_its_windows():
    """Concerns over 30 and over 60 days are one measure: the stronger is shown, and the next
    measure takes the other's place."""
    # f0 and f2 one measure (two windows), f1 and f3 another, f4 a third
    person = ([0.9, 0.5, 0.4, 0.3, 0.2], [True] * 5, [0, 1, 0, 1, 2])
    assert pick_reasons(*person) == [0, 1, 4]
    assert _choose([person]) == [[0, 1, 4]]
    rng = np.random.default_rng(11)
    people = []
    for _ in range(300):
        n = int(rng.integers(1, 12))
        people.append((np.round(rng.normal(0, 0.15, n), 2).tolist(), (rng.random(n) > 0.2).tolist(),
                       rng.integers(0, 4, n).tolist()))
    assert _choose(people) == [pick_reasons(*p) for p in people]


def test_sparkline_is_an_svg_with_words():
    values = [1, 2, 3, 0, 0, 5, 1, 0, 0, 2, 4, 1]
    svg = sparkline_svg(values, date(2026, 11, 23))
    assert svg.startswith("<svg") and 'role="img"' in svg and "<title>" in svg and "<script" not in svg
    assert "12 months to the list's date: Dec 2025 1, Jan 2026 2," in svg and "Nov 2026 1" in svg
    assert svg.count(" 20") == 12 * 2  # twelve months named, in the label and the title
    assert spark_caption(values, date(2026, 11, 23)) == "19 in the 12 months to 22 Nov 2026; most in the month to " \
        "May 2026 (5)."
    assert spark_caption([0] * 12, date(2026, 11, 2)) == "No attended contacts in the 12 months to the list's date."


@pytest.mark.parametrize("as_of", [date(2026, 11, 23), date(2024, 3, 1), date(2025, 3, 31), date(2024, 2, 29)])
def test_the_sparklines_twelve_months_are_the_reasons_last_365_days(as_of):
    from wobble.lists.rows import spark_bounds

    edges = spark_bounds(as_of)
    assert len(edges) == 13 and edges[-1] == as_of and (as_of - edges[0]).days == 365
    assert all(a < b for a, b in zip(edges, edges[1:], strict=False))


def _page(cfg, as_of, team):
    return (cfg.outputs / "lists" / as_of.isoformat() / f"{team}.html").read_text()


def _text(raw: str) -> str:
    """The page's text as a reader meets it: entities decoded, white space collapsed."""
    return " ".join(unescape(raw).split())


def test_the_page_says_what_it_is_and_where_it_came_from(published_copy):
    cfg, as_of, _ = published_copy
    raw = _page(cfg, as_of, "T01")
    html = _text(raw)
    for words in ("For discussion, not a decision", "not a ranking of anyone's worth",
                  "What do we know that the data doesn't?", "Demonstration only",
                  "Rising need, before crisis care, version 1", "Approved by", "wobble demo on",
                  "Rising need — not in crisis care", "Recently in crisis — check a plan exists",
                  "Data last updated", "GP 22 Nov 2026", "social care 22 Nov 2026", "List of", "23 November 2026",
                  "no earlier list for this team", "Last huddle outcome", "Attended contacts per month"):
        assert words in html, words
    assert "<script" not in raw and "http://" not in raw and "https://" not in raw and "src=" not in raw
    assert "Content-Security-Policy" in raw and "@media print" in raw and "size: A4" in raw
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        rows = con.execute("SELECT reasons, caveats FROM huddle_lists WHERE as_of = ? AND section = 'capacity'",
                           [as_of]).fetchall()
        recent = con.execute("SELECT reasons, risk FROM huddle_lists WHERE as_of = ? AND section = 'recent_crisis'",
                             [as_of]).fetchall()
        explained = con.execute("SELECT count(DISTINCT person_id) FROM explanations WHERE as_of = ?",
                                [as_of]).fetchall()[0][0]
        context = con.execute("SELECT team_id, data_updated FROM huddle_list_context WHERE as_of = ? "
                              "ORDER BY team_id", [as_of]).fetchall()
    assert explained == len(rows) == 40  # only the listed people are explained
    assert all(3 <= len(json.loads(r[0])) <= 5 for r in rows)
    assert recent and all(r[1] is None and " on " in json.loads(r[0])[0]["text"] for r in recent)
    assert [c[0] for c in context] == ["T01", "T02"]
    assert {d["system"] for d in json.loads(context[0][1])} == {"GP", "hospital", "community health",
                                                               "social care", "housing"}


def test_the_sparkline_counts_what_the_reasons_count(published_copy):
    """A listed person's 12 months sum to their attended contacts in the last year (`contacts_365d`)."""
    cfg, as_of, _ = published_copy
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        rows = con.execute("SELECT l.sparkline, f.contacts_365d FROM huddle_lists l JOIN feature_snapshots f "
                           "USING (person_id, as_of) WHERE l.as_of = ?", [as_of]).fetchall()
    assert rows and all(len(json.loads(s)) == 12 for s, _ in rows)
    assert [sum(json.loads(s)) for s, _ in rows] == [n for _, n in rows]


def test_outcomes_show_on_the_next_list(published_copy, tmp_path):
    cfg, as_of, _ = published_copy
    with connect(cfg.warehouse) as con:
        top = [r[0] for r in con.execute("SELECT person_id FROM huddle_lists WHERE team_id = 'T01' AND as_of = ? "
                                         "AND section = 'capacity' ORDER BY rank LIMIT 3", [as_of]).fetchall()]
    for pid, outcome, note in zip(top, ["referred_on", "outreach_agreed", "deferred"],
                                  ["to the falls clinic", None, None], strict=True):  # on the review page
        record_outcome(db_of(cfg), team_id="T01", person_id=pid, outcome=outcome, note=note, recorded_by="Nurse B",
                       actor="test")
    nxt = as_of + timedelta(weeks=1)
    result = publish(cfg, model="early_warning_90d", version="1", as_of=nxt)
    assert [t.team for t in result.lists] == ["T01", "T02"]
    html = _text(_page(cfg, nxt, "T01"))
    assert "list of 23 November 2026: 2 of 20 people discussed; outreach agreed 1, referred on 1, deferred 1" in html
    assert "referred on (list of 23 Nov 2026, recorded by Nurse B): “to the falls clinic”" in html
    assert "no earlier list for this team" not in html
    with open(cfg.outputs / "lists" / nxt.isoformat() / "T01.csv") as f:
        rows = {r["person_id"]: r for r in csv.DictReader(f)}
    assert rows[top[0]]["last_outcome"] == "referred on (list of 2026-11-23)"
    assert rows[top[0]]["change"] in ("higher", "same", "lower")  # listed last week: not "new"
    recent = [r for r in rows.values() if r["section"] == "recent_crisis"]  # events, said once, plainly
    assert recent and all(r["reasons"] and "(what happened)" not in r["reasons"] for r in recent)
    assert all("(raises concern)" in r["reasons"] for r in rows.values() if r["section"] == "capacity")
    assert "list of 23 November 2026: 0 of 20 people discussed" in _text(_page(cfg, nxt, "T02"))


@pytest.fixture(scope="module")
def prefect_runs():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_flow_run_leaves_table_and_markdown_artifacts(published_copy, prefect_runs):
    from prefect import flow
    from prefect.artifacts import Artifact

    cfg, as_of, _ = published_copy

    @flow(name="publish-in-a-flow")
    def run():
        return publish(cfg, model="early_warning_90d", version="1", as_of=as_of).summary()

    assert Artifact.get("huddle-lists") is None
    run()
    table = Artifact.get("huddle-lists")
    md = Artifact.get("huddle-lists-summary")
    assert table is not None and md is not None
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["team"] for r in rows] == ["T01", "T02"] and rows[0]["listed"] == 20
    assert "# Huddle lists for 2026-11-23 (demonstration" in md.data and "for discussion" in md.data
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        pids = [r[0] for r in con.execute("SELECT person_id FROM huddle_lists").fetchall()]
    assert not any(p in str(table.data) + md.data for p in pids)  # nobody is named in Prefect


def test_recently_in_crisis_stays_until_the_huddle_records_an_outcome(demo_run, tmp_path):
    """The list's other part: a crisis contact in the last 7 days, or shown here before within 30
    days of one with no outcome recorded since; it carries no chance and never repeats the capacity
    part."""
    from conftest import copy_tree

    from wobble.core.config import load_config

    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = load_config(copy_tree(work, tmp_path / "demo") / "wobble.toml")
    model, as_of = cfg.wobble.models[0], date(2026, 11, 23)
    before = as_of - timedelta(weeks=1)
    publish(cfg, model=model, version="1", as_of=before)

    def part(day):
        with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
            return {r[0]: r[1:] for r in con.execute(
                "SELECT person_id, change, risk, reasons, team_id FROM huddle_lists "
                "WHERE as_of = ? AND section = 'recent_crisis'", [day]).fetchall()}

    def last_crisis(day, people):
        with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
            return dict(con.execute(
                "SELECT person_id, max(occurred_at)::DATE FROM contacts WHERE service IN ('ae_attendance', "
                "'emergency_admission', 'ambulance_callout', 'mental_health_crisis') AND occurred_at < ? "
                "AND recorded_at < ? GROUP BY ALL", [day, day]).fetchall())

    first = part(before)
    publish(cfg, model=model, version="1", as_of=as_of)
    now = part(as_of)
    latest = last_crisis(as_of, now)
    carried = {p for p, r in now.items() if r[0] == "carried"}
    assert carried and carried <= set(first)
    for p, (change, risk, reasons, _) in now.items():
        assert risk is None
        recent = latest[p] >= as_of - timedelta(days=7)
        assert (change == "new") == recent and (change == "carried") == (not recent)
        assert latest[p] >= as_of - timedelta(days=30)
        if change == "carried":
            assert "no outcome recorded yet" in json.loads(reasons)[-1]["text"]
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        capacity = {r[0] for r in con.execute("SELECT person_id FROM huddle_lists WHERE as_of = ? "
                                              "AND section = 'capacity'", [as_of]).fetchall()}
    assert not capacity & set(now)
    # an outcome on the earlier list ends the follow-up; a deferral does not
    decided, deferred = sorted(carried)[:2] if len(carried) > 1 else (sorted(carried)[0], None)
    for pid, outcome in ((decided, "already_supported"), (deferred, "deferred")):
        if pid:
            record_outcome(db_of(cfg), team_id=now[pid][3], person_id=pid, outcome=outcome, note=None,
                           recorded_by="Nurse A", actor="test", as_of=before)
    publish(cfg, model=model, version="1", as_of=as_of)
    again = part(as_of)
    assert decided not in again and (deferred is None or deferred in again)
