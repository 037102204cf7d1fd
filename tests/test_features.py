"""Features: correct at the as-of date, and never looking ahead.

The compiled SQL is checked against `reference_snapshot`, a slow, obviously correct Python
version written from the feature descriptions (loops over each person's records, numpy's
polyfit for trends, exact fractions for the rise detector), on small random worlds; and a
property test shows that records recorded on or after the as-of date (even if they happened
before it) never change a feature, whether they are added or changed.
"""

from __future__ import annotations

import math
import shutil
import statistics
from datetime import date, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wobble.core.calendar import weekly_as_ofs
from wobble.core.config import PACKAGED_FEATURES
from wobble.core.errors import ConfigError
from wobble.core.sql import dates as sql_dates
from wobble.core.vocab import AGE_BANDS, CRISIS_SERVICES, SERVICES, SOURCE_SYSTEMS, STRENGTH_TAGS, TAGS
from wobble.core.warehouse import SCHEMA
from wobble.features.build import compute_snapshots
from wobble.features.catalogue import catalogue_markdown, load_catalogue
from wobble.features.compile import cohort_sql, compile_sql

AS_OF = date(2026, 3, 2)
CAT = load_catalogue(PACKAGED_FEATURES)
PROFESSIONALS = (None, "g1", "g2", "g3", "n1", "n2")


# --- the slow reference ------------------------------------------------------------------------

def reference_snapshot(persons: list[dict], contacts: list[dict], tags: list[dict], as_of: date) -> dict:
    """Every catalogue column for every person in the cohort, by loops over records."""
    t = datetime(as_of.year, as_of.month, as_of.day)
    cohort = [p for p in persons if not p["opted_out"] and p["registered_on"] < as_of
              and (p["died_on"] is None or p["died_on"] >= as_of)]
    out = {}
    for p in cohort:
        mine = [c for c in contacts if c["person_id"] == p["person_id"]]
        my_tags = [g for g in tags if g["person_id"] == p["person_id"]]
        team_records = (_team_records(persons, contacts, tags, p["team_id"]),
                        _team_records(persons, contacts, tags, None))
        out[p["person_id"]] = reference_person(p, mine, my_tags, team_records, as_of, t)
    return out


