"""The early-warning target and cohort (`wobble.models.cohort`, `models/early_warning_90d.yml`) against
slow Python references on the tiny world, and the list grading (`wobble.models.grading`) on frames
small enough to work out by hand."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache

import duckdb
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import poisson

from wobble.core.config import PACKAGED_MODELS, load_config
from wobble.core.vocab import CRISIS_SERVICES, SERVICES
from wobble.core.warehouse import connect
from wobble.models.cohort import eligible_sql, label_sql, poisson_tail_sql
from wobble.models.grading import BURN_IN_WEEKS, burn_in, figures, listed, truth_score
from wobble.models.spec import Measure, load_spec, timesplit

AS_OFS = [date(2026, 3, 2), date(2026, 8, 24)]


@pytest.fixture(scope="module")
def spec():
    return load_spec(PACKAGED_MODELS, "early_warning_90d")


@pytest.fixture(scope="module")
def two_measures(spec):
    """The shipped spec watching routine contacts too, as it did before it watched concerns only: the
    label code serves any measures a site declares, so the reference checks a contacts measure as well."""
    contacts = Measure(source="contacts", statuses=["attended"], min_count=3, prior_count=0.5)
    t = spec.target
    return spec.model_copy(update={"target": t.model_copy(update={"measures": [contacts, *t.measures]})})


# --- P(X >= n) for a Poisson count -----------------------------------------------------------------


@cache
def _memory() -> duckdb.DuckDBPyConnection:
    return duckdb.connect()


def tails(pairs: list[tuple[int, float]]) -> list[float]:
    """poisson_tail_sql evaluated by DuckDB for each (n, rate)."""
    ns, rates = [n for n, _ in pairs], [r for _, r in pairs]
    return [v for (v,) in _memory().execute(
        f"SELECT {poisson_tail_sql('n', 'rate')} FROM (SELECT unnest(?::BIGINT[]) AS n, "
        "unnest(?::DOUBLE[]) AS rate, unnest(range(len(?::BIGINT[]))) AS i) ORDER BY i",
        [ns, rates, ns]).fetchall()]


def test_poisson_tail_over_a_grid():
    pairs = [(n, r) for n in range(61) for r in (0.01, 0.1, 0.5, 1.0, 2.5, 3.8, 7.0, 15.0, 25.0, 40.0)]
    got = tails(pairs)
    for (n, r), v in zip(pairs, got, strict=True):
        assert v == pytest.approx(poisson.sf(n - 1, r), abs=1e-9), (n, r)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.floats(0.01, 40.0)), min_size=1, max_size=20))
def test_poisson_tail_property(pairs):
    for (n, r), v in zip(pairs, tails(pairs), strict=True):
        assert v == pytest.approx(poisson.sf(n - 1, r), abs=1e-9), (n, r)


def test_poisson_tail_of_nothing_is_one_and_the_worked_example():
    assert tails([(0, 3.8), (-1, 3.8), (-5, 0.2), (0, 40.0)]) == [1.0] * 4
    # the docstrings: n 10, rate 3.8: 0.006; 9: 0.016. With 11 usual contacts the rate is
    # (11 + 0.5) × 90 / 275 = 3.76: 10 or more is significant at 0.01, 9 is not.
    assert [round(v, 3) for v in tails([(10, 3.8), (9, 3.8)])] == [0.006, 0.016]
    rate = (11 + 0.5) * 90 / 275
    ten, nine = tails([(10, rate), (9, rate)])
    assert ten < 0.01 <= nine


# --- the rise label and the cohort on the tiny world -----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_world, spec, two_measures):
    """(rows, reference, disagreements, eligible frame, persons, contacts) on the tiny world: 300
    people and one who is not there, at two Mondays."""
    cfg = load_config(tiny_world / "wobble.toml")
    with connect(cfg.warehouse, read_only=True) as con:
        ids = con.sql("SELECT person_id FROM persons ORDER BY person_id").pl()["person_id"].to_list()
        pick = sorted(np.random.default_rng(1).choice(ids, 300, replace=False).tolist()) + ["nobody-at-all"]
        rows = pl.DataFrame({"person_id": pick * len(AS_OFS), "as_of": [d for d in AS_OFS for _ in pick]})
        con.register("_rows", rows)
        people = con.sql("SELECT * FROM persons WHERE person_id IN (SELECT person_id FROM _rows)").pl()
        contacts = con.sql("SELECT * FROM contacts WHERE person_id IN (SELECT person_id FROM _rows)").pl()
        tags = con.sql("SELECT * FROM tags WHERE person_id IN (SELECT person_id FROM _rows)").pl()
        expected, wrong = _disagreements(con, two_measures, rows, contacts, tags, max_levels=12)
        eligible = con.sql(f"SELECT r.person_id, r.as_of, {eligible_sql(spec, 'r.as_of')} AS eligible "
                           "FROM _rows r JOIN persons p USING (person_id)").pl()
    return rows, expected, wrong, eligible, people, contacts


def _by_person(frame: pl.DataFrame) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in frame.iter_rows(named=True):
        out.setdefault(r["person_id"], []).append(r)
    return out


def slow_chances(spec, rows, contacts, tags) -> dict[tuple[str, date], list[tuple[int, float]]]:
    """Per row and measure: how many in [as_of, as_of + 90 d), and the chance of that many or more
    at the usual rate: the count over [as_of − 365 d, as_of − 90 d) (days 91 to 365 before) plus
    prior_count, scaled from 275 days to 90. Routine contacts: attended, any service but the crisis
    services, by when they happened; concerns: tags of that polarity, by when they were recorded."""
    t = spec.target
    first, last = t.usual_days  # 91, 365
    events = []
    for m in t.measures:
        if m.source == "contacts":
            services = m.services or [s for s in SERVICES if s not in CRISIS_SERVICES]
            kept = contacts.filter(pl.col("status").is_in(m.statuses) & pl.col("service").is_in(services))
            events.append((_by_person(kept), "occurred_at", m))
        else:
            events.append((_by_person(tags.filter(pl.col("polarity") == m.polarity)), "recorded_at", m))
    out = {}
    for person, as_of in rows.iter_rows():
        start = datetime.combine(as_of, datetime.min.time())
        out[(person, as_of)] = []
        for by_person, when, m in events:
            after = usual = 0
            for e in by_person.get(person, []):
                if start <= e[when] < start + timedelta(days=t.horizon_days):
                    after += 1
                elif start - timedelta(days=last) <= e[when] < start - timedelta(days=first - 1):
                    usual += 1
            rate = (usual + m.prior_count) * t.horizon_days / (last - first + 1)
            out[(person, as_of)].append((after, float(poisson.sf(after - 1, rate))))
    return out


def _with(spec, measure: int | None = None, significance: float | None = None):
    """The spec watching only one of its measures, or at another significance."""
    t = spec.target
    update = {"measures": [t.measures[measure]] if measure is not None else t.measures,
              "significance": significance if significance is not None else t.significance}
    return spec.model_copy(update={"target": t.model_copy(update=update)})


def _labels(con, spec) -> dict[tuple[str, date], int]:
    return {(p, a): v for p, a, v in con.sql(label_sql(spec, "_rows")).fetchall()}


def _disagreements(con, spec, rows, contacts, tags, max_levels: int | None = None) -> tuple[dict, list]:
    """The reference's labels at the spec's significance, and every disagreement of label_sql with
    the reference: at that significance for the spec (any measure) and each measure alone, and, per
    measure, at significance levels just above and just below rows' own chances (the label turns
    on exactly where a row's chance falls below the level: a count off by one moves it)."""
    t = spec.target
    chances = slow_chances(spec, rows, contacts, tags)
    enough = {k: [after >= m.min_count for (after, _), m in zip(v, t.measures, strict=True)]
              for k, v in chances.items()}
    expected = {k: tuple(e and c < t.significance for e, (_, c) in zip(enough[k], v, strict=True))
                for k, v in chances.items()}
    got = _labels(con, spec)
    assert got.keys() == expected.keys()
    wrong = [("any", k, got[k], chances[k]) for k in got if bool(got[k]) != any(expected[k])]
    for i in range(len(t.measures)):
        own = sorted({v[i][1] for k, v in chances.items() if enough[k][i] and 1e-6 < v[i][1] < 0.5})
        if max_levels and len(own) > max_levels:
            own = [own[j] for j in np.linspace(0, len(own) - 1, max_levels).round().astype(int)]
        for level in [t.significance] + [c + d for c in own for d in (-1e-7, 1e-7)]:
            at = _labels(con, _with(spec, i, level))
            wrong += [(i, level, k, at[k], chances[k]) for k in at
                      if abs(chances[k][i][1] - level) > 1e-8
                      and bool(at[k]) != (enough[k][i] and chances[k][i][1] < level)]
    return expected, wrong


