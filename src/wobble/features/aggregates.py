"""Aggregates: what a feature may compute over the records its filter and window let through.

Each over the records the filter and window let through:

    count(*)                   records
    count(DISTINCT col)        different values of col
    sum|min|max|avg(expr)      the usual
    days_since(max(col))       days since the latest record (blank if none)
    share(cond)                share of records meeting cond (blank if none)
    any()                      1 if there is any record, else 0
    new(col, Bd)               values of col in the window not seen in the B days before it
    excess(count(*), Bd)       records in the window minus the person's usual number, the usual
                               being the rate over the B days before the window
    ratio(count(*), Bd)        (records in the window + 1) / (usual number + 1), usual as above
    share_change(cond, Bd)     share meeting cond in the window minus the share in the B days
                               before it (blank if either has no records)
    slope(count(*))            least-squares trend of the counts in consecutive 30-day periods
                               across the window, per period (window a multiple of 30 days)
    acceleration(count(*))     second derivative of a quadratic fitted to those counts
    cumulative_counts(col, N)  a list: its k-th item counts records with col <= k (col one of
                               days_before, weeks_before, months_before); internal inputs only
    counts_per(col)            a list of the number of records for each value of col; internal
                               inputs only

Each compiles to `Part`s (counts, latest days, or any other aggregate over a window) and the SQL
that combines them, so that the query computes each distinct part once (`wobble.features.compile`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from wobble.core.errors import ConfigError
from wobble.features.language import CODED, PERIOD_DAYS, SMALL_INTS, TIME_COLUMN, check_columns

_PLAIN = re.compile(r"^(count|sum|max|min|avg)\((DISTINCT\s+)?(.+)\)$", re.IGNORECASE | re.DOTALL)
_DAYS_SINCE = re.compile(r"^days_since\((max|min)\((\w+)\)\)$")
_SHARE = re.compile(r"^share\((.+)\)$", re.DOTALL)
_BASELINED = re.compile(r"^(excess|ratio)\(count\(\*\),\s*(\d+)d\)$")
_SHARE_CHANGE = re.compile(r"^share_change\((.+),\s*(\d+)d\)$", re.DOTALL)
_NEW = re.compile(r"^new\((\w+),\s*(\d+)d\)$")
_TREND = re.compile(r"^(slope|acceleration)\(count\(\*\)\)$")
_CUMULATIVE = re.compile(r"^cumulative_counts\((weeks_before|months_before|days_before),\s*(\d+)\)$")
_COUNTS_PER = re.compile(r"^counts_per\((\w+)\)$")


@dataclass(frozen=True)
class PerValue:
    """An aggregate over each person's distinct values of `column`, compiled to a nested
    GROUP BY (person, as_of, value): `distinct` counts values, `new` counts values seen in the
    window but not before it, `counts` lists the records per value."""

    column: str
    kind: Literal["distinct", "new", "counts"]
    recent: str
    before: str = "false"


@dataclass(frozen=True)
class Part:
    """One aggregate a feature is computed from, over records `days_before` in (lo, hi].

    `count`: the records meeting `pred`; `latest`: the fewest days before the as-of date of such
    a record (blank if none); `sql`: any other aggregate, written out in `sql`. Counts and
    latests need no knowledge of the as-of date beyond the window, so for weekly as-of dates the
    compiler may slide them from one date to the next (see `_slide_sql`).
    """

    kind: Literal["count", "latest", "sql"]
    pred: str  # with {where} / {cond} for the feature's filter and a share's condition
    lo: int
    hi: int
    sql: str = ""

    def direct(self) -> str:
        """The aggregate over records joined to each as-of date."""
        if self.kind == "sql":
            return self.sql
        cond = f"{self.pred} AND {_window(self.lo, self.hi)}"
        return _count(cond) if self.kind == "count" else _when("min", "days_before", cond)


@dataclass(frozen=True)
class Aggregate:
    """A feature as parts and the SQL that combines them, naming part k `{k}`."""

    parts: tuple[Part, ...]
    final: str = "{0}"


_UPTO = re.compile(r"\bdays_before <= (\d+)\b")


def _within(sql: str, reach: int) -> str:
    """`sql` for a block whose records are at most `reach` days before the as-of date: a test
    `days_before <= n` with n >= reach always holds there, and is written `true` (DuckDB then
    folds it away rather than test it for every record at every date)."""
    return _UPTO.sub(lambda m: "true" if int(m.group(1)) >= reach else m.group(0), sql)


def _window(lo: int, hi: int) -> str:
    return f"days_before <= {hi}" if lo == 0 else f"days_before > {lo} AND days_before <= {hi}"


def _when(fn: str, arg: str, cond: str) -> str:
    """`fn(arg)` over the records meeting `cond`. Written as fn(CASE WHEN …) rather than
    FILTER (WHERE …): DuckDB evaluates the CASE in one vectorised projection, about three
    times faster than a FILTER per aggregate when there are a hundred of them."""
    return f"{fn}(CASE WHEN {cond} THEN {arg} END)"


def _whole(fn: str, arg: str, cond: str) -> str:
    """`_when` for a count or a sum of whole numbers, as an INTEGER: DuckDB's BIGINT counts (and
    HUGEINT sums) are twice (four times) as wide to carry through a pass's joins and to store,
    and a person's records never number two billion."""
    return f"{_when(fn, arg, cond)}::INTEGER"


