"""The synthetic world's hidden need phases (`wobble.synth.truth`) against slow, per-person per-week
references written from its docstring's rule, the worked example, the truth file a world writes,
and the reader that matches it to the warehouse's people (`wobble.models.truth.need_phases`)."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from conftest import TEST_KEY
from hypothesis import given, settings
from hypothesis import strategies as st

from wobble.synth.truth import PHASES, need_phases, theta, usual_need

# --- slow references, one person and one week at a time --------------------------------------------


def slow_usual_need(need: np.ndarray) -> np.ndarray:
    """Median of weeks w-52 .. w-5; in the first year weeks 0 .. w-5, and at least week 0."""
    n, weeks = need.shape
    out = np.empty_like(need)
    for i in range(n):
        for w in range(weeks):
            first, last = max(0, w - 52), max(0, w - 5)
            out[i, w] = np.median(need[i, first : last + 1])
    return out


def slow_phases(need: np.ndarray, baseline: np.ndarray, crises: np.ndarray, theta: float) -> list[list[str]]:
    """The docstring's rule, week by week, as names."""
    n, weeks = need.shape

    def crisis_in(i: int, w: int, back_from: int, back_to: int) -> bool:  # any in weeks w-back_to .. w-back_from
        return any(crises[i, v] > 0 for v in range(w - back_to, w - back_from + 1) if v >= 0)

    out = []
    for i in range(n):
        row = []
        for w in range(weeks):
            excess = need[i, w] - baseline[i, w]
            four_before = need[i, max(w - 4, 0)]  # weeks before 0 read as week 0
            peak = max(need[i, v] - baseline[i, v] for v in range(max(0, w - 25), w + 1))
            elevated = excess >= theta
            after_crisis = crisis_in(i, w, 4, 12)
            climbing = need[i, w] - four_before >= theta / 2
            rising = elevated and (climbing or (not after_crisis and excess >= 0.5 * peak))
            if crisis_in(i, w, 0, 3):
                row.append("in_crisis")
            elif rising:
                row.append("rising")
            elif elevated or after_crisis:
                row.append("recovering")
            else:
                row.append("steady")
        out.append(row)
    return out


def names(phase: np.ndarray) -> list[list[str]]:
    return [[PHASES[k] for k in row] for row in phase]


# --- usual need ------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), people=st.integers(1, 6), weeks=st.integers(1, 130),
       block=st.integers(1, 8), grid=st.booleans())
def test_usual_need_is_the_median_of_weeks_52_to_5_before(seed, people, weeks, block, grid):
    rng = np.random.default_rng(seed)
    need = rng.normal(0, 1, (people, weeks))
    if grid:  # many ties
        need = np.round(need * 2) / 2
    got = usual_need(need, block=block)
    np.testing.assert_array_equal(got, slow_usual_need(need))


def test_usual_need_in_float32_and_blocks_smaller_than_people():
    rng = np.random.default_rng(0)
    need = rng.normal(0, 1, (7, 70)).astype(np.float32)
    got = usual_need(need, block=3)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, slow_usual_need(need), rtol=0, atol=1e-6)
    # weeks 0 .. 5 all read week 0 alone; week 6 reads weeks 0 .. 1
    np.testing.assert_array_equal(got[:, :6], np.repeat(need[:, :1], 6, axis=1))
    np.testing.assert_allclose(got[:, 6], (need[:, 0] + need[:, 1]) / 2, rtol=1e-6)


def test_a_rise_now_never_lifts_its_own_baseline():
    need = np.zeros((1, 80))
    need[0, 70:] = 5.0
    got = usual_need(need)
    assert (got[0, :75] == 0).all()  # weeks 70 .. 74 are within w-4 .. w
    assert got[0, 75] == 0  # week 70 is the only high week of 48


# --- phases ----------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), people=st.integers(1, 4), weeks=st.integers(4, 70),
       crisis_rate=st.sampled_from([0.0, 0.02, 0.1, 0.3]), th=st.sampled_from([0.1, 0.2, 0.25, 0.5]),
       own_baseline=st.booleans())
def test_need_phases_follow_the_rule_week_by_week(seed, people, weeks, crisis_rate, th, own_baseline):
    rng = np.random.default_rng(seed)
    # a random walk on a 0.05 grid: rises, plateaus and falls, and many values exactly at the thresholds
    need = np.round(np.cumsum(rng.normal(0, 0.1, (people, weeks)), axis=1) * 20) / 20
    baseline = usual_need(need) if own_baseline else np.round(rng.normal(0, 0.2, (people, weeks)) * 20) / 20
    crises = rng.poisson(crisis_rate, (people, weeks)).astype(np.int32)
    got = need_phases(need, baseline, crises, th)
    assert got.shape == need.shape
    assert names(got) == slow_phases(need, baseline, crises, th)


