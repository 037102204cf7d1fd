"""One rule for "a data feed went quiet", and every stage that reports one names the same months."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta

import duckdb
import polars as pl

from wobble.core.sql import dates
from wobble.core.warehouse import SCHEMA
from wobble.features import feeds


def _gap(work) -> tuple[str, list[date]]:
    """The team and months the synthetic world left out of one social care feed (its manifest)."""
    gap = json.loads((work / "world" / "truth" / "manifest.json").read_text())["feed_gap"]
    first, end = date.fromisoformat(gap["from"]), date.fromisoformat(gap["to_exclusive"])
    months, d = [], first
    while d < end:
        months.append(d)
        d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return gap["team_id"], months


def _span(months: list[date]) -> str:
    return feeds.span_text(months[0], months[-1])


def test_every_stage_names_the_same_team_and_months(demo_run, monitor_world):
    """The data-quality report, the features, the list, the model card and the monitoring report."""
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    team, months = _gap(work)
    ym = [m.strftime("%Y-%m") for m in months]
    sentence = f"few or no social care records for this team in {_span(months)}"
    outputs = work / "outputs"
    as_of = date.fromisoformat(json.loads(proc.stdout)["stages"]["publish"]["as_of"])

    quality = next((outputs / "reports").glob("data-quality-*.md")).read_text()
    flagged = re.findall(r"^\| ([\w ]+?) \| (T\d+) \| (\d{4}-\d{2}) \|", quality, re.M)
    assert flagged == [("social care", team, m) for m in ym]

    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        quiet = con.sql(feeds.team_quiet_sql(f"[DATE '{as_of}']")).pl()
        spans = feeds.quiet_spans(feeds.feed_months(con, as_of))
    month0 = (as_of - timedelta(days=1)).replace(day=1)
    named = {r["team_id"]: sorted(_month_back(month0, k) for k in r["team_quiet_months"] or [])
             for r in quiet.iter_rows(named=True)}
    assert {t: m for t, m in named.items() if m} == {team: months}
    assert [(s["team_id"], s["source_system"], s["first"], s["last"]) for s in spans] == [
        (team, "social_care", months[0], months[-1])]

    for page in (outputs / "lists" / as_of.isoformat()).glob("*.html"):  # a list item: a sentence of its own
        assert (f"<li>{sentence[0].upper()}{sentence[1:]}" in page.read_text()) == (page.stem == team), page.name

    card = next((outputs / "cards").glob("*.md")).read_text()
    rows = re.findall(r"^\| (T\d+) \| ([\w ]+?) \| (\d{4}-\d{2}) \|", card, re.M)
    assert rows == [(team, "social care", m) for m in ym]

    from wobble.core.config import load_config
    from wobble.ops.monitor import monitor

    config, _ = monitor_world
    report = monitor(load_config(config)).report_md.read_text()
    assert f"team {team}: {sentence}" in report
    assert len(re.findall(r"^- team T\d+: few or no", report, re.M)) == 1


def _month_back(month0: date, k: int) -> date:
    y, m = month0.year, month0.month - k
    while m < 1:
        y, m = y - 1, m + 12
    return date(y, m, 1)


def _warehouse(stop: tuple[date, date] | None, teams=("T01", "T02", "T03")) -> duckdb.DuckDBPyConnection:
    """Three teams of 20 people, each with a GP contact a day for 15 months; none from any team
    in [stop) when given."""
    con = duckdb.connect()
    con.execute(SCHEMA)
    people = [(f"p{t}{k}", t) for t in teams for k in range(20)]
    con.executemany("INSERT INTO persons (person_id, team_id, opted_out) VALUES (?, ?, false)", people)
    start = date(2025, 8, 1)
    rows = []
    for d in range(460):
        day = start + timedelta(days=d)
        if stop and stop[0] <= day < stop[1]:
            continue
        when = datetime(day.year, day.month, day.day, 10)
        rows += [(f"c{d}{pid}", pid, when, when + timedelta(hours=2)) for pid, _ in people[::7]]
    con.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, 'gp_appointment', 'attended', NULL, NULL, 'gp', 'b')",
                    rows)
    return con


def test_a_feed_that_stops_for_every_team_at_once_is_flagged_in_the_quality_report():
    """A share-based rule cannot see it (every team's share of the month stays the same)."""
    from wobble.ingest.quality import _coverage

    con = _warehouse((date(2026, 3, 1), date(2026, 4, 1)))
    cells, gaps, months = _coverage(con)
    assert sorted((g.team_id, g.month) for g in gaps) == [("T01", "2026-03"), ("T02", "2026-03"), ("T03", "2026-03")]
    assert "2026-03" in months["gp"]  # the silent month still has its column
    assert all(cells[("gp", t)]["2026-03"] == 0 for t in ("T01", "T02", "T03"))


def test_no_gap_when_nothing_stops():
    from wobble.ingest.quality import _coverage

    _, gaps, _ = _coverage(_warehouse(None))
    assert gaps == []


def test_a_month_under_way_is_judged_pro_rata_and_only_after_two_weeks():
    con = _warehouse(None)
    frame = feeds.feed_months(con, date(2026, 10, 12))  # 11 days of October: not judged
    october = frame.filter(pl.col("month") == date(2026, 10, 1))
    assert not october["judged"].any() and not october["quiet"].any()
    frame = feeds.feed_months(con, date(2026, 10, 26))  # 25 days, and about 25/31 of a month's records
    october = frame.filter(pl.col("month") == date(2026, 10, 1))
    assert october["judged"].all() and not october["quiet"].any()
    assert feeds.feed_status(frame) == {"T01": "none", "T02": "none", "T03": "none"}


def test_each_months_records_are_those_known_before_each_as_of_date():
    """The slow, obvious count per team, system, as-of date and month, against `feed_months_sql`, on
    contacts and tags keyed in late (some weeks after they happened, some after the as-of dates)."""
    import numpy as np

    rng = np.random.default_rng(11)
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.executemany("INSERT INTO persons (person_id, team_id, opted_out) VALUES (?, ?, false)",
                    [(f"p{k}", f"T0{k % 3}") for k in range(30)])
    start, n = datetime(2025, 9, 1, 9), 4000
    occurred = [start + timedelta(days=int(d)) for d in rng.integers(0, 450, n)]
    lags = rng.choice([0, 1, 6, 40, 120], n, p=[0.5, 0.2, 0.15, 0.1, 0.05])
    systems = rng.choice(["gp", "acute"], n)
    rows = [(f"c{i}", f"p{rng.integers(30)}", o, o + timedelta(days=int(lag), hours=1), str(s))
            for i, (o, lag, s) in enumerate(zip(occurred, lags, systems, strict=True))]
    con.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, 'gp_appointment', 'attended', NULL, NULL, ?, 'b')", rows)
    tags = [(f"t{i}", p, o + timedelta(days=int(lag)), "housing") for i, (_, p, o, _, _), lag
            in zip(range(600), rows, lags, strict=False)]
    con.executemany("INSERT INTO tags VALUES (?, ?, ?, 'low_mood', 'concern', NULL, ?, 'b')", tags)
    as_ofs = [date(2026, 6, 1), date(2026, 6, 8), date(2026, 9, 14), date(2026, 11, 23)]
    got = {(r[0], r[1], r[2], r[3]): r[4] for r in con.sql(
        f"SELECT team_id, source_system, as_of, month, records FROM ({feeds.feed_months_sql(dates(as_ofs))})"
    ).fetchall()}
    team = {f"p{k}": f"T0{k % 3}" for k in range(30)}
    expected: dict[tuple, int] = {}
    for as_of in as_ofs:
        first = date((as_of - timedelta(days=1)).year, (as_of - timedelta(days=1)).month, 1)
        for _, p, day, known, system in rows + [(i, p, k, k, s) for i, p, k, s in tags]:
            month = date(day.year, day.month, 1)
            back = (first.year - month.year) * 12 + first.month - month.month
            if 0 <= back <= feeds.MONTHS and day.date() < as_of and known.date() < as_of:
                key = (team[p], system, as_of, month)
                expected[key] = expected.get(key, 0) + 1
    assert {k: v for k, v in got.items() if v} == expected
    assert any(known.date() >= as_ofs[0] > day.date() for _, _, day, known, _ in rows)  # some known late