def _count(cond: str) -> str:
    """The number of records meeting `cond` (see `_whole`)."""
    return _whole("count", "1", cond)


def _coded(col: str) -> bool:
    return col in CODED or col in SMALL_INTS or col == "source_system"


def _aggregate(fname: str, column: str, source: str, aggregate: str, days: int,
               internal: bool) -> tuple[Aggregate | PerValue, int]:
    """(The aggregate as parts and a final expression, or a PerValue; days it reaches back).

    Parts name the filter `{where}` and a share's condition `{cond}`: the compiler computes each
    distinct predicate once per record (see `Feature.predicates`).
    """
    agg = aggregate.strip()
    where, both = "{where}", "{where} AND {cond}"
    recent = f"{where} AND days_before <= {days}"

    def count(pred: str, lo: int = 0, hi: int = days) -> Part:
        return Part("count", pred, lo, hi)

    def sql(text: str, hi: int = days) -> Part:
        return Part("sql", "", 0, hi, text)

    def fail(why: str) -> ConfigError:
        return ConfigError(f"{fname}: feature {column!r}: {why}")

    for a in re.findall(r"\(([^()]*)\)", agg):
        check_columns(fname, column, source, a.replace("*", ""), "aggregate")
    if m := _DAYS_SINCE.match(agg):
        if m.group(2) == TIME_COLUMN[source] and m.group(1) == "max":
            return Aggregate((Part("latest", where, 0, days),)), days
        return Aggregate((sql(f"date_diff('day', {_when(m.group(1), m.group(2), recent)}, as_of)"),)), days
    if (m := _SHARE.match(agg)) and not _SHARE_CHANGE.match(agg):
        return Aggregate((count(both), count(where)), "{0}::DOUBLE / nullif({1}, 0)"), days
    if agg == "any()":
        return Aggregate((count(where),), "({0} > 0)::INTEGER"), days
    if m := _NEW.match(agg):
        col, base = m.group(1), int(m.group(2))
        if not _coded(col):
            return PerValue(col, "new", recent, f"{where} AND {_window(days, days + base)}"), days + base
        masks = [sql(_when("bit_or", f"{col}_bit", f"{where} AND {_window(lo, hi)}"), hi)
                 for lo, hi in ((0, days), (days, days + base))]
        return Aggregate(tuple(masks), "bit_count({0} & ~coalesce({1}, 0))"), days + base
    if m := _BASELINED.match(agg):
        kind, base = m.group(1), int(m.group(2))
        parts = (count(where), count(where, days, days + base))
        usual = f"{{1}} * {days}::DOUBLE / {base}"
        final = f"{{0}} - {usual}" if kind == "excess" else f"({{0}} + 1) / ({usual} + 1)"
        return Aggregate(parts, final), days + base
    if m := _SHARE_CHANGE.match(agg):
        base = int(m.group(2))
        parts = (count(both), count(where), count(both, days, days + base), count(where, days, days + base))
        return Aggregate(parts, "{0}::DOUBLE / nullif({1}, 0) - {2}::DOUBLE / nullif({3}, 0)"), days + base
    if m := _TREND.match(agg):
        if days % PERIOD_DAYS:
            raise fail(f"{m.group(1)}() needs a window in whole {PERIOD_DAYS}-day periods, e.g. 360d")
        return _trend(m.group(1), days // PERIOD_DAYS, count(where), recent), days
    if m := _CUMULATIVE.match(agg):
        if not internal:
            raise fail("cumulative_counts() makes a list, not a number: only `internal: true` inputs may use it")
        col, n = m.group(1), int(m.group(2))
        unit = {"days_before": 1, "weeks_before": 7, "months_before": PERIOD_DAYS}[col]
        parts = tuple(count(where, 0, unit * k) for k in range(1, n + 1))
        return Aggregate(parts, "[" + ", ".join(f"{{{k}}}" for k in range(n)) + "]"), days
    if m := _COUNTS_PER.match(agg):
        if not internal:
            raise fail("counts_per() makes a list, not a number: only `internal: true` inputs may use it")
        return PerValue(m.group(1), "counts", recent), days
    if m := _PLAIN.match(agg):
        fn, distinct, arg = m.group(1).lower(), m.group(2), m.group(3).strip()
        if distinct and _coded(arg):
            return Aggregate((sql(_when("bit_or", f"{arg}_bit", recent)),), "bit_count({0})"), days
        if distinct and fn == "count" and re.fullmatch(r"\w+", arg):
            return PerValue(arg, "distinct", recent), days
        if distinct:
            raise fail("DISTINCT works in count(DISTINCT column) only")
        if fn == "count" and arg == "*":
            return Aggregate((count(where),)), days
        return Aggregate((sql(_when(fn, arg, recent)),)), days
    raise fail(
        f"cannot compile aggregate {aggregate!r}; use count(*), count(DISTINCT col), "
        "sum/max/min/avg(expr), days_since(max(col)), share(cond), any(), new(col, Nd), "
        "excess(count(*), Nd), ratio(count(*), Nd), share_change(cond, Nd), slope(count(*)), "
        "acceleration(count(*)), cumulative_counts(weeks_before, N) or counts_per(col)"
    )


def _trend(kind: str, periods: int, records: Part, recent: str) -> Aggregate:
    """Least-squares slope or curvature of per-period counts, from sums over records.

    With periods x = 0 … n−1 (oldest first) and counts y, the fitted slope is
    Σ (x − x̄) y / Σ (x − x̄)², and Σ (x − x̄) y is Σ over records of their period's (x − x̄):
    a sum, so it needs no per-period table. Likewise the quadratic term, with the orthogonal
    polynomial p(x) = (x − x̄)² − mean((x − x̄)²): curvature c = Σ p y / Σ p², acceleration 2c.
    A record `months_before` m (1 = the last 30 days) sits at x = n − m, so with a = n − x̄,
    over the C records (`records`, a count, which may slide from date to date):
    Σ (x − x̄) = a·C − Σ m and Σ (x − x̄)² = a²·C − 2a·Σ m + Σ m², sums of whole numbers.
    """
    xs = range(periods)
    mean = (periods - 1) / 2
    a = periods - mean
    s_xx = sum((x - mean) ** 2 for x in xs)
    sum_m = Part("sql", "", 0, records.hi, _whole("sum", "months_before", recent))
    if kind == "slope":
        return Aggregate((records, sum_m), f"({a!r}::DOUBLE * {{0}} - {{1}}) / {s_xx!r}")
    m2 = s_xx / periods
    p_sq = sum(((x - mean) ** 2 - m2) ** 2 for x in xs)
    sum_m2 = Part("sql", "", 0, records.hi, _whole("sum", "months_before * months_before", recent))
    # the whole numbers are INTEGER (see `_whole`): a decimal literal times one is DECIMAL
    # arithmetic in DuckDB, which overflows for a literal of 17 digits, so the literals are DOUBLE
    return Aggregate((records, sum_m, sum_m2),
                     f"2 * ({a * a - m2!r}::DOUBLE * {{0}} - {2 * a!r}::DOUBLE * {{1}} + {{2}}) / {p_sq!r}")