def reference_person(p, contacts, tags, team_records, as_of, t) -> dict:
    def days_before(when: datetime) -> int:
        return (as_of - when.date()).days

    known_all = [c for c in contacts if c["recorded_at"] < t and c["occurred_at"] < t]
    known = [dict(c, db=days_before(c["occurred_at"])) for c in known_all]
    known = [c for c in known if c["db"] <= 365]
    ktags = [dict(g, db=days_before(g["recorded_at"])) for g in tags if g["recorded_at"] < t]
    ktags = [g for g in ktags if g["db"] <= 365]

    def win(rows, hi, lo=0):
        return [r for r in rows if lo < r["db"] <= hi]

    def since(rows):
        return min(r["db"] for r in rows) if rows else None

    def share(rows, cond):
        return sum(cond(r) for r in rows) / len(rows) if rows else None

    attended = [c for c in known if c["status"] == "attended"]
    crises = [c for c in known if c["service"] in CRISIS_SERVICES]
    dna = [c for c in known if c["status"] == "did_not_attend"]
    booked = [c for c in known if c["status"] in ("attended", "did_not_attend")]
    urgent = [c for c in known if c["service"] in CRISIS_SERVICES or c["service"] == "nhs111_call"]
    concerns = [g for g in ktags if g["polarity"] == "concern"]
    strengths = [g for g in ktags if g["polarity"] == "strength"]
    out: dict = {}
    # services, and all contacts attended
    for w in (30, 90, 365):
        for s in SERVICES:
            out[f"{s}_{w}d"] = sum(c["service"] == s for c in win(known, w))
        out[f"contacts_{w}d"] = len(win(attended, w))
    # recency
    for s in SERVICES:
        out[f"days_since_{s}"] = since([c for c in known if c["service"] == s])
    out["days_since_contact"] = since(known)
    # trajectory
    for w in (30, 90):
        usual = len(win(attended, w + 180, w)) * w / 180
        out[f"contacts_excess_{w}d"] = len(win(attended, w)) - usual
        out[f"contacts_ratio_{w}d"] = (len(win(attended, w)) + 1) / (usual + 1)
    out["urgent_contacts_excess_90d"] = len(win(urgent, 90)) - len(win(urgent, 270, 90)) * 90 / 180
    for days in (180, 360):
        out[f"contacts_slope_{days}d"] = _trend(attended, days, 1)
    out["contacts_acceleration_360d"] = _trend(attended, 360, 2)
    for w in (30, 60, 90):
        out[f"new_services_{w}d"] = len({c["service"] for c in win(known, w)}
                                        - {c["service"] for c in win(known, w + 275, w)})
    out["weeks_since_first_rise"] = _first_rise(attended)
    # breadth
    for w in (90, 365):
        out[f"distinct_services_{w}d"] = len({c["service"] for c in win(known, w)})
        out[f"distinct_systems_{w}d"] = len({c["source_system"] for c in win(known, w)})
    out["new_agencies_90d"] = len({c["source_system"] for c in win(known, 90)}
                                  - {c["source_system"] for c in win(known, 365, 90)})
    # completeness
    out["days_registered"] = (as_of - p["registered_on"]).days
    for system in SOURCE_SYSTEMS:
        out[f"has_{system}_records_365d"] = int(any(c["source_system"] == system for c in known))
    first = min((c["occurred_at"] for c in known_all), default=None)
    out["months_of_history"] = None if first is None else (as_of - first.date()).days // 30
    quiet = _quiet_months(*team_records, as_of)
    out["team_feed_gap_3m"] = int(any(k < 3 for k in quiet))
    out["team_feed_gap_12m"] = int(bool(quiet))
    # continuity
    seen = [c for c in attended if c["source_system"] in ("gp", "community") and c["professional_id"]]
    for w in (90, 365):
        out[f"distinct_professionals_{w}d"] = len({c["professional_id"] for c in win(seen, w)})
    for setting in ("gp", "community"):
        per = {}
        for c in seen:
            if c["source_system"] == setting:
                per[c["professional_id"]] = per.get(c["professional_id"], 0) + 1
        n = sum(per.values())
        out[f"{setting}_upc_365d"] = max(per.values()) / n if n >= 2 else None
        out[f"{setting}_coc_365d"] = (sum(v * v for v in per.values()) - n) / (n * (n - 1)) if n >= 2 else None
    # crisis
    for w in (30, 90, 365):
        out[f"crises_{w}d"] = len(win(crises, w))
    out["days_since_crisis"] = since(crises)
    out["crisis_kinds_365d"] = len({c["service"] for c in crises})
    out["crisis_periods_360d"] = len({(c["db"] - 1) // 30 for c in win(crises, 360)})
    # demographics
    age = as_of.year - p["birth_year"]
    out["age"] = age
    out["age_band"] = next(label for lo, hi, label in AGE_BANDS if lo <= age <= hi)
    out["female"] = {"female": 1, "male": 0}.get(p["sex"])
    out["imd_decile"] = p["imd_decile"]
    out["ethnicity_group"] = p["ethnicity_group"]
    # missed appointments
    for w in (30, 90, 365):
        out[f"did_not_attend_{w}d"] = len(win(dna, w))
    for w in (90, 365):
        out[f"dna_rate_{w}d"] = share(win(booked, w), lambda c: c["status"] == "did_not_attend")
    recent = share(win(booked, 90), lambda c: c["status"] == "did_not_attend")
    before = share(win(booked, 365, 90), lambda c: c["status"] == "did_not_attend")
    out["dna_rate_change_90d"] = None if recent is None or before is None else recent - before
    out["did_not_attend_slope_360d"] = _trend(dna, 360, 1)
    out["days_since_missed"] = since(dna)
    # frontline tags
    for w in (30, 90, 365):
        out[f"concern_tags_{w}d"] = len(win(concerns, w))
        out[f"strength_tags_{w}d"] = len(win(strengths, w))
    for w in (90, 365):
        out[f"distinct_concerns_{w}d"] = len({g["tag"] for g in win(concerns, w)})
    for w in (30, 60, 90):
        out[f"new_concerns_{w}d"] = len({g["tag"] for g in win(concerns, w)}
                                        - {g["tag"] for g in win(concerns, w + 275, w)})
    out["days_since_concern"] = since(concerns)
    out["days_since_strength"] = since(strengths)
    for tag in TAGS:
        out[f"tag_{tag}_90d"] = sum(g["tag"] == tag for g in win(ktags, 90))
    out.update(_reference_change(known, concerns))
    return out


def _reference_change(known: list[dict], concerns: list[dict]) -> dict:
    """features/change.yml: recent counts against the person's own usual rate before them."""
    def win(rows, hi, lo=0):
        return [r for r in rows if lo < r["db"] <= hi]

    def excess(rows, w, before=180):
        return len(win(rows, w)) - len(win(rows, w + before, w)) * w / before

    def ratio(rows, w, before):
        return (len(win(rows, w)) + 1) / (len(win(rows, w + before, w)) * w / before + 1)

    routine = [c for c in known if c["status"] == "attended" and c["service"] not in CRISIS_SERVICES]
    out: dict = {}
    for s in SERVICES:
        out[f"{s}_excess_30d"] = excess([c for c in known if c["service"] == s], 30)
    for w in (14, 30, 60):
        out[f"routine_contacts_excess_{w}d"] = excess(routine, w)
        out[f"routine_contacts_ratio_{w}d"] = ratio(routine, w, 180)
    for w in (30, 60):
        out[f"routine_contacts_ratio_long_{w}d"] = ratio(routine, w, 300)
        out[f"concern_tags_excess_{w}d"] = excess(concerns, w)
    recent = win(concerns, 90)
    out["days_since_first_recent_concern_90d"] = max(g["db"] for g in recent) if recent else None
    return out


def _trend(rows: list[dict], days: int, degree: int) -> float:
    """Slope (degree 1) or second derivative (degree 2) of a polynomial fitted to the counts
    in consecutive 30-day periods, oldest first, over the last `days` days."""
    periods = days // 30
    counts = [0] * periods
    for r in rows:
        if r["db"] <= days:
            counts[periods - 1 - (r["db"] - 1) // 30] += 1
    coef = np.polyfit(np.arange(periods), np.array(counts, dtype=float), degree)
    return float(coef[0]) if degree == 1 else float(2 * coef[0])


def _first_rise(attended: list[dict]) -> int | None:
    """Weeks since contacts began running above the usual rate, as the description says."""
    weeks = [(r["db"] - 1) // 7 + 1 for r in attended]
    usual_rate = Fraction(sum(27 <= w <= 52 for w in weeks), 26)
    last4 = sum(w <= 4 for w in weeks)
    if not (last4 >= 2 and last4 >= 2 * 4 * usual_rate):
        return None
    reference = max(Fraction(3, 2) * usual_rate, Fraction(1, 8))
    excess = {w: sum(x <= w for x in weeks) - reference * w for w in range(1, 27)}
    peak = max(excess.values())
    return min(w for w, e in excess.items() if e == peak)


def _team_records(persons, contacts, tags, team) -> list[tuple[str, date, datetime]]:
    """(source system, day, recorded at) of every record of a team's people (every team's, for
    None): contacts by the day they happened, tags by the day they were recorded."""
    team_of = {p["person_id"]: p["team_id"] for p in persons}

    def ours(pid):
        return team_of.get(pid) is not None and (team is None or team_of[pid] == team)

    return ([(c["source_system"], c["occurred_at"].date(), c["recorded_at"]) for c in contacts if ours(c["person_id"])]
            + [(g["source_system"], g["recorded_at"].date(), g["recorded_at"]) for g in tags if ours(g["person_id"])])


def _quiet_months(records, everyone, as_of: date) -> set[int]:
    """Months (0 = the month of the day before the as-of date, back to 12) in which a source the team
    usually hears from (a median complete month of 10 or more records, known before the as-of date)
    sent fewer than 10% of it: pro rata for a month under way, or the month the source's first record
    in these months fell in (`everyone`: every team's records), judged once 14 days of it count."""
    t = datetime(as_of.year, as_of.month, as_of.day)
    last = as_of - timedelta(days=1)
    starts = []
    y, m = last.year, last.month
    for _ in range(13):
        starts.append(date(y, m, 1))
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    ends = [date(s.year + s.month // 12, s.month % 12 + 1, 1) for s in starts]
    known = [(s, d) for s, d, rec in records if rec < t and d < as_of]
    quiet = set()
    for system in {s for s, d in known if starts[-1] <= d}:
        first = min(d for s, d, rec in everyone if s == system and rec < t and starts[-1] <= d < as_of)
        counts = [sum(1 for s, d in known if s == system and a <= d < b) for a, b in zip(starts, ends, strict=True)]
        before = [max(0, (min(as_of, b) - max(a, first)).days) for a, b in zip(starts, ends, strict=True)]
        covered = [n / (b - a).days for n, a, b in zip(before, starts, ends, strict=True)]
        usual = statistics.median([c for c, f in zip(counts, covered, strict=True) if f == 1] or [0])
        if usual >= 10:
            quiet |= {k for k in range(13) if before[k] >= 14 and counts[k] < 0.1 * usual * covered[k]}
    return quiet


# --- random small worlds -----------------------------------------------------------------------

def _ts(day_offset: int, hour: int) -> datetime:
    return datetime(2025, 1, 1) + timedelta(days=day_offset, hours=hour)


contact_st = st.fixed_dictionaries({
    "person": st.integers(0, 3),
    "occurred": st.integers(0, 520), "hour": st.integers(0, 23),
    "lag_hours": st.integers(0, 24 * 40),
    "service": st.sampled_from(SERVICES),
    "status": st.sampled_from(("attended", "attended", "did_not_attend", "cancelled")),
    "system": st.sampled_from(SOURCE_SYSTEMS),
    "professional": st.sampled_from(PROFESSIONALS),
})
tag_st = st.fixed_dictionaries({
    "person": st.integers(0, 3), "recorded": st.integers(0, 520), "hour": st.integers(0, 23),
    "tag": st.sampled_from(TAGS),
})
# Bursts: several contacts close together, so rises, trends and continuity are not all blank.
burst_st = st.fixed_dictionaries({
    "person": st.integers(0, 3), "start": st.integers(300, 424), "every_days": st.integers(1, 10),
    "n": st.integers(2, 12), "service": st.sampled_from(("gp_appointment", "community_nursing")),
    "system": st.sampled_from(("gp", "community")), "professional": st.sampled_from(PROFESSIONALS),
})


def _persons() -> list[dict]:
    base = {"opted_out": False, "died_on": None, "team_id": "T01", "registered_on": date(2020, 1, 1)}
    return [
        {**base, "person_id": "p0", "birth_year": 1940, "sex": "female", "imd_decile": 3,
         "ethnicity_group": "White"},
        {**base, "person_id": "p1", "birth_year": 1990, "sex": "male", "imd_decile": 7,
         "ethnicity_group": "Asian", "team_id": "T02"},
        {**base, "person_id": "p2", "birth_year": 2012, "sex": "female", "imd_decile": None,
         "ethnicity_group": "Not stated", "registered_on": date(2025, 11, 3)},
        {**base, "person_id": "p3", "birth_year": 1960, "sex": "male", "imd_decile": 1,
         "ethnicity_group": "Black"},
        # out of the cohort: opted out, died before the as-of date, registered after it
        {**base, "person_id": "x0", "birth_year": 1950, "sex": "male", "imd_decile": 5,
         "ethnicity_group": "White", "opted_out": True},
        {**base, "person_id": "x1", "birth_year": 1950, "sex": "male", "imd_decile": 5,
         "ethnicity_group": "White", "died_on": date(2026, 1, 5)},
        {**base, "person_id": "x2", "birth_year": 1950, "sex": "male", "imd_decile": 5,
         "ethnicity_group": "White", "registered_on": AS_OF},
    ]


def _world(contacts_in, tags_in, bursts=()):
    persons = _persons()
    team = {p["person_id"]: p["team_id"] for p in persons}
    rows = [dict(c) for c in contacts_in]
    for b in bursts:
        rows += [{"person": b["person"], "occurred": b["start"] + k * b["every_days"], "hour": 10,
                  "lag_hours": 5, "service": b["service"], "status": "attended", "system": b["system"],
                  "professional": b["professional"] if k % 3 else "g1"} for k in range(b["n"])]
    contacts = [{
        "contact_id": f"c{k}", "person_id": f"p{c['person']}", "team_id": team[f"p{c['person']}"],
        "occurred_at": _ts(c["occurred"], c["hour"]),
        "recorded_at": _ts(c["occurred"], c["hour"]) + timedelta(hours=c["lag_hours"]),
        "service": c["service"], "status": c["status"], "source_system": c["system"],
        "professional_id": c["professional"],
    } for k, c in enumerate(rows)]
    tags = [{
        "tag_id": f"t{k}", "person_id": f"p{g['person']}", "recorded_at": _ts(g["recorded"], g["hour"]),
        "tag": g["tag"], "polarity": "strength" if g["tag"] in STRENGTH_TAGS else "concern", "source_system": "gp",
    } for k, g in enumerate(tags_in)]
    return persons, contacts, tags


def _snapshots(persons, contacts, tags, as_of=AS_OF) -> dict[str, dict]:
    return {pid: row for (pid, _), row in _snapshots_at(persons, contacts, tags, [as_of]).items()}


def _snapshots_at(persons, contacts, tags, dates: list[date]) -> dict[tuple[str, date], dict]:
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.executemany(
        "INSERT INTO persons (person_id, birth_year, sex, imd_decile, team_id, opted_out, died_on, "
        "registered_on, ethnicity_group) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [[p["person_id"], p["birth_year"], p["sex"], p["imd_decile"], p["team_id"], p["opted_out"],
          p["died_on"], p["registered_on"], p["ethnicity_group"]] for p in persons])
    if contacts:
        con.executemany(
            "INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, 'b')",
            [[c["contact_id"], c["person_id"], c["occurred_at"], c["recorded_at"], c["service"],
              c["status"], c["professional_id"], c["source_system"]] for c in contacts])
    if tags:
        con.executemany("INSERT INTO tags VALUES (?, ?, ?, ?, ?, NULL, ?, 'b')",
                        [[g["tag_id"], g["person_id"], g["recorded_at"], g["tag"], g["polarity"], g["source_system"]]
                         for g in tags])
    df = compute_snapshots(con, CAT, dates)
    con.close()
    assert df.columns == ["person_id", "as_of", "team_id", *CAT.columns]
    return {(r["person_id"], r["as_of"]): r for r in df.iter_rows(named=True)}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)


def _assert_matches_reference(persons, contacts, tags, as_of=AS_OF):
    got = _snapshots(persons, contacts, tags, as_of)
    ref = reference_snapshot(persons, contacts, tags, as_of)
    assert set(got) == set(ref)
    for pid, expected in ref.items():
        assert set(expected) == set(CAT.columns), set(expected) ^ set(CAT.columns)
        for col, value in expected.items():
            assert _same(got[pid][col], value), (pid, col, got[pid][col], value)
    return got


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contact_st, max_size=30), st.lists(tag_st, max_size=12),
       st.lists(burst_st, max_size=3))
def test_compiled_sql_matches_the_slow_reference(contacts_in, tags_in, bursts):
    persons, contacts, tags = _world(contacts_in, tags_in, bursts)
    _assert_matches_reference(persons, contacts, tags)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contact_st, max_size=20), st.lists(tag_st, max_size=10), st.lists(burst_st, max_size=2),
       st.lists(contact_st, min_size=1, max_size=10), st.lists(tag_st, max_size=5), st.data())