def test_the_spec_is_the_one_the_reference_reads(spec, two_measures):
    t = spec.target
    assert (t.kind, t.horizon_days, tuple(t.usual_days), t.significance) == ("rise", 90, (91, 365), 0.01)
    assert [(m.source, m.polarity, m.min_count, m.prior_count) for m in t.measures] == [("tags", "concern", 2, 0.25)]
    assert t.outcome_phrase == "concerns rising well above their usual"
    both = two_measures.target.measures
    assert [(m.source, m.min_count, m.prior_count) for m in both] == [("contacts", 3, 0.5), ("tags", 2, 0.25)]
    assert both[0].services is None and both[0].statuses == ["attended"]
    c = spec.cohort
    assert (c.min_age, c.max_age, c.no_crisis_days, c.min_registered_days) == (18, 120, 90, 365)


def test_rise_label_matches_a_slow_reference_on_the_tiny_world(tiny):
    rows, expected, wrong, *_ = tiny
    assert len(expected) == rows.height
    assert not wrong, wrong[:5]
    positives = sum(any(v) for v in expected.values())
    assert 5 <= positives <= 0.3 * rows.height
    assert any(v[0] for v in expected.values()) and any(v[1] for v in expected.values())  # both measures fire
    assert not any(expected[("nobody-at-all", AS_OFS[0])])


