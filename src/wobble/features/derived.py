"""Derived features: the few that one filtered aggregate cannot say, as plain functions.

Each public function in this module is one column of `feature_snapshots`, found by name
(as in Hamilton): the function's name is the column, the first paragraph of its docstring is the
sentence a huddle reads, and each parameter names a column it is computed from. A parameter is
either an aggregate declared in `features/*.yml` (usually an `internal: true` one, which is never
written out) or one of the compiler's helper columns:

- `first_record_at`: the earliest contact known before the as-of date, over all history;
- `team_quiet_months`: for the person's team, the months before the as-of date (0 = the month
  under way, 1 = the one before, … 12) in which a source system that usually sends the team's
  records sent almost none, by the one rule of `wobble.features.feeds`.

A function returns a DuckDB SQL expression over those columns. The compiler evaluates it once for
every (person_id, as_of) row of the cohort, in the same query as every other feature, so it runs
over all people at once and sees only what the time guard let into its inputs: records known
before the as-of date. `@derived(...)` records the rest of the catalogue entry (family, unit, how
a missing value is treated, whether models may use it).

Worked example, `gp_upc_365d`: someone whose last year's GP appointments were with GPs
{A: 3, B: 1} has the input list ``[3, 1]`` (appointments per GP); the expression gives
3 / 4 = 0.75.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

HELPER_COLUMNS = ("first_record_at", "team_quiet_months")


@dataclass(frozen=True)
class DerivedSpec:
    family: str
    unit: str
    missing: Literal["zero", "null"]
    predictor: bool
    rises_at: float | None = None  # a change feature: reads as a rise at or above this
    concern: Literal["higher", "lower", "none"] = "higher"


def derived(*, family: str, unit: str = "", missing: Literal["zero", "null"] = "null", predictor: bool = True,
            rises_at: float | None = None, concern: Literal["higher", "lower", "none"] = "higher",
            ) -> Callable[[Callable[..., str]], Callable[..., str]]:
    """Mark a function as a derived feature and record its catalogue entry (see the YAML keys of
    the same names in `wobble.features.catalogue`)."""

    def mark(fn: Callable[..., str]) -> Callable[..., str]:
        fn.derived_spec = DerivedSpec(family, unit, missing, predictor, rises_at, concern)  # type: ignore[attr-defined]
        return fn

    return mark


# --- continuity of care ----------------------------------------------------------------------

def _upc(visits: str) -> str:
    """Usual Provider of Care from a list of contacts per professional: max / total."""
    n = f"list_sum({visits})"
    return f"CASE WHEN {n} >= 2 THEN list_max({visits})::DOUBLE / {n} END"


def _coc(visits: str) -> str:
    """Bice–Boxerman Continuity of Care: (Σ nⱼ² − N) / (N (N − 1))."""
    n = f"list_sum({visits})"
    squares = f"list_sum(list_transform({visits}, lambda v: v * v))"
    return f"CASE WHEN {n} >= 2 THEN ({squares} - {n})::DOUBLE / ({n} * ({n} - 1)) END"


@derived(family="continuity", unit="index", concern="lower")
def gp_upc_365d(gp_professionals_365d: str) -> str:
    """continuity with one GP over the last year (Usual Provider of Care: the share of GP
    appointments with the GP seen most; 1 = always the same GP; blank with fewer than two)"""
    return _upc(gp_professionals_365d)


@derived(family="continuity", unit="index", concern="lower")
def gp_coc_365d(gp_professionals_365d: str) -> str:
    """continuity across GP appointments over the last year (Bice–Boxerman index: 1 = always
    the same GP, 0 = a different GP every time; blank with fewer than two)"""
    return _coc(gp_professionals_365d)


@derived(family="continuity", unit="index", concern="lower")
def community_upc_365d(community_professionals_365d: str) -> str:
    """continuity with one community nurse or mental health worker over the last year (Usual
    Provider of Care; 1 = always the same person; blank with fewer than two contacts)"""
    return _upc(community_professionals_365d)


@derived(family="continuity", unit="index", concern="lower")
def community_coc_365d(community_professionals_365d: str) -> str:
    """continuity across community contacts over the last year (Bice–Boxerman index: 1 = always
    the same person, 0 = a different person every time; blank with fewer than two)"""
    return _coc(community_professionals_365d)


# --- trajectory --------------------------------------------------------------------------------

RISE_WEEKS = 26  # how far back a rise may have started; weeks 27-52 set the usual rate


@derived(family="trajectory", unit="weeks", rises_at=1)
def weeks_since_first_rise(contacts_by_week_182d: str, usual_weekly_contacts: str) -> str:
    """weeks since the person's contacts began running above their own usual rate (blank unless
    the last 4 weeks ran at least double the usual rate of weeks 27–52 before, with 2 or more)"""
    # `contacts_by_week_182d` exists only for people rising now (its only_if in
    # features/trajectory.yml). A CUSUM change point, in whole numbers so that ties are exact:
    # with R contacts in the 26 usual weeks (rate R/26 a week) and n(w) contacts in the last
    # w weeks, the excess over a reference rate of max(1.5 × R/26, 1/8) a week, times 104, is
    #     E(w) = 104·n(w) − max(6R, 13)·w.
    # The rise began at the earliest w in 1..26 where E peaks: before it, contacts ran at or
    # below the reference; after it, above. Example: R = 13 (one every 2 weeks), 6 contacts in
    # the last 3 weeks and none in weeks 4–26: E(3) = 624 − 78·3 = 390 is the peak, so 3 weeks.
    n, usual = contacts_by_week_182d, usual_weekly_contacts
    excess = (f"list_transform(range(1, {RISE_WEEKS + 1}), "
              f"lambda w: 104 * {n}[w] - greatest(6 * {usual}, 13) * w)")
    return f"CASE WHEN {n} IS NOT NULL THEN list_position({excess}, list_max({excess})) END"


# --- data completeness -------------------------------------------------------------------------

@derived(family="completeness", unit="months", predictor=False, concern="none")
def months_of_history(first_record_at: str) -> str:
    """months (30-day periods) since the person's earliest contact on record, over all history
    (blank: none on record)"""
    return f"date_diff('day', {first_record_at}::DATE, as_of) // 30"


@derived(family="completeness", unit="", missing="zero", predictor=False, concern="none")
def team_feed_gap_3m(team_quiet_months: str) -> str:
    """the team's records from one source went missing or almost so in the last three months (this
    month so far and the two before), so some of this person's contacts may not be counted"""
    return f"coalesce(list_min({team_quiet_months}) < 3, false)::INTEGER"


@derived(family="completeness", unit="", missing="zero", predictor=False, concern="none")
def team_feed_gap_12m(team_quiet_months: str) -> str:
    """the team's records from one source went missing or almost so in the last twelve months (and
    this month so far), so some of this person's contacts may not be counted"""
    return f"coalesce(len({team_quiet_months}) > 0, false)::INTEGER"