@pytest.mark.parametrize("weeks", [1, 2, 3])
def test_need_phases_of_fewer_than_four_weeks(weeks):
    # Every week before week 4 compares with week 0, so a series shorter than the climb's four weeks
    # has phases too (first week steady; a crisis in crisis; 0.3 above usual at week 1 rising).
    need = np.array([[0.0, 0.3, 0.3][:weeks], [0.0, 0.0, 0.0][:weeks]])
    crises = np.zeros(need.shape, np.int32)
    crises[1, 0] = 1
    got = need_phases(need, np.zeros_like(need), crises, 0.2)
    assert names(got) == slow_phases(need, np.zeros_like(need), crises, 0.2)
    assert names(got)[1] == ["in_crisis"] * weeks


def test_docstring_worked_example():
    # θ 0.2, usual 0: eight quiet weeks, then 0.0, 0.1, 0.3, 0.5, 0.6 (weeks 8 .. 12), then falling
    # through 0.45 to 0.25 (week 14: below half of the 0.6 peak and not climbing), no crisis.
    series = [0.0] * 8 + [0.0, 0.1, 0.3, 0.5, 0.6, 0.45, 0.25, 0.25, 0.0]
    need = np.array([series])
    got = names(need_phases(need, np.zeros_like(need), np.zeros(need.shape, np.int32), 0.2))[0]
    assert got[:10] == ["steady"] * 10
    assert got[10:13] == ["rising"] * 3  # the last three of the five climbing weeks
    assert got[13] == "rising"  # 0.45: still above half of the peak
    assert got[14:16] == ["recovering"] * 2  # 0.25: fallen back half way, still at least θ above usual
    assert got[16] == "steady"


def test_a_crisis_ends_a_rising_phase_unless_need_climbs_again():
    # need climbs to 0.6 by week 12 and stays: rising (not fallen back) until a crisis at week 20;
    # in crisis weeks 20 .. 23, recovering weeks 24 .. 32 (a crisis in w-12 .. w-4), rising again
    # from week 33; a second person's need climbs again after the crisis: rising from week 24.
    flat = [0.0] * 8 + [0.0, 0.1, 0.3, 0.5] + [0.6] * 30
    climbs = [0.0] * 8 + [0.0, 0.1, 0.3, 0.5] + [0.6] * 12 + [1.0] * 18
    need = np.array([flat, climbs])
    crises = np.zeros(need.shape, np.int32)
    crises[:, 20] = 1
    got = names(need_phases(need, np.zeros_like(need), crises, 0.2))
    assert got[0][10:20] == ["rising"] * 10
    assert got[0][20:24] == ["in_crisis"] * 4
    assert got[0][24:33] == ["recovering"] * 9
    assert got[0][33:] == ["rising"] * (len(flat) - 33)
    assert got[1][24:28] == ["rising"] * 4  # 1.0 against 0.6 four weeks before: climbing
    assert got[1][28:33] == ["recovering"] * 5  # no longer climbing, crisis in w-12 .. w-4
    assert got == slow_phases(need, np.zeros_like(need), crises, 0.2)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 40), adults=st.booleans())
def test_theta_is_a_quarter_of_the_spread_of_adults_base_need(seed, n, adults):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, n)
    age = rng.integers(18 if adults else 0, 90 if adults else 18, n)
    who = base[age >= 18] if adults else base  # nobody adult: everyone
    assert theta(base, age) == pytest.approx(0.25 * np.std(who), rel=1e-12)


def test_theta_ignores_children():
    base = np.array([0.0, 1.0, 0.0, 1.0, 50.0])
    age = np.array([30, 40, 50, 60, 5])
    assert theta(base, age) == pytest.approx(0.25 * 0.5)


# --- the world's truth file ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def need_file(world20k):
    need = pl.read_parquet(world20k / "truth" / "need.parquet")
    persons = pl.read_parquet(world20k / "truth" / "persons.parquet")
    return need, persons


def test_need_file_columns_and_phases(need_file):
    need, persons = need_file
    assert need.columns == ["nhs_number", "week_start", "need", "baseline", "phase"]
    assert need["week_start"].dtype == pl.Date
    assert (need["week_start"].dt.weekday() == 1).all()  # Mondays
    phases = need["phase"].cast(pl.String)
    assert set(phases.unique()) == set(PHASES)  # every phase occurs, and nothing else
    assert need.select("nhs_number", "week_start").is_duplicated().sum() == 0
    assert need["nhs_number"].is_in(persons["nhs_number"].implode()).all()


def test_rising_is_a_small_share_of_adult_weeks(need_file):
    need, persons = need_file
    adult = need.join(persons.select("nhs_number", "age"), on="nhs_number").filter(pl.col("age") >= 18)
    share = adult["phase"].cast(pl.String).value_counts(normalize=True)
    got = dict(zip(share["phase"], share["proportion"], strict=True))
    assert 0.01 <= got["rising"] <= 0.10
    assert 0.005 <= got["in_crisis"] <= 0.10
    assert got["steady"] >= 0.7