# Moments relative to the as-of date's midnight where a window starts or ends.
DAY, SEC = timedelta(days=1), timedelta(seconds=1)
EDGES = [-365 * DAY, -365 * DAY - SEC, -365 * DAY + SEC, -90 * DAY, -90 * DAY - SEC, -91 * DAY, -SEC,
         timedelta(0), 90 * DAY - SEC, 90 * DAY]
moment = st.one_of(st.sampled_from(EDGES), st.integers(0, 90 * 86400 - 1).map(lambda s: timedelta(seconds=s)),
                   st.integers(-400 * 86400, 100 * 86400).map(lambda s: timedelta(seconds=s)))
contact = st.tuples(moment, st.sampled_from(["gp_appointment", "community_nursing", "housing_contact",
                                             "ae_attendance", "mental_health_crisis"]),
                    st.sampled_from(["attended", "attended", "did_not_attend", "cancelled"]))
tag = st.tuples(moment, st.sampled_from(["concern", "concern", "strength"]))


@settings(max_examples=40, deadline=None)
@given(people=st.lists(st.tuples(st.sampled_from(AS_OFS), st.lists(contact, max_size=30), st.lists(tag, max_size=10)),
                       min_size=1, max_size=4))
def test_rise_label_matches_a_slow_reference_at_the_window_edges(two_measures, people):
    rows, contacts, tags = [], [], []
    for i, (as_of, cs, ts) in enumerate(people):
        midnight = datetime.combine(as_of, datetime.min.time())
        rows.append((f"p{i}", as_of))
        contacts += [(f"p{i}", midnight + dt, service, status) for dt, service, status in cs]
        tags += [(f"p{i}", midnight + dt, polarity) for dt, polarity in ts]
    rows = pl.DataFrame(rows, schema={"person_id": pl.String, "as_of": pl.Date}, orient="row")
    contacts = pl.DataFrame(contacts, schema={"person_id": pl.String, "occurred_at": pl.Datetime("us"),
                                              "service": pl.String, "status": pl.String}, orient="row")
    tags = pl.DataFrame(tags, schema={"person_id": pl.String, "recorded_at": pl.Datetime("us"),
                                      "polarity": pl.String}, orient="row")
    with duckdb.connect() as con:
        for name, frame in (("_rows", rows), ("contacts", contacts), ("tags", tags)):
            con.register(f"_{name}_frame", frame)
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _{name}_frame")
        _, wrong = _disagreements(con, two_measures, rows, contacts, tags)
    assert not wrong, wrong[:5]