def test_records_known_only_after_the_as_of_date_change_nothing(contacts_in, tags_in, bursts, late_c,
                                                                  late_t, data):
    persons, contacts, tags = _world(contacts_in, tags_in, bursts)
    t = datetime(AS_OF.year, AS_OF.month, AS_OF.day)
    # Records already in the world but recorded on or after the as-of date may change freely.
    for c in contacts:
        if c["recorded_at"] >= t:
            c["service"] = data.draw(st.sampled_from(SERVICES))
            c["occurred_at"] = min(c["occurred_at"], t - timedelta(days=data.draw(st.integers(1, 400))))
    before = _snapshots(persons, contacts, tags)
    _, extra_c, extra_t = _world(late_c, late_t)
    for k, c in enumerate(extra_c):
        c["contact_id"] = f"late{k}"
        c["recorded_at"] = max(c["recorded_at"], t)  # recorded on or after the as-of date...
        if k % 2 == 0:
            c["occurred_at"] = t - timedelta(days=3)  # ...even when it happened before it
    for k, g in enumerate(extra_t):
        g["tag_id"] = f"late{k}"
        g["recorded_at"] = max(g["recorded_at"], t)
    changed = [dict(c, service=data.draw(st.sampled_from(SERVICES)), status="attended")
               if c["recorded_at"] >= t else c for c in contacts]
    after = _snapshots(persons, changed + extra_c, tags + extra_t)
    assert before.keys() == after.keys()
    for pid in before:
        for col in CAT.columns:
            assert _same(before[pid][col], after[pid][col]), (pid, col)