def test_theta_of_the_world_separates_steady_from_rising(need_file):
    """The world's θ (from its persons' base need and age) is where steady ends and rising begins:
    rising weeks stand at least θ above usual, steady weeks less (the file rounds to 0.001)."""
    need, persons = need_file
    th = theta(persons["base_need"].to_numpy(), persons["age"].to_numpy())
    excess = need.select(pl.col("phase").cast(pl.String), (pl.col("need") - pl.col("baseline")).alias("excess"))
    rising = excess.filter(pl.col("phase") == "rising")["excess"]
    steady = excess.filter(pl.col("phase") == "steady")["excess"]
    assert rising.min() >= th - 0.002
    assert steady.max() < th + 0.002
    assert rising.min() < th + 0.01 and steady.max() > th - 0.01  # the boundary is at θ, not elsewhere


# --- matched to the warehouse's people -------------------------------------------------------------


def test_need_phases_reads_the_week_before_each_as_of(tiny_world):
    from wobble.core.config import load_config
    from wobble.ingest.identifiers import pseudonymise
    from wobble.models import truth

    cfg = load_config(tiny_world / "wobble.toml")
    key = TEST_KEY.encode()
    as_ofs = [date(2026, 3, 2), date(2026, 8, 24)]
    got = truth.need_phases(cfg, key, as_ofs, since=True)
    assert got is not None
    assert set(got.columns) == {"person_id", "as_of", "phase", "excess", "rising_since"}
    plain = truth.need_phases(cfg, key, as_ofs)
    assert plain.columns == ["person_id", "as_of", "phase", "excess"]
    assert plain.sort("person_id", "as_of").equals(got.drop("rising_since").sort("person_id", "as_of"))

    raw = pl.read_parquet(tiny_world / "world" / "truth" / "need.parquet")
    expected = {}
    for as_of in as_ofs:
        week = raw.filter(pl.col("week_start") == as_of - timedelta(days=7))
        assert week.height > 2000
        for nhs, phase, need, baseline in week.select("nhs_number", pl.col("phase").cast(pl.String), "need",
                                                      "baseline").iter_rows():
            expected[(pseudonymise(key, nhs), as_of)] = (phase, need - baseline)

    # a rise's first as-of date, week by week: the as-of date after the last week not rising
    since, start, first = {}, {}, {}
    for nhs, week, phase in raw.sort("nhs_number", "week_start").select(
            "nhs_number", "week_start", pl.col("phase").cast(pl.String)).iter_rows():
        first.setdefault(nhs, week)
        if phase != "rising":
            start.pop(nhs, None)
        else:
            start.setdefault(nhs, week + timedelta(days=7))
        if week + timedelta(days=7) in as_ofs:
            since[(pseudonymise(key, nhs), week + timedelta(days=7))] = start.get(nhs)

    rows = {(p, a): (ph, ex, s) for p, a, ph, ex, s in got.select(
        "person_id", "as_of", "phase", "excess", "rising_since").iter_rows()}
    assert rows.keys() == expected.keys()
    for k, (phase, excess) in expected.items():
        assert rows[k][0] == phase, k
        assert rows[k][1] == pytest.approx(excess, abs=1e-6), k
        assert rows[k][2] == since[k], k
    rising = [k for k in expected if expected[k][0] == "rising"]
    assert len(rising) > 20
    assert len({k[1] - rows[k][2] for k in rising}) > 3  # rises of several lengths, not all begun this week
    # the week of the as-of itself would grade a different phase for some people
    same_week = raw.filter(pl.col("week_start") == as_ofs[1]).select("nhs_number", pl.col("phase").cast(pl.String))
    moved = sum(expected[(pseudonymise(key, nhs), as_ofs[1])][0] != ph for nhs, ph in same_week.iter_rows()
                if (pseudonymise(key, nhs), as_ofs[1]) in expected)
    assert moved > 0


def test_need_phases_of_some_people_are_their_rows_of_everyone(tiny_world):
    """Grading reads the truth of its own people only: exactly their rows of the full read."""
    from wobble.core.config import load_config
    from wobble.models import truth

    cfg = load_config(tiny_world / "wobble.toml")
    key = TEST_KEY.encode()
    as_ofs = [date(2026, 3, 2), date(2026, 8, 24)]
    everyone = truth.need_phases(cfg, key, as_ofs)
    some = everyone["person_id"].unique().sort().gather_every(7)
    got = truth.need_phases(cfg, key, as_ofs, people=pl.concat([some, some, pl.Series(["not-a-person"])]))
    order = ["person_id", "as_of"]
    assert got.sort(order).equals(everyone.filter(pl.col("person_id").is_in(some.implode())).sort(order))
    since = truth.need_phases(cfg, key, as_ofs, people=some, since=True)
    assert since.sort(order).equals(truth.need_phases(cfg, key, as_ofs, since=True).filter(
        pl.col("person_id").is_in(some.implode())).sort(order))
    assert got["person_id"].n_unique() == some.len() > 100
    risk = truth.crisis_risk(cfg, key, as_ofs, people=some)
    assert risk.height > 0
    assert risk.sort(order).equals(truth.crisis_risk(cfg, key, as_ofs).filter(
        pl.col("person_id").is_in(some.implode())).sort(order))


def test_need_phases_is_none_without_a_key(tiny_world):
    from wobble.core.config import load_config
    from wobble.models import truth

    cfg = load_config(tiny_world / "wobble.toml")
    assert truth.need_phases(cfg, None, [date(2026, 8, 24)]) is None
