"""Reasons that read right: change read as change, no self-contradiction, the change reason first."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wobble.core.config import PACKAGED_FEATURES
from wobble.features import load_catalogue
from wobble.lists.reasons import change_sentence, choose_reasons, neutral_expr, readable_expr, reason_sentence

CAT = load_catalogue(PACKAGED_FEATURES)


def _f(column: str):
    return CAT.get(column)


@pytest.mark.parametrize("column, value, text", [
    ("gp_appointment_excess_30d", 3.0, "3 more GP appointments than usual for them in the last 30 days"),
    ("gp_appointment_excess_30d", 1.0, "1 more GP appointment than usual for them in the last 30 days"),
    ("gp_appointment_excess_30d", 0.9, "About 1 more GP appointment than usual for them in the last 30 days"),
    ("contacts_excess_90d", -52.4, "About 52 fewer contacts attended than usual for them in the last 90 days"),
    ("contacts_excess_90d", -0.04, "About as many contacts attended as usual for them in the last 90 days"),
    ("contacts_ratio_90d", 3.24, "Contacts attended in the last 90 days: 3.2 times their usual rate"),
    ("contacts_ratio_90d", 1.1, "Contacts attended in the last 90 days: about their usual rate"),
    ("contacts_ratio_90d", 0.5, "Contacts attended in the last 90 days: 0.5 times their usual rate"),
    ("contacts_slope_360d", 0.83, "Contacts attended rising over the last 12 months: about 0.8 more each month"),
    ("contacts_slope_360d", -1.26, "Contacts attended falling over the last 12 months: about 1.3 fewer each month"),
    ("contacts_slope_360d", -0.01, "Contacts attended steady over the last 12 months"),
    ("new_concerns_90d", 2, "2 new kinds of concern in the last 90 days (none in the months before)"),
    ("new_concerns_90d", 1, "1 new kind of concern in the last 90 days (none in the months before)"),
    ("dna_rate_change_90d", 0.2,
     "Share of appointments missed up 20 percentage points in the last 90 days against the months before"),
])
def test_change_reads_as_change(column, value, text):
    assert change_sentence(_f(column), value) == text
    assert reason_sentence(_f(column), value, 0.0) == text


@given(st.sampled_from([f.column for f in CAT.features if f.reads and f.noun]),
       st.floats(-200, 200, allow_nan=False))
def test_a_change_never_reads_as_minus_zero_and_rising_only_when_it_rises(column, value):
    if _f(column).reads in ("ratio", "new"):  # never negative: a rate against the usual one, a count
        value = abs(value)
    text = change_sentence(_f(column), value)
    assert not re.search(r"-\d", text)  # fewer is said in words, never with a minus sign
    assert not re.search(r"(?<![\d.])0\.0(?!\d)", text)  # nothing reads as "0.0"
    if "rising" in text or " more " in text.replace("1 more", " more "):
        assert value > 0


def test_counts_and_recency_read_with_the_teams_typical_value():
    assert reason_sentence(_f("ae_attendance_90d"), 1, 0) == (
        "1 A&E attendance in the last 90 days — most people in this team have none")
    assert reason_sentence(_f("days_since_missed"), 13, math.inf) == (
        "13 days since the last missed appointment — most people in this team have none in the last year")
    assert reason_sentence(_f("days_since_missed"), 19, 167) == (
        "19 days since the last missed appointment — typical in this team: 167")
    # from two years on, days read as years; counts keep their thousands apart
    assert reason_sentence(_f("days_registered"), 10155, 4595) == (
        "About 28 years since registering with the practice — typical in this team: about 13 years")
    assert reason_sentence(_f("days_registered"), 400, 1200) == (
        "400 days since registering with the practice — typical in this team: about 3 years")
    assert reason_sentence(_f("contacts_365d"), 1234, 20).startswith("1,234 contacts")
    # a blank is "none" over the window the feature reads, not always a year
    assert reason_sentence(_f("days_since_first_recent_concern_90d"), 87, math.inf) == (
        "87 days since the first of the concerns noted in the last 90 days, when a run of concerns began "
        "— most people in this team have none in the last 90 days")
    plain = SimpleNamespace(description="share of booked appointments missed in the last year", unit="share")
    assert reason_sentence(plain, 0.4, 0.05) == (
        "Share of booked appointments missed in the last year: 40% — typical in this team: 5%")


def _readable_reference(concern: str, value, typical, contribution: float, reads: str, days: bool) -> bool:
    """One reason, plain Python: does its direction agree with its side of the team's typical value?"""
    neutral = value is not None and {
        "excess": abs(value) < 0.5, "ratio": 0.8 < value < 1.25, "slope": abs(value) <= 0.05,
        "acceleration": abs(value) <= 0.05, "share_change": abs(value) < 0.005, "new": value < 0.5}.get(reads, False)
    if neutral:
        return False
    if concern == "none" or typical is None:
        return True
    v = value if value is not None else (math.inf if days else -math.inf)
    if contribution > 0:
        return v > typical if concern == "higher" else v < typical
    return v < typical if concern == "higher" else v > typical