def test_eligible_matches_a_slow_reference(tiny):
    rows, _, _, eligible, people, contacts = tiny
    person = {r["person_id"]: r for r in people.iter_rows(named=True)}
    crises = _by_person(contacts.filter(pl.col("service").is_in(list(CRISIS_SERVICES))))
    expected = {}
    for pid, as_of in rows.iter_rows():
        if pid not in person:
            continue
        p, start = person[pid], datetime.combine(as_of, datetime.min.time())
        adult = p["birth_year"] is not None and 18 <= as_of.year - p["birth_year"] <= 120
        registered = p["registered_on"] is None or p["registered_on"] <= as_of - timedelta(days=365)
        recent = any(start - timedelta(days=90) <= c["occurred_at"] < start and c["recorded_at"] < start
                     for c in crises.get(pid, []))
        expected[(pid, as_of)] = adult and registered and not recent
    got = {(p, a): bool(v) for p, a, v in eligible.select("person_id", "as_of", "eligible").iter_rows()}
    assert got == expected
    assert 0.3 < sum(expected.values()) / len(expected) < 0.95  # some in, some out


def test_eligible_at_its_edges(spec):
    """Hand-placed people at 2026-08-24 beside what the cohort's rule says of each."""
    as_of = AS_OFS[1]
    midnight = datetime.combine(as_of, datetime.min.time())
    year, reg = as_of.year, as_of - timedelta(days=365)
    crisis_90 = midnight - timedelta(days=90)
    people = [  # person, birth year, registered on, crisis contacts (occurred, recorded, service), eligible
        ("age18", year - 18, reg, [], True),
        ("age17", year - 17, reg, [], False),
        ("age120", year - 120, reg, [], True),
        ("age121", year - 121, reg, [], False),
        ("no_birth_year", None, reg, [], False),
        ("reg_year", year - 40, reg, [], True),
        ("reg_short", year - 40, reg + timedelta(days=1), [], False),
        ("reg_unknown", year - 40, None, [], True),
        ("crisis_90d", year - 40, reg, [(crisis_90, crisis_90, "ae_attendance")], False),
        ("crisis_91d", year - 40, reg, [(crisis_90 - SEC, crisis_90, "ae_attendance")], True),
        ("crisis_yesterday", year - 40, reg, [(midnight - SEC, midnight - SEC, "mental_health_crisis")], False),
        ("crisis_not_known", year - 40, reg, [(midnight - DAY, midnight, "emergency_admission")], True),
        ("crisis_today", year - 40, reg, [(midnight, midnight, "ambulance_callout")], True),
        ("crisis_today_booked", year - 40, reg, [(midnight, midnight - SEC, "ambulance_callout")], True),
        ("routine", year - 40, reg, [(midnight - DAY, midnight - DAY, "gp_appointment")], True),
    ]
    persons = pl.DataFrame([(p, b, r) for p, b, r, _, _ in people], orient="row",
                           schema={"person_id": pl.String, "birth_year": pl.Int16, "registered_on": pl.Date})
    contacts = pl.DataFrame([(p, o, r, s) for p, _, _, cs, _ in people for o, r, s in cs], orient="row",
                            schema={"person_id": pl.String, "occurred_at": pl.Datetime("us"),
                                    "recorded_at": pl.Datetime("us"), "service": pl.String})
    with duckdb.connect() as con:
        con.register("_persons", persons)
        con.register("_contacts", contacts)
        con.execute("CREATE TABLE persons AS SELECT * FROM _persons")
        con.execute("CREATE TABLE contacts AS SELECT * FROM _contacts")
        when = f"DATE '{as_of}'"
        got = dict(con.sql(f"SELECT person_id, coalesce({eligible_sql(spec, when)}, false) FROM persons p").fetchall())
    assert got == {p: e for p, _, _, _, e in people}