def test_a_feed_that_ends_days_before_the_as_of_date_is_named_by_each_team_list():
    """A GP feed (a contact a day) stopping 10 days before the as-of date: every team's list says
    its records end early. Ending on the Friday before (a weekend without a record) is not early."""
    from wobble.lists.rows import team_caveats

    as_of = date(2026, 10, 26)  # a Monday
    con = _warehouse((as_of - timedelta(days=10), date(2027, 1, 1)))
    behind = feeds.feeds_behind(con, as_of)
    assert [(f["team_id"], f["source_system"], f["last_day"]) for f in behind] == [
        (t, "gp", date(2026, 10, 15)) for t in ("T01", "T02", "T03")]
    sentence = "GP records for this team end on 15 October 2026, with none in the 10 days before 26 October 2026"
    caveats = team_caveats(con, as_of)
    assert all(any(c.startswith(sentence) for c in caveats[t]) for t in ("T01", "T02", "T03")), caveats
    weekend = _warehouse((date(2026, 10, 24), date(2027, 1, 1)))  # Saturday and Sunday without a record
    assert feeds.feeds_behind(weekend, as_of) == [] and team_caveats(weekend, as_of) == {}
    assert feeds.feeds_behind(_warehouse(None), as_of) == []


def test_feeds_behind_against_the_slow_obvious_rule():
    """Per team and system, the last day with a record known before the as-of date, the median of
    the last 13 weeks' counts (weeks without a record are zeros), and the days since: computed
    record by record in Python against `feeds_behind_sql`, on feeds that stop on random days,
    records keyed in late, small feeds and tags."""
    import numpy as np

    rng = np.random.default_rng(5)
    con = duckdb.connect()
    con.execute(SCHEMA)
    team = {f"p{k}": f"T{k % 4}" for k in range(40)}
    con.executemany("INSERT INTO persons (person_id, team_id, opted_out) VALUES (?, ?, false)", list(team.items()))
    start = date(2026, 5, 1)
    systems = ("gp", "acute", "community")
    stops = {(t, s): start + timedelta(days=int(rng.integers(150, 215))) for t in set(team.values()) for s in systems}
    rate = {(t, s): float(rng.choice([0.05, 0.5, 3.0])) for t, s in stops}  # records a day
    contacts, tags = [], []
    for (t, s), stop in stops.items():
        people = [p for p, tt in team.items() if tt == t]
        for d in range((stop - start).days):
            day = start + timedelta(days=d)
            for k in range(rng.poisson(rate[(t, s)])):
                when = datetime(day.year, day.month, day.day, 9)
                lag = timedelta(days=int(rng.choice([0, 1, 9])), hours=1)
                row = (f"{t}{s}{d}_{k}", people[int(rng.integers(len(people)))], when, when + lag, s)
                (tags if s == "community" and k % 2 else contacts).append(row)
    con.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, 'gp_appointment', 'attended', NULL, NULL, ?, 'b')",
                    contacts)
    con.executemany("INSERT INTO tags VALUES (?, ?, ?, 'low_mood', 'concern', NULL, ?, 'b')",
                    [(i, p, known, s) for i, p, _, known, s in tags])
    records = [(team[p], s, o.date(), k.date()) for _, p, o, k, s in contacts]
    records += [(team[p], s, k.date(), k.date()) for _, p, _, k, s in tags]  # tags by the day recorded
    for as_of in (date(2026, 10, 5), date(2026, 10, 26), date(2026, 11, 16)):
        expected = []
        for key in sorted(stops):
            days = [day for t, s, day, known in records if (t, s) == key and known < as_of
                    and as_of - timedelta(days=7 * feeds.BEHIND_WEEKS) <= day < as_of]
            if not days:
                continue
            weeks = [sum(1 for day in days if (as_of - day).days - 1 in range(7 * w, 7 * w + 7))
                     for w in range(feeds.BEHIND_WEEKS)]
            usual, quiet = float(np.median(weeks)), (as_of - max(days)).days - 1
            if quiet > feeds.MAX_QUIET_DAYS and usual * quiet / 7 >= feeds.MIN_MISSED:
                expected.append((*key, max(days), usual))
        got = [(f["team_id"], f["source_system"], f["last_day"], f["usual_week"])
               for f in feeds.feeds_behind(con, as_of)]
        assert got == expected, as_of
    assert 0 < len(feeds.feeds_behind(con, date(2026, 11, 16))) < len(stops)  # some flagged, not all