def test_a_rise_is_dated_from_its_start():
    """A person with a GP appointment every fortnight who then comes weekly for 5 weeks; people
    with no contacts have no rise (blank, not week 1: the rise detector's input is blank for them)."""
    persons = _persons()
    t = datetime(AS_OF.year, AS_OF.month, AS_OF.day)
    days = list(range(45, 365, 14)) + [2, 9, 16, 23, 30]
    contacts = [{"contact_id": f"c{k}", "person_id": "p0", "team_id": "T01",
                 "occurred_at": t - timedelta(days=d), "recorded_at": t - timedelta(days=d) + timedelta(hours=2),
                 "service": "gp_appointment", "status": "attended", "source_system": "gp",
                 "professional_id": "g1" if k % 4 else "g2"} for k, d in enumerate(days)]
    got = _assert_matches_reference(persons, contacts, [])
    assert got["p0"]["weeks_since_first_rise"] == 5
    assert [got[p]["weeks_since_first_rise"] for p in ("p1", "p2", "p3")] == [None, None, None]
    assert got["p0"]["contacts_excess_30d"] > 0
    assert 0.7 < got["p0"]["gp_upc_365d"] < 0.8


@pytest.mark.parametrize("gap, flags", [
    ((20, 80), (1, 1)),  # AS_OF 2026-03-02: January 2026 quiet, within the last three months
    ((200, 260), (0, 1)),  # June and July 2025 quiet: within the year only
])
def test_a_team_whose_feed_goes_quiet_is_flagged(gap, flags):
    """Team T02's social care records stop for two months; T01's carry on."""
    persons = [{"person_id": f"q{k}", "birth_year": 1950, "sex": "female", "imd_decile": 4,
                "ethnicity_group": "White", "opted_out": False, "died_on": None,
                "team_id": "T01" if k % 2 else "T02", "registered_on": date(2020, 1, 1)} for k in range(10)]
    t = datetime(AS_OF.year, AS_OF.month, AS_OF.day)
    contacts = []
    for d in range(1, 400):
        for p in persons:
            if d % 3 == 0 and not (p["team_id"] == "T02" and gap[0] <= d < gap[1]):
                when = t - timedelta(days=d, hours=-9)
                contacts.append({"contact_id": f"c{len(contacts)}", "person_id": p["person_id"],
                                 "team_id": p["team_id"], "occurred_at": when,
                                 "recorded_at": when + timedelta(days=2), "service": "social_care_contact",
                                 "status": "attended", "source_system": "social_care",
                                 "professional_id": None})
    got = _assert_matches_reference(persons, contacts, [])
    got_flags = {p["team_id"]: (got[p["person_id"]]["team_feed_gap_3m"], got[p["person_id"]]["team_feed_gap_12m"])
                 for p in persons}
    assert got_flags == {"T01": (0, 0), "T02": flags}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contact_st, max_size=40), st.lists(tag_st, max_size=12), st.lists(burst_st, max_size=3),
       st.sampled_from([(0, 1, 2, 3, 4, 5), (0, 1, 5, 30), (0, 2, 4, 6, 8, 10, 12)]))