@settings(max_examples=300)
@given(st.lists(st.tuples(
    st.sampled_from(["higher", "lower", "none"]),
    st.one_of(st.none(), st.integers(-5, 400).map(float)),
    st.one_of(st.none(), st.integers(0, 400).map(float), st.just(math.inf)),
    st.floats(-1, 1, allow_nan=False).filter(lambda c: c != 0),
    st.sampled_from(["", "excess", "ratio", "slope", "new"]),
    st.booleans()), min_size=1, max_size=40))
def test_readable_matches_the_plain_rule(rows):
    frame = pl.DataFrame(
        [{"concern": c, "value": v, "typical": t, "contribution": x, "_reads": r, "_days": d}
         for c, v, t, x, r, d in rows],
        schema={"concern": pl.String, "value": pl.Float64, "typical": pl.Float64, "contribution": pl.Float64,
                "_reads": pl.String, "_days": pl.Boolean})
    frame = frame.with_columns(pl.when(pl.col("value").is_not_null()).then(pl.col("value"))
                               .otherwise(pl.when(pl.col("_days")).then(math.inf).otherwise(-math.inf)).alias("_v"))
    got = frame.select(readable_expr().alias("r"))["r"].to_list()
    assert got == [_readable_reference(*r) for r in rows]
    assert frame.select(neutral_expr()).to_series().dtype == pl.Boolean


def test_a_recent_event_never_lowers_concern_and_equal_to_typical_is_no_reason():
    rows = pl.DataFrame({
        "concern": ["lower", "lower", "higher", "higher", "lower"],
        "value": [11.0, 300.0, 5.0, 2.0, None], "typical": [167.0, 167.0, 0.0, 2.0, math.inf],
        "contribution": [-0.2, -0.2, -0.1, 0.3, -0.1], "_reads": ["", "", "", "", ""]})
    rows = rows.with_columns(pl.col("value").fill_null(math.inf).alias("_v"))
    # 11 days since (more recent than typical) lowering concern: no; 300 days: yes; 5 above 0 lowering: no;
    # equal to typical: no; none in a year, like most people: no
    assert rows.select(readable_expr()).to_series().to_list() == [False, True, False, False, False]


def test_the_strongest_change_reason_leads_even_when_small():
    rows = pl.DataFrame({
        "person_id": ["a"] * 5, "feature": ["f1", "f2", "f3", "f4", "f5"],
        "contribution": [0.9, 0.5, 0.4, 0.3, 0.02], "readable": [True, True, True, True, False],
        "first": [False, False, False, False, True]})
    assert choose_reasons(rows)["feature"].to_list()[0] == "f5"
    assert choose_reasons(rows.drop("first"))["feature"].to_list() == ["f1", "f2", "f3", "f4"]