def test_the_monitor_names_feeds_that_end_early_once_per_system():
    from wobble.ops.monitor.drift import _drift_findings

    as_of = date(2026, 10, 26)
    behind = feeds.feeds_behind(_warehouse((as_of - timedelta(days=10), date(2027, 1, 1))), as_of)
    drift = {"score": {"level": "ok"}, "teams": [], "features": [],
             "feeds_behind": [{"team": f["team_id"], "system": f["source_system"],
                               "last_day": f["last_day"].isoformat(), "text": feeds.behind_sentence(f, as_of)}
                              for f in behind]}
    found = [f for f in _drift_findings(drift, None) if "records end" in f.what]
    assert len(found) == 1 and found[0].level == "watch"
    assert found[0].what.startswith("GP records end days before the as-of date") and \
        "T01 (to 2026-10-15), T02 (to 2026-10-15), T03 (to 2026-10-15)" in found[0].what


def test_the_quality_report_names_a_feed_that_ends_before_the_others():
    """GP records end on 15 October while acute ones run on to 3 November: a line per team. When
    every feed ends on the same day, none is early."""
    from wobble.ingest.quality import _feeds_behind, _loaded_span

    con = _warehouse(None)
    assert _feeds_behind(con, _loaded_span(con)[1]) == []
    con.execute("INSERT INTO contacts SELECT * REPLACE ('a' || contact_id AS contact_id, 'acute' AS source_system) "
                "FROM contacts")
    con.execute("DELETE FROM contacts WHERE source_system = 'gp' AND occurred_at >= DATE '2026-10-16'")
    lines = _feeds_behind(con, _loaded_span(con)[1])
    assert [line.split(",")[0] for line in lines] == [
        f"GP records for team {t} end on 2026-10-15" for t in ("T01", "T02", "T03")]
    assert "19 days before the latest record loaded (2026-11-03)" in lines[0]