def test_snapshots_for_many_dates_equal_snapshots_one_date_at_a_time(contacts_in, tags_in, bursts, weeks):
    """Weekly dates slide counts from one date to the next; every date must match one computed alone."""
    persons, contacts, tags = _world(contacts_in, tags_in, bursts)
    dates = [AS_OF - timedelta(weeks=k) for k in weeks]
    many = _snapshots_at(persons, contacts, tags, dates)
    assert {d for _, d in many} == set(dates)
    for d in dates:
        for pid, row in _snapshots(persons, contacts, tags, d).items():
            for col in CAT.columns:
                assert _same(row[col], many[(pid, d)][col]), (pid, d, col, row[col], many[(pid, d)][col])



@pytest.fixture
def own_copy(ingested, tmp_path):
    """The ingested world's config and warehouse, copied for a test that writes snapshots."""
    from wobble.core.config import load_config

    cfg0, _ = ingested
    (tmp_path / "world").symlink_to((cfg0.root / "world").resolve())
    shutil.copy(cfg0.root / "wobble.toml", tmp_path / "wobble.toml")
    shutil.copy(cfg0.warehouse, tmp_path / cfg0.warehouse.name)
    return load_config(tmp_path / "wobble.toml")


@pytest.mark.parametrize("batch_rows, passes", [
    (100_000, 1),  # about 19,000 people × 3 dates: everyone in one pass
    (40_000, 2),   # people in two groups, each with every date
    (8_000, 8),    # … in eight
])
def test_building_in_passes_equals_one_query(own_copy, monkeypatch, batch_rows, passes):
    """`build_features` takes people in groups when people × dates is large, and runs each
    pass block by block; the snapshots it writes must equal one query over everyone."""
    from polars.testing import assert_frame_equal

    from wobble.core.warehouse import connect
    from wobble.features import build as features

    cfg = own_copy
    dates = weekly_as_ofs(cfg.wobble.as_of, 3)
    monkeypatch.setattr(features, "BATCH_ROWS", batch_rows)
    result = features.build_features(cfg, dates)
    assert result.batches == passes
    with connect(cfg.warehouse) as con:
        built = con.sql("SELECT * FROM feature_snapshots ORDER BY as_of, person_id").pl()
        whole = features.compute_snapshots(con, CAT, dates)
    assert built.height == whole.height == result.rows > 0
    assert_frame_equal(built, whole.select(built.columns), rel_tol=0, abs_tol=1e-9)