# --- grading lists ---------------------------------------------------------------------------------

B, G1, G2 = date(2026, 5, 25), date(2026, 6, 1), date(2026, 6, 8)  # one burn-in date, two graded dates
PEOPLE = ["A", "B", "C", "D", "E", "F", "G"]


def _day(d: date, days: int) -> date:
    return d + timedelta(days=days)


@pytest.fixture
def graded_frame():
    """Seven people at three dates. The model lists A (burn-in, G1), B (G1, G2), C, E, F (G2) and D
    (burn-in only); another list takes A and G at G1 and G at G2; a third takes nobody."""
    flags = {  # (crisis_30d, crisis_90d, crisis_next) where not all false
        ("A", G1): (True, True, False), ("B", G1): (False, False, True), ("B", G2): (True, True, True),
        ("C", G2): (False, True, True), ("F", G2): (False, False, True),
        ("D", B): (True, True, True), ("G", G1): (True, True, True), ("G", G2): (False, False, False),
    }
    keys = [(p, d) for d in (B, G1, G2) for p in PEOPLE]
    rows = pl.DataFrame({
        "person_id": [p for p, _ in keys], "as_of": [d for _, d in keys], "team_id": ["T1"] * len(keys),
        "team_cohort": [len(PEOPLE)] * len(keys),
        "crisis_30d": [flags.get(k, (False,) * 3)[0] for k in keys],
        "crisis_90d": [flags.get(k, (False,) * 3)[1] for k in keys],
        "crisis_next": [flags.get(k, (False,) * 3)[2] for k in keys],
    })
    model = {("A", B), ("A", G1), ("B", G1), ("B", G2), ("C", G2), ("E", G2), ("F", G2), ("D", B)}
    other = {("A", G1), ("G", G1), ("G", G2)}
    lists = {"model": np.array([k in model for k in keys]), "other": np.array([k in other for k in keys]),
             "empty": np.zeros(len(keys), bool)}
    truth = pl.DataFrame({
        "person_id": ["A", "B", "B", "C", "E", "G", "G"], "as_of": [G1, G1, G2, G2, G2, G1, G2],
        "phase": ["rising", "rising", "in_crisis", "steady", "rising", "rising", "rising"],
        "excess": [0.5, 0.4, 1.0, 0.0, 0.3, 0.2, 0.2],
    })  # F at G2 has no truth row: not rising
    crises = pl.DataFrame({
        "person_id": ["A", "B", "B", "B", "C", "E", "F", "D", "G"],
        "day": [_day(G1, 5), _day(G1, -3), _day(G1, 10), _day(G1, 40), G2, _day(G2, 90), _day(G2, 89), _day(B, 3),
                _day(G1, 1)],
    })
    graded = rows["as_of"].is_in([G1, G2]).to_numpy()
    return rows, lists, truth, crises, graded


def _value(fig: dict, name: str) -> float | None:
    v = fig[name]
    if v["value"] is not None and v["low"] is not None:
        assert v["low"] - 1e-12 <= v["value"] <= v["high"] + 1e-12
    return v["value"]


