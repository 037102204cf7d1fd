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

    for page in (outputs / "lists" / as_of.isoformat()).glob("*.html"):
        assert (sentence in page.read_text()) == (page.stem == team), page.name

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