def test_building_other_dates_later_keeps_the_snapshots_already_built(own_copy):
    """A training run's dates, then a weekly date: the first dates' rows stay. (Counts slid over
    several dates once came out HUGEINT rather than BIGINT, and the table, its types changed,
    was rebuilt empty.)"""
    from wobble.core.warehouse import connect
    from wobble.features import build as features

    cfg = own_copy
    earlier = weekly_as_ofs(cfg.wobble.as_of - timedelta(weeks=8), 3)
    first = features.build_features(cfg, earlier)
    later = features.build_features(cfg, [cfg.wobble.as_of])
    with connect(cfg.warehouse) as con:
        held = dict(con.execute("SELECT as_of, count(*) FROM feature_snapshots GROUP BY 1").fetchall())
    assert set(held) == {*earlier, cfg.wobble.as_of}
    assert sum(held[d] for d in earlier) == first.rows and held[cfg.wobble.as_of] == later.rows


@pytest.mark.parametrize("batch_rows", [100_000, 2_000])  # one pass; passes over window tables
def test_building_for_some_people_gives_exactly_their_rows_of_the_whole(own_copy, monkeypatch, batch_rows):
    """`people` (as training's held-out test people) keeps only those people's rows, each
    identical to the same row built for everyone (team-wide features included)."""
    from polars.testing import assert_frame_equal

    from wobble.core.warehouse import connect
    from wobble.features import build as features

    cfg = own_copy
    dates = weekly_as_ofs(cfg.wobble.as_of, 2)
    some = "('0x' || substr(person_id, 1, 8))::UBIGINT / 4294967296.0 < 0.2"
    monkeypatch.setattr(features, "BATCH_ROWS", batch_rows)
    result = features.build_features(cfg, dates, people=some)
    assert (result.batches > 1) == (batch_rows < 10_000)
    with connect(cfg.warehouse) as con:
        built = con.sql("SELECT * FROM feature_snapshots ORDER BY as_of, person_id").pl()
        whole = con.sql(f"SELECT * FROM ({compile_sql(CAT, dates, features.source_systems(con))}) "
                        f"WHERE {some} ORDER BY as_of, person_id").pl()
        everyone = con.execute(f"SELECT count(*) FROM ({cohort_sql(sql_dates(dates))})").fetchone()[0]
    assert built.height == whole.height == result.rows
    assert 0.1 * everyone < built.height < 0.3 * everyone
    assert_frame_equal(built, whole.select(built.columns), rel_tol=0, abs_tol=1e-9)