def test_figures_are_the_shares_worked_out_by_hand(graded_frame):
    rows, lists, truth, crises, graded = graded_frame
    out = figures(rows, lists, truth, crises, graded, replicates=50, seed=0)
    m = out["model"]
    # graded rows listed: A@G1, B@G1, B@G2, C@G2, E@G2, F@G2 (A and D at the burn-in date are not graded)
    assert (m["rows"], m["people"]) == (6, 5)
    assert _value(m, "crisis_contact_30d") == pytest.approx(2 / 6)  # A@G1, B@G2
    assert _value(m, "precision_crisis_90d") == pytest.approx(4 / 6)  # B@G1, B@G2, C@G2, F@G2
    # not in crisis care (no crisis contact in the 90 days before): B@G1, E@G2, F@G2, of whom B and F
    assert _value(m, "precision_crisis_90d_not_in_crisis_care") == pytest.approx(2 / 3)
    assert _value(m, "rising") == pytest.approx(3 / 6)  # A@G1, B@G1, E@G2
    assert _value(m, "in_crisis") == pytest.approx(1 / 6)  # B@G2

    o = out["other"]
    assert (o["rows"], o["people"]) == (3, 2)
    assert _value(o, "crisis_contact_30d") == pytest.approx(2 / 3)  # A@G1, G@G1
    assert _value(o, "precision_crisis_90d_not_in_crisis_care") == pytest.approx(0.0)  # only G@G2 is calm
    assert _value(o, "rising") == pytest.approx(1.0)

    e = out["empty"]
    assert (e["rows"], e["people"]) == (0, 0)
    assert e["precision_crisis_90d"]["value"] is None
    assert e["lead_days"] == {"value": None, "low": None, "high": None, "people": 0}


def test_lead_time_counts_people_first_listed_at_a_graded_date(graded_frame):
    rows, lists, truth, crises, graded = graded_frame
    out = figures(rows, lists, truth, crises, graded, replicates=50, seed=0)
    # model: A first listed in the burn-in (not counted); D listed in the burn-in only; B from G1 (its
    # crisis 3 days before is not after, the first after is 10 days on; from G2 it would be 3); C the
    # day it was listed (0); E 90 days on (outside); F 89 days on. Leads 0, 10, 89: median 10.
    lead = out["model"]["lead_days"]
    assert lead["people"] == 3
    assert lead["value"] == 10
    assert 0 <= lead["low"] <= lead["high"] <= 89
    # the other list: A first listed at G1 here (5 days), G at G1 (1 day): the lower median, 1
    lead = out["other"]["lead_days"]
    assert (lead["people"], lead["value"]) == (2, 1)


def test_lead_time_with_no_burn_in_listing_counts_everyone_listed(graded_frame):
    rows, lists, truth, crises, graded = graded_frame
    model = lists["model"] & graded  # A now first listed at G1: 5 days
    out = figures(rows, {"model": model}, None, crises, graded, replicates=20, seed=0)
    assert (out["model"]["lead_days"]["people"], out["model"]["lead_days"]["value"]) == (4, 5)
    assert "rising" not in out["model"]  # no truth, no truth figures


def test_truth_score_puts_rising_people_first_by_excess():
    rows = pl.DataFrame({"person_id": ["P1", "P2", "P3", "P4", "P5", "P6"], "as_of": [G1] * 6,
                         "team_id": ["T1"] * 6, "team_cohort": [6] * 6})
    truth = pl.DataFrame({
        "person_id": ["P1", "P2", "P3", "P4", "P6", "P5"], "as_of": [G1, G1, G1, G1, G1, G2],
        "phase": ["rising", "rising", "steady", "recovering", "rising", "rising"],
        "excess": [0.3, 0.25, 2.0, -0.2, 0.9, 9.0],
    })  # P4 is below usual after a crisis; P5's truth is for another date (none); P6 is not allowed
    allowed = np.array([True, True, True, True, True, False])
    score = truth_score(rows, truth, allowed)
    assert score[5] == -np.inf
    assert np.isfinite(score[:5]).all()
    order = [rows["person_id"][int(i)] for i in np.argsort(-score[:5], kind="stable")]
    assert order == ["P1", "P2", "P3", "P4", "P5"]  # rising by excess, the rest by excess, no truth last
    assert list(listed(rows, score, 2)) == [True, True, False, False, False, False]
    assert list(listed(rows, score, 10)) == [True] * 5 + [False]  # never a −inf row, whatever the capacity