def test_a_pass_that_fails_leaves_the_snapshots_as_they_were(own_copy, monkeypatch):
    """The passes stream into one transaction: when a later pass fails, the rows earlier passes
    inserted and the old rows they replace are as before the run."""
    from wobble.core.warehouse import connect
    from wobble.features import build as features

    cfg = own_copy
    dates = weekly_as_ofs(cfg.wobble.as_of, 3)
    features.build_features(cfg, dates)
    with connect(cfg.warehouse) as con:
        before = con.sql("SELECT * FROM feature_snapshots ORDER BY as_of, person_id").pl()
    run_pass, done = features._run_pass, []

    def fail_third(work, con, steps, timings):
        if len(done) == 2:
            raise RuntimeError("killed mid-run")
        run_pass(work, con, steps, timings)
        done.append(1)

    monkeypatch.setattr(features, "BATCH_ROWS", 8_000)
    monkeypatch.setattr(features, "_run_pass", fail_third)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        features.build_features(cfg, dates)
    with connect(cfg.warehouse) as con:
        after = con.sql("SELECT * FROM feature_snapshots ORDER BY as_of, person_id").pl()
    assert len(done) == 2 and after.equals(before)


# --- the catalogue -------------------------------------------------------------------------------

def test_catalogue_loads_and_describes_every_column():
    assert len(CAT.features) >= 130
    families = {f.family for f in CAT.features}
    assert families == {"services", "trajectory", "change", "recency", "missed", "crisis", "continuity",
                        "breadth", "tags", "demographics", "completeness"}
    for f in CAT.features:
        assert f.description and "{" not in f.description, f.column
    assert not CAT.get("ethnicity_group").predictor
    assert not CAT.get("age_band").predictor
    assert CAT.get("gp_coc_365d").source == "derived"


def test_generated_catalogue_file_is_current():
    path = Path(__file__).resolve().parents[1] / "docs" / "features.md"
    assert path.read_text(encoding="utf-8") == catalogue_markdown(CAT) + "\n", (
        "docs/features.md is stale: run `wobble features list --markdown > docs/features.md`")


HEAD = "family: x\ndescription: d\nfeatures:\n  - "


@pytest.mark.parametrize("feature, message", [
    ("{name: contacts, source: contacts, description: d, aggregate: 'count(*)', windows: [30d]}",
     "already declared"),
    ("{name: a, source: visits, description: d, aggregate: 'count(*)'}", "unknown source"),
    ("{name: a, source: contacts, description: d, aggregate: 'count(*)', where: \"colour = 'red'\"}",
     "unknown column"),
    ("{name: a, source: contacts, description: d, aggregate: 'sum(colour)'}", "unknown column"),
    ("{name: a, source: contacts, description: d, aggregate: 'count(*)', windows: [3 weeks]}",
     "cannot parse window"),
    ("{name: a, source: contacts, description: d, aggregate: 'median(days_before)'}",
     "cannot compile aggregate"),
    ("{name: a, source: contacts, description: d, aggregate: 'slope(count(*))', windows: [100d]}",
     "whole 30-day periods"),
])
def test_catalogue_errors_are_loud(tmp_path, feature, message):
    for p in PACKAGED_FEATURES.glob("*.yml"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "zz_extra.yml").write_text(HEAD + feature + "\n")
    with pytest.raises(ConfigError, match=message):
        load_catalogue(tmp_path)