def test_burn_in_is_the_eight_mondays_before_the_test_period(spec):
    split = timesplit(spec.schedule, spec.target.horizon_days, date(2026, 11, 23))
    assert split.test[0] == date(2026, 6, 1)
    got = burn_in(split)
    assert BURN_IN_WEEKS == 8
    assert got == [date(2026, 4, 6), date(2026, 4, 13), date(2026, 4, 20), date(2026, 4, 27), date(2026, 5, 4),
                   date(2026, 5, 11), date(2026, 5, 18), date(2026, 5, 25)]
    assert all(d.weekday() == 0 for d in got)
    assert not set(got) & set(split.test) and not set(got) & set(split.train)


def test_days_into_the_rise_at_first_listing(graded_frame):
    rows, lists, truth, crises, graded = graded_frame
    since = {("A", G1): _day(G1, -35), ("B", G1): _day(G1, -14), ("E", G2): G2, ("G", G1): _day(G1, -7),
             ("G", G2): _day(G1, -7)}  # only for rows rising; B is in crisis at G2
    truth = truth.with_columns(pl.Series("rising_since", [since.get(k) for k in truth.select(
        "person_id", "as_of").iter_rows()], dtype=pl.Date))
    out = figures(rows, lists, truth, crises, graded, replicates=50, seed=0)
    # model: first listed at a graded date B@G1 (14 days into the rise), C@G2 (steady: not counted),
    # E@G2 (0: the first list after the rise began), F@G2 (no truth); A was first listed in the
    # burn-in, so its 35 days at G1 do not count. Over B and E, the lower median: 0.
    d = out["model"]["days_into_rise"]
    assert (d["people"], d["value"]) == (2, 0)
    assert 0 <= d["low"] <= d["high"] <= 14
    # the other list: A first listed at G1 (35 days in), G at G1 (7): the lower median, 7
    d = out["other"]["days_into_rise"]
    assert (d["people"], d["value"]) == (2, 7)
    assert out["empty"]["days_into_rise"]["people"] == 0
    assert "days_into_rise" not in figures(rows, lists, truth.drop("rising_since"), crises, graded,
                                           replicates=5, seed=0)["model"]


def test_the_run_summary_holds_each_lists_figures(graded_frame):
    from wobble.models.train import flat_metrics

    rows, lists, truth, crises, graded = graded_frame
    figs = figures(rows, lists, truth, crises, graded, replicates=20, seed=0)
    est = {"value": 0.7, "low": 0.6, "high": 0.8}
    evaluation = {"scorers": {"model": {"auroc": est}}, "differences": {}, "prevalence": 0.1,
                  "training": {"best_iteration": 12}, "lists": {"lists": figs}}
    flat = flat_metrics(evaluation)
    assert flat["auroc"] == 0.7 and flat["auroc_low"] == 0.6
    m = figs["model"]
    assert flat["list_model_rows"] == 6 and flat["list_model_people"] == 5
    assert flat["list_model_rising"] == m["rising"]["value"] == pytest.approx(0.5)
    assert (flat["list_model_rising_low"], flat["list_model_rising_high"]) == (m["rising"]["low"], m["rising"]["high"])
    assert flat["list_model_crisis_contact_30d"] == pytest.approx(2 / 6)
    assert (flat["list_model_lead_days"], flat["list_model_lead_days_people"]) == (10, 3)
    assert flat["list_other_in_crisis"] == figs["other"]["in_crisis"]["value"]
    assert "list_empty_precision_crisis_90d" not in flat  # nothing listed: no figure, not a zero
    assert flat["list_empty_lead_days_people"] == 0
    assert all(isinstance(v, float | int) for v in flat.values())
