"""Features: declared once in YAML under `features/`, compiled to DuckDB SQL with the time guard.

Reads `persons`, `contacts` and `tags`; writes `feature_snapshots`, one row per
(person_id, as_of) for everyone in the cohort at that date (registered, alive, not opted out).

A feature family is one YAML file: a list of features, each with a name, a source table, a filter
(`where`), an aggregate, windows and the plain-language sentence a huddle reads. The compiler, not
the author, adds the time guard: a record counts at as-of date T only if it was known before T
(`recorded_at < T`), happened before T, and, for a window of w days, happened in [T − w, T). For
example

    name: ae_attendance, where: service = 'ae_attendance', aggregate: count(*), windows: [30d]

becomes the column `ae_attendance_30d`:

    count(CASE WHEN (service = 'ae_attendance') AND days_before <= 30 THEN 1 END)

over the contacts joined to each as-of date on `recorded_at < as_of AND occurred_at < as_of`
and `occurred_at >= as_of - lookback`, where `days_before` is whole days from the record's day to
the as-of date (1 = the day before). Tags are timed by `recorded_at` alone. Many as-of dates come
from one pass: records are joined to every as-of date they count for (for weekly dates, long
windows are slid from one date to the next), and people are taken in groups only to keep memory
bounded (`build_features`).

Aggregates an author may write (each over the records the filter and window let through):

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

Besides the table's columns, `where` and aggregates may use `days_before`, `weeks_before`
(1 = the last 7 days) and `months_before` (1 = the last 30 days). Derived features that no single
aggregate can express are plain functions in `wobble.derived`, compiled into the same query.
"""

from __future__ import annotations

import inspect
import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wobble import derived as derived_module
from wobble.config import Config
from wobble.errors import ConfigError, WobbleError
from wobble.vocab import (
    CRISIS_SERVICES,
    MODES,
    POLARITIES,
    SERVICE_LABELS,
    SERVICES,
    SOURCE_SYSTEMS,
    STATUSES,
    TAG_LABELS,
    TAGS,
    age_band_sql,
    sql_list,
)
from wobble.warehouse import connect, scalar, table_exists, transaction

SOURCES = {
    "contacts": ("person_id", "occurred_at", "recorded_at", "service", "status", "mode",
                 "professional_id", "source_system"),
    "tags": ("person_id", "recorded_at", "tag", "polarity", "author_role", "source_system"),
    "persons": ("birth_year", "sex", "imd_decile", "ethnicity_group", "registered_on", "team_id",
                "practice_id", "as_of"),
}
TIME_COLUMN = {"contacts": "occurred_at", "tags": "recorded_at"}
PSEUDO_COLUMNS = ("days_before", "weeks_before", "months_before")
# Columns whose values come from the contract's vocabularies (ingest enforces them), and
# small whole numbers: `count(DISTINCT …)` and `new(…)` over them compile to bit masks.
CODED = {"service": SERVICES, "status": STATUSES, "mode": MODES, "tag": TAGS, "polarity": POLARITIES}
SMALL_INTS = ("weeks_before", "months_before")
# Placeholders a `where` or expression may use; expanded by the compiler.
MACROS = {"{crisis_services}": sql_list(CRISIS_SERVICES),
          "{age_band}": age_band_sql("(year(as_of) - birth_year)")}
SYSTEM_LABELS = {"gp": "GP", "acute": "the hospital (acute trust)", "community": "community services",
                 "social_care": "social care", "housing": "housing"}
# `each:` expansions: one feature per value, with these placeholders for name and description.
EACH = {
    "service": [{"service": s, "service_label": SERVICE_LABELS[s]} for s in SERVICES],
    "tag": [{"tag": t, "tag_label": TAG_LABELS[t]} for t in TAGS],
    "system": [{"system": s, "system_label": SYSTEM_LABELS.get(s, s.replace("_", " "))}
               for s in SOURCE_SYSTEMS],
}
LOOKBACK_DAYS = 365  # the window `all` means: what the last year holds
# Features are computed in passes by how far back they reach: a 30-day count reads a twelfth
# of the records a one-year count does, at every as-of date.
TIERS = (30, 90, 182)
PERIOD_DAYS = 30  # the period slope() and acceleration() count in
SLIDE_MIN_PARTS = 4  # fewer parts over a window are counted at each date, not slid (measured)
_WINDOW = re.compile(r"^(\d+)d$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureDecl(_Strict):
    """One feature as written in YAML (before `each` expansion)."""

    name: str
    source: str
    description: str = ""
    aggregate: str | None = None  # contacts/tags: an aggregate
    expression: str | None = None  # persons: a scalar SQL expression of the person's row
    where: str = "true"
    windows: list[str] = Field(default_factory=lambda: ["all"])
    unit: str = ""
    missing: Literal["zero", "null"] = "zero"
    each: Literal["service", "tag", "system"] | None = None
    predictor: bool = True  # false: kept for fairness reporting or caveats, never a model input
    internal: bool = False  # an input to derived features only, never written out
    # internal inputs only: compute it just for the (person, as-of) pairs where this condition
    # on other counts holds (blank elsewhere), when it is costly and matters for few people
    only_if: str | None = None

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            if w != "all" and not _WINDOW.match(w):
                raise ValueError(f"cannot parse window {w!r}: write e.g. 30d, 365d, or all")
        return v


class FamilyDecl(_Strict):
    family: str
    description: str
    features: list[FeatureDecl]


@dataclass(frozen=True)
class Feature:
    """One compiled column."""

    column: str
    family: str
    source: str  # contacts | tags | persons | derived
    description: str  # with {window} filled in
    unit: str
    missing: str
    predictor: bool
    sql: str | Aggregate | PerValue  # the aggregate (parts and final expression; or a PerValue),
    # the persons expression, or the derived expression
    window_days: int | None
    reach_days: int = 0  # how many days before the as-of date it reads
    internal: bool = False
    inputs: tuple[str, ...] = ()  # derived only: the columns it is computed from
    predicates: tuple[tuple[str, str], ...] = ()  # {where}/{cond} in `sql` → their SQL
    only_if: str | None = None


@dataclass(frozen=True)
class Catalogue:
    features: tuple[Feature, ...]  # the snapshot's columns, in order
    inputs: tuple[Feature, ...] = ()  # internal aggregates read by derived features
    families: tuple[tuple[str, str], ...] = ()  # (family, description), in file order

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.features]

    @property
    def predictors(self) -> list[str]:
        return [f.column for f in self.features if f.predictor]

    @property
    def lookback_days(self) -> int:
        return max([LOOKBACK_DAYS] + [f.reach_days for f in self.features + self.inputs])

    def get(self, column: str) -> Feature:
        for f in self.features:
            if f.column == column:
                return f
        raise KeyError(column)


def window_phrase(days: int | None) -> str:
    """'30 days', 'year', '12 months': how a description says a window."""
    if days is None or days == LOOKBACK_DAYS:
        return "year"
    if days % 365 == 0:
        return f"{days // 365} years"
    if days % PERIOD_DAYS == 0 and days // PERIOD_DAYS in (6, 12, 24):
        return f"{days // PERIOD_DAYS} months"
    return f"{days} days"


def load_catalogue(features_dir: Path) -> Catalogue:
    """Read every `*.yml` under `features_dir`, then the derived features; fail loudly on anything
    ambiguous."""
    files = sorted(Path(features_dir).glob("*.yml"))
    if not files:
        raise ConfigError(f"no feature files (*.yml) in {features_dir}")
    public: list[Feature] = []
    inputs: list[Feature] = []
    families: list[tuple[str, str]] = []
    seen: dict[str, str] = {}

    def add(feat: Feature, where: str) -> None:
        if feat.column in seen:
            raise ConfigError(f"{where}: feature {feat.column!r} is already declared in {seen[feat.column]}")
        seen[feat.column] = where
        (inputs if feat.internal else public).append(feat)

    for path in files:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            fam = FamilyDecl(**raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ConfigError(f"{path.name}: {where}: {err['msg']}") from None
        except (yaml.YAMLError, TypeError) as exc:
            raise ConfigError(f"{path.name}: not a feature family ({exc})") from None
        if fam.family in dict(families):
            raise ConfigError(f"{path.name}: family {fam.family!r} is declared twice")
        families.append((fam.family, fam.description))
        for decl in fam.features:
            for feat in _expand(fam.family, decl, path.name):
                add(feat, path.name)
    for feat in _derived(dict(families), seen):
        add(feat, "derived.py")
    for feat in inputs:
        if feat.only_if:
            names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", feat.only_if)) - _KEYWORDS
            unknown = sorted(n for n in names if n not in seen)
            if unknown:
                raise ConfigError(f"{seen[feat.column]}: feature {feat.column!r}: only_if names "
                                  f"{', '.join(unknown)}, which are not declared features")
    order = {name: k for k, (name, _) in enumerate(families)}
    public.sort(key=lambda f: order[f.family])  # stable: derived features follow their family's YAML
    return Catalogue(tuple(public), tuple(inputs), tuple(families))


def _expand(family: str, decl: FeatureDecl, fname: str) -> list[Feature]:
    if decl.source not in SOURCES:
        raise ConfigError(
            f"{fname}: feature {decl.name!r}: unknown source {decl.source!r} "
            f"(one of: {', '.join(SOURCES)})"
        )
    if decl.only_if and not decl.internal:
        raise ConfigError(f"{fname}: feature {decl.name!r}: only_if is for internal inputs only")
    if not decl.description and not decl.internal:
        raise ConfigError(f"{fname}: feature {decl.name!r}: needs a description (the sentence a huddle reads)")
    out = []
    for item in EACH[decl.each] if decl.each else [{}]:
        name = _fill(decl.name, item)
        if not _NAME.match(name):
            raise ConfigError(f"{fname}: feature name {name!r} must be lower_snake_case")
        where = _macros(_fill(decl.where, item))
        _check_columns(fname, name, decl.source, where, "where")
        if decl.source == "persons":
            if not decl.expression:
                raise ConfigError(f"{fname}: feature {name!r}: persons features need an expression")
            expr = _macros(decl.expression)
            _check_columns(fname, name, "persons", expr, "expression")
            out.append(Feature(name, family, "persons", _fill(decl.description, item), decl.unit,
                               decl.missing, decl.predictor, expr, None, 0, decl.internal))
            continue
        if not decl.aggregate:
            raise ConfigError(f"{fname}: feature {name!r}: needs an aggregate")
        for w in decl.windows:
            days = LOOKBACK_DAYS if w == "all" else int(_WINDOW.match(w).group(1))
            column = name if w == "all" else f"{name}_{w}"
            aggregate = _fill(decl.aggregate, item)
            sql, reach = _aggregate(fname, column, decl.source, aggregate, days, decl.internal)
            desc = _fill(decl.description, {"window": window_phrase(days), **item})
            predicates = (("where", where),)
            if m := (_SHARE_CHANGE.match(aggregate) or _SHARE.match(aggregate)):
                predicates += (("cond", _macros(m.group(1))),)
            out.append(Feature(column, family, decl.source, desc, decl.unit, decl.missing,
                               decl.predictor, sql, days, reach, decl.internal, (), predicates,
                               decl.only_if))
    return out


def _fill(text: str, values: dict[str, str]) -> str:
    """Replace each {key} of `values` in `text`; other braces are left alone."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _macros(text: str) -> str:
    return _fill(text, {k.strip("{}"): v for k, v in MACROS.items()})


_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "between", "like", "case",
             "when", "then", "else", "end", "distinct", "lower", "upper", "coalesce", "interval",
             "day", "days", "year", "date_diff", "least", "greatest", "abs", "cast", "integer",
             "double"}


def _check_columns(fname: str, name: str, source: str, text: str, what: str) -> None:
    """Unknown columns are errors at load time, not at query time."""
    stripped = re.sub(r"'[^']*'", "''", text)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", stripped))
    known = set(SOURCES[source]) | (set(PSEUDO_COLUMNS) if source != "persons" else set())
    unknown = sorted(w for w in words - _KEYWORDS - known if not re.match(r"^\d", w))
    if unknown:
        raise ConfigError(
            f"{fname}: feature {name!r}: unknown column(s) {', '.join(unknown)} in {what!r} "
            f"for source {source} (columns: {', '.join(sorted(known))})"
        )


# --- aggregates --------------------------------------------------------------------------------

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
        _check_columns(fname, column, source, a.replace("*", ""), "aggregate")
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


# --- derived features --------------------------------------------------------------------------

def _derived(families: dict[str, str], declared: dict[str, str]) -> list[Feature]:
    """Every public function of `wobble.derived` marked with `@derived`, as a catalogue entry."""
    out = []
    for name, fn in inspect.getmembers(derived_module, inspect.isfunction):
        spec = getattr(fn, "derived_spec", None)
        if spec is None or name.startswith("_"):
            continue
        params = tuple(inspect.signature(fn).parameters)
        unknown = [p for p in params if p not in declared and p not in derived_module.HELPER_COLUMNS]
        if unknown:
            raise ConfigError(f"derived.py: {name}() reads {', '.join(unknown)}, which is neither a "
                              "declared feature nor a helper column")
        if spec.family not in families:
            raise ConfigError(f"derived.py: {name}(): unknown family {spec.family!r}")
        doc = inspect.getdoc(fn) or ""
        description = " ".join(doc.split("\n\n")[0].split())
        if not description:
            raise ConfigError(f"derived.py: {name}() needs a docstring: the sentence a huddle reads")
        out.append(Feature(name, spec.family, "derived", description, spec.unit, spec.missing,
                           spec.predictor, fn(*params), None, 0, False, params))
    out.sort(key=lambda f: inspect.getsourcelines(getattr(derived_module, f.column))[1])
    return out


# --- the query ---------------------------------------------------------------------------------

def _dates(as_ofs: list[date]) -> str:
    return "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in as_ofs) + "]"


def cohort_sql(as_of_list: str) -> str:
    """People in the cohort at each as-of date: registered before it, alive, not opted out."""
    return f"""
        SELECT p.person_id, a.as_of, p.team_id
        FROM persons p CROSS JOIN (SELECT unnest({as_of_list}) AS as_of) a
        WHERE NOT p.opted_out AND p.team_id IS NOT NULL
          AND (p.registered_on IS NULL OR p.registered_on < a.as_of)
          AND (p.died_on IS NULL OR p.died_on >= a.as_of)
    """


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _array(values) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


EPOCH = "DATE '2000-01-01'"  # dates become whole day numbers counted from here


def _day_number(date_sql: str) -> str:
    """The date `date_sql` as a whole day number, an INTEGER (as `_day` and `days_before` are)."""
    return f"({date_sql} - {EPOCH})::INTEGER"

# a part's column in the query: `_c3`, `_t0`, or `_c3_first` (its value at the first as-of date)
_PART_REF = re.compile(r"\b_[ct]\d+(?:_first)?\b")
_PSEUDO = re.compile(r"\b(" + "|".join(PSEUDO_COLUMNS) + r")\b")


def window_sql(source: str, as_of_list: str, lookback: int, columns: tuple[str, ...] = ()) -> str:
    """The records of `source` that may count at some as-of date in the list (happened within
    `lookback` days before it, known before the last), with `_day` (the record's day) and
    `_known_day` (the day it was recorded) as whole day numbers; of the table's columns, all
    or `columns`."""
    t = TIME_COLUMN[source]
    return f"""
        SELECT {', '.join(columns or SOURCES[source])}, {_day_number(f"{t}::DATE")} AS _day,
               {_day_number("recorded_at::DATE")} AS _known_day
        FROM {source}
        WHERE {t} >= list_min({as_of_list}) - INTERVAL {lookback} DAY
          AND {t} < list_max({as_of_list}) AND recorded_at < list_max({as_of_list})"""


def records_sql(source: str, window: str, columns: tuple[str, ...], systems: tuple[str, ...],
                predicates: dict[str, str]) -> str:
    """The records of `window` (a query like `window_sql`'s, with `columns`) with what does not
    depend on the as-of date: `<column>_bit` for columns with a fixed set of values, and the `predicates`
    (name → SQL) that do not read a pseudo-column. Computed once per record, before any join
    multiplies records by as-of dates."""
    cols = [f"(1::UBIGINT << (list_position({_array(v)}, {c}) - 1)::UBIGINT) AS {c}_bit"
            for c, v in _vocab(columns, systems).items()]
    cols += [f"({sql}) AS {name}" for name, sql in predicates.items() if not _PSEUDO.search(sql)]
    return f"SELECT *, {', '.join(cols)} FROM ({window})"


def _vocab(columns: tuple[str, ...], systems: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Each of `columns` with a fixed set of values (`source_system`: those in the data), and its values."""
    return {**{c: v for c, v in CODED.items() if c in columns}, "source_system": systems}


def _in_reach(records: str, as_of_list: str, lookback: int) -> str:
    """Rows of `records` (a table, or a query like `records_sql`'s in brackets) that may count at
    some date in the list."""
    return f"""
        SELECT * FROM {records}
        WHERE _day >= list_min({as_of_list}) - {EPOCH} - {lookback}
          AND _day < list_max({as_of_list}) - {EPOCH} AND _known_day < list_max({as_of_list}) - {EPOCH}"""


def _as_of_days(as_of_list: str) -> str:
    return f"(SELECT as_of, {_day_number('as_of')} AS _as_of_day FROM (SELECT unnest({as_of_list}) AS as_of))"


def guarded_sql(records: str, as_of_list: str, lookback: int, predicates: dict[str, str] | None = None,
                only: str | None = None) -> str:
    """Records of `records` (see `_in_reach`) joined to each as-of date they may count for: the
    time guard.

    A record counts at as-of date T if it was recorded before T (`recorded_at < T`), happened
    before T, and happened within `lookback` days of it. Adds the pseudo-columns `days_before`,
    `weeks_before` and `months_before`, their bits, and the predicates that read them. With
    `only` (a table with `person_id`), only those people's records.
    """
    predicates = predicates or {}
    per_pair = [f"(1::UBIGINT << {c}::UBIGINT) AS {c}_bit" for c in SMALL_INTS]
    per_pair += [f"({sql}) AS {name}" for name, sql in predicates.items() if _PSEUDO.search(sql)]
    return f"""
        SELECT *, {', '.join(per_pair)}
        FROM (
            SELECT *, (days_before - 1) // 7 + 1 AS weeks_before,
                   (days_before - 1) // {PERIOD_DAYS} + 1 AS months_before
            FROM (
                SELECT r.*, a.as_of, a._as_of_day - r._day AS days_before
                FROM ({_in_reach(records, as_of_list, lookback)}
                      {f"AND person_id IN (SELECT person_id FROM {only})" if only else ""}) r
                JOIN {_as_of_days(as_of_list)} a
                  ON r._known_day < a._as_of_day AND r._day < a._as_of_day
                 AND r._day >= a._as_of_day - {lookback}
            )
        )"""


def _slide_sql(records: str, as_ofs: list[date], lo: int, hi: int, parts: list[tuple[str, Part]]) -> str:
    """How counts and latests over the window (lo, hi] change from the first as-of date T₁ to
    each later one: (person_id, as_of, change per part).

    A record is in the window at T when E < T <= day + hi, with E = max(recorded day,
    day + lo). Its membership can differ between T₁ and a later T only if E or day + hi falls
    in [T₁, Tₙ): for weekly dates and a year's window, a few weeks of records instead of a
    year's. A count at T is its count at T₁ plus, over those records, (in at T) − (in at T₁).
    A latest at T is the latest at T₁ or of the records that arrived since, if still in the
    window (when the latest record has left the window, so has every earlier one).
    """
    t1 = f"{as_ofs[0].isoformat()}"
    first, last = _day_number(f"DATE '{t1}'"), _day_number(f"DATE '{as_ofs[-1].isoformat()}'")
    later = _dates(as_ofs[1:])
    enter = f"greatest(r._known_day, r._day + {lo})"
    aggs = []
    for name, part in parts:
        if part.kind == "count":
            aggs.append(f"{_whole('sum', '_in - _in_first', part.pred)} AS {name}")
        else:
            aggs.append(f"max(CASE WHEN {part.pred} AND _arrived THEN _day END) AS {name}")
    return f"""
        SELECT person_id, as_of, {', '.join(aggs)}
        FROM (
            SELECT r.*, a.as_of,
                   ({enter} < a._as_of_day AND a._as_of_day <= r._day + {hi})::INTEGER AS _in,
                   ({enter} < {first} AND {first} <= r._day + {hi})::INTEGER AS _in_first,
                   {enter} >= {first} AND {enter} < a._as_of_day AS _arrived
            FROM ({_in_reach(records, _dates(as_ofs), hi)}) r
            CROSS JOIN {_as_of_days(later)} a
            WHERE ({enter} >= {first} AND {enter} < {last})
               OR (r._day + {hi} >= {first} AND r._day + {hi} < {last})
        )
        WHERE _in <> _in_first OR _arrived
        GROUP BY person_id, as_of"""


FIRST_ANY_SQL = """
    SELECT person_id, min(occurred_at) AS first_at, arg_min(recorded_at, occurred_at) AS first_known_at
    FROM contacts GROUP BY person_id"""


def first_late_sql(as_of_list: str) -> str:
    """(person_id, as_of, first_record_at) where a person's earliest contact was not yet known
    at the as-of date (`first_any`'s record was recorded after it, though it happened before):
    the earliest contact that was known then, if any. Few people, at few dates."""
    return f"""
            SELECT f.person_id, a.as_of, min(s.occurred_at) AS first_record_at
            FROM first_any f JOIN (SELECT unnest({as_of_list}) AS as_of) a
              ON f.first_known_at >= a.as_of AND f.first_at < a.as_of
            JOIN contacts s ON s.person_id = f.person_id
             AND s.recorded_at < a.as_of AND s.occurred_at < a.as_of
            GROUP BY f.person_id, a.as_of"""


def _first_record_sql(pseudonym: str) -> str:
    """(person_id, as_of, first_record_at): the earliest contact known before each as-of date.

    Over all history, but cheaply: a person's earliest contact (`first_any`, one row per person)
    is the answer at every as-of date after it became known; the few as-of dates before that
    are in `first_late`. Both are by pseudonym: `pseudonym` names it in `persons`.
    """
    return f"""
            SELECT k.person_id, k.as_of,
                   CASE WHEN f.first_known_at >= k.as_of THEN l.first_record_at
                        WHEN f.first_at < k.as_of THEN f.first_at END AS first_record_at
            FROM cohort k JOIN persons p USING (person_id)
            JOIN first_any f ON f.person_id = p.{pseudonym}
            LEFT JOIN first_late l ON l.person_id = p.{pseudonym} AND l.as_of = k.as_of"""


QUIET_SHARE = 0.1  # a period is quiet when a usual source sends under 10% of its median
QUIET_MIN_TYPICAL = 10  # … and a source is usual for a team when its median period has 10+ records


def team_feed_sql(as_of_list: str) -> str:
    """Query: (team_id, as_of, team_quiet_periods), 30-day periods with a near-silent usual source.

    For each team, source system and as-of date, count the contacts known before the as-of date
    in each of the 12 periods of 30 days before it (0 = the last 30 days). A system is usual for
    the team when its median period holds at least 10 records; a period is quiet when such a
    system sent fewer than 10% of that median. Counts are taken per day first, so the 12-period
    table is built from a few rows per team and day, not from every contact.
    """
    periods = 12
    return f"""
        WITH team_days AS (
            SELECT p.team_id, s.source_system, s.occurred_at::DATE AS day,
                   s.recorded_at::DATE AS known_day, count(*) AS n
            FROM contacts s JOIN persons p USING (person_id)
            WHERE p.team_id IS NOT NULL
              AND s.occurred_at >= list_min({as_of_list}) - INTERVAL {periods * PERIOD_DAYS} DAY
              AND s.occurred_at < list_max({as_of_list})
            GROUP BY ALL),
        team_periods AS (
            SELECT d.team_id, d.source_system, a.as_of,
                   (date_diff('day', d.day, a.as_of) - 1) // {PERIOD_DAYS} AS period, sum(d.n) AS n
            FROM team_days d JOIN (SELECT unnest({as_of_list}) AS as_of) a
              ON d.known_day < a.as_of AND d.day < a.as_of
             AND d.day >= a.as_of - INTERVAL {periods * PERIOD_DAYS} DAY
            GROUP BY ALL),
        team_grid AS (
            SELECT g.team_id, g.source_system, g.as_of, r.period, coalesce(t.n, 0) AS n
            FROM (SELECT DISTINCT team_id, source_system, as_of FROM team_periods) g
            CROSS JOIN (SELECT unnest(range({periods})) AS period) r
            LEFT JOIN team_periods t USING (team_id, source_system, as_of, period)),
        team_usual AS (
            SELECT team_id, source_system, as_of, median(n) AS typical
            FROM team_grid GROUP BY ALL)
        SELECT team_id, as_of,
               list_sort(list_distinct(list(g.period) FILTER (
                   WHERE u.typical >= {QUIET_MIN_TYPICAL} AND g.n < {QUIET_SHARE} * u.typical
               ))) AS team_quiet_periods
        FROM team_grid g JOIN team_usual u USING (team_id, source_system, as_of)
        GROUP BY ALL"""


def _plain_block(feats: list[tuple[str, str]], guarded: str) -> str:
    cols = ",\n               ".join(f"{sql} AS {column}" for column, sql in feats)
    return f"""
        SELECT person_id, as_of,
               {cols}
        FROM ({guarded})
        GROUP BY person_id, as_of"""


def _per_value_block(col: str, feats: list[tuple[str, PerValue]], guarded: str) -> str:
    """One nested GROUP BY for every PerValue feature over `col`: first per (person, as_of,
    value), then per (person, as_of). Cheaper than DuckDB's DISTINCT aggregates, which build a
    hash table per aggregate."""
    inner, outer, conds = [], [], []
    for k, (column, pv) in enumerate(feats):
        inner.append(f"{_count(pv.recent)} AS r{k}")
        conds.append(f"({pv.recent})")
        if pv.kind == "new":
            inner.append(f"{_count(pv.before)} AS b{k}")
            conds.append(f"({pv.before})")
            outer.append(f"(count(*) FILTER (WHERE r{k} > 0 AND b{k} = 0))::INTEGER AS {column}")
        elif pv.kind == "distinct":
            outer.append(f"(count(*) FILTER (WHERE r{k} > 0))::INTEGER AS {column}")
        else:
            outer.append(f"list(r{k} ORDER BY r{k} DESC) FILTER (WHERE r{k} > 0) AS {column}")
    return f"""
        SELECT person_id, as_of, {', '.join(outer)}
        FROM (
            SELECT person_id, as_of, {col}, {', '.join(inner)}
            FROM ({guarded})
            WHERE {col} IS NOT NULL AND ({' OR '.join(conds)})
            GROUP BY person_id, as_of, {col}
        )
        GROUP BY person_id, as_of"""


def compile_sql(cat: Catalogue, as_ofs: list[date], systems: tuple[str, ...] = SOURCE_SYSTEMS,
                *, shared: bool = False, group: tuple[int, int] | None = None, people: str | None = None,
                windowed: bool = False) -> str:
    """One query returning (person_id, as_of, team_id, every feature) for all as-of dates: the
    blocks of `compile_steps` as CTEs before its final select."""
    blocks, final = compile_steps(cat, as_ofs, systems, shared=shared, group=group, people=people,
                                  windowed=windowed)
    return f"WITH {', '.join(f'{n} AS {m}({body})' for n, m, body in blocks)}\n{final}"


def compile_steps(cat: Catalogue, as_ofs: list[date], systems: tuple[str, ...] = SOURCE_SYSTEMS, *,
                  shared: bool = False, group: tuple[int, int] | None = None, people: str | None = None,
                  windowed: bool = False) -> tuple[list[tuple[str, str, str]], str]:
    """The feature query in steps: blocks (name, materialisation hint, SQL), each reading the
    warehouse and earlier blocks by name, and a final select over them returning
    (person_id, as_of, team_id, every feature) for all as-of dates.

    `systems` lists every `source_system` value in the data (for distinct counts by bit mask).
    With `shared`, the helper tables `first_any` and `team_feed` (see `shared_tables`) already
    exist, for every as-of date of a run, and are read rather than computed; with `windowed`,
    so do the tables of `window_tables`, for everyone, and records are read from them. With `group`
    (k, n), only group k of n groups of people, split by a hash of `person_id`; with `people`
    (SQL over `person_id`), only the people it is true of (both `shared` only: the team feed is
    over everyone).

    The query has three layers: blocks of parts joined to the cohort (parts: `_c0`, `_c1`, …
    for contacts, `_t0`, … for tags), the declared features computed from their parts, then
    the derived features computed from declared ones.
    """
    if len(systems) > 63:
        raise WobbleError(f"{len(systems)} source systems: distinct counts support at most 63")
    as_ofs = sorted(as_ofs)
    as_of_list = _dates(as_ofs)
    look = cat.lookback_days
    span = (as_ofs[-1] - as_ofs[0]).days
    by_source: dict[str, list[Feature]] = {"contacts": [], "tags": [], "persons": [], "derived": []}
    for f in cat.features + cat.inputs:
        by_source[f.source].append(f)
    helpers = {p for f in by_source["derived"] for p in f.inputs if p in derived_module.HELPER_COLUMNS}
    ctes: dict[str, tuple[str, str]] = {"cohort": ("", cohort_sql(as_of_list))}  # name → (hint, SQL)
    some = ([f"hash(person_id) % {group[1]} = {group[0]}"] if group else []) + ([f"({people})"] if people else [])
    if windowed and not shared:
        raise WobbleError("the window tables come with the shared tables (see build_features)")
    if some and not shared:
        raise WobbleError("some of the people need the shared tables (team_feed is over everyone)")
    pseudonym = "_person_id" if windowed else "person_id"  # the person's pseudonym, in `persons`
    if windowed:  # people by their whole-number key, and their pseudonym (see window_tables)
        ctes = {"persons": ("", f"""
            SELECT p.* REPLACE (k.person_id AS person_id), p.person_id AS _person_id
            FROM (SELECT * FROM main.persons WHERE {' AND '.join(some) or 'true'}) p
            JOIN person_keys k ON k._person_id = p.person_id""")} | ctes
    elif some:  # the tables, seen through CTEs of the same names holding those people only
        ctes = {t: ("NOT MATERIALIZED ", f"SELECT * FROM main.{t} WHERE {' AND '.join(some)}")
                for t in ("persons", "contacts", "tags")} | ctes
    joins: list[str] = []  # block joins onto the cohort
    parts_sql: dict[str, str] = {}  # part column → its value in the joined row
    part_block: dict[str, str] = {}  # part column → the block it comes from
    block_on: dict[str, str] = {}  # block → the columns it joins on
    features_sql: dict[str, str] = {}  # declared feature → its SQL over parts

    def add_block(alias: str, sql: str, names: list[str], on: str = "(person_id, as_of)") -> None:
        ctes[alias] = ("", sql)
        joins.append(f"LEFT JOIN {alias} USING {on}")
        part_block.update({n: alias for n in names})
        block_on[alias] = on

    for source in ("contacts", "tags"):
        prefix = f"_{source[0]}"
        names: dict[str, str] = {}  # each distinct predicate, computed once per record
        parts: dict[Part, str] = {}  # each distinct part, computed once per (person, as_of)
        per_value: dict[str, list[tuple[str, PerValue, int]]] = {}
        conditional: list[tuple[Feature, list[tuple[str, Part]]]] = []
        for f in by_source[source]:
            fill = {key: "true" if sql == "true" else names.setdefault(sql, f"_p{len(names)}")
                    for key, sql in f.predicates}
            if isinstance(f.sql, PerValue):
                pv = PerValue(f.sql.column, f.sql.kind, _fill(f.sql.recent, fill), _fill(f.sql.before, fill))
                per_value.setdefault(pv.column, []).append((f.column, pv, f.reach_days))
                features_sql[f.column] = f.column
                continue
            resolved = [Part(p.kind, _fill(p.pred, fill), p.lo, p.hi, _fill(p.sql, fill)) for p in f.sql.parts]
            if f.only_if:
                refs = [f"{f.column}__{k}" for k in range(len(resolved))]
                conditional.append((f, list(zip(refs, resolved, strict=True))))
            else:
                refs = [parts.setdefault(p, f"{prefix}{len(parts)}") for p in resolved]
            features_sql[f.column] = _fill(f.sql.final, {str(k): r for k, r in enumerate(refs)})
            if f.only_if:  # blank for everyone else
                features_sql[f.column] = f"CASE WHEN {refs[0]} IS NOT NULL THEN {features_sql[f.column]} END"
        predicates = {n: s for s, n in names.items()}
        columns = _columns_read(cat, source)
        window = (f"SELECT * FROM {source}_window WHERE person_id IN (SELECT person_id FROM persons)"
                  if windowed else window_sql(source, as_of_list, look, columns))
        records = f"({records_sql(source, window, columns, systems, predicates)})"
        if windowed:  # a pass's own records, prepared once for its blocks; over everyone at once
            # (one pass), preparing them whole would hold a year of records in memory
            ctes[f"{source}_records"] = ("", records[1:-1])
            records = f"{source}_records"

        def slides(part: Part) -> bool:
            """Slide it from date to date when the window is long against the dates' span."""
            return (len(as_ofs) > 1 and part.kind != "sql" and part.hi >= 2 * span  # noqa: B023
                    and not any(_PSEUDO.search(sql) for n, sql in predicates.items()  # noqa: B023
                                if re.search(rf"\b{n}\b", part.pred)))

        by_window: dict[tuple[int, int], list[tuple[str, Part]]] = {}  # parts that slide
        counted: list[tuple[str, Part]] = []  # parts counted at every date
        for part, name in parts.items():
            (by_window.setdefault((part.lo, part.hi), []) if slides(part) else counted).append((name, part))
        # A window slides in a block of its own; for a part or two that costs more than
        # counting them at every date in a block that is read anyway.
        for window in [w for w, group in by_window.items() if len(group) < SLIDE_MIN_PARTS]:
            counted += by_window.pop(window)
        slid = [x for group in by_window.values() for x in group]
        tiers: dict[int, list[tuple[str, Part]]] = {}
        for name, part in counted:
            tiers.setdefault(min(t for t in TIERS + (look,) if t >= part.hi), []).append((name, part))
        for tier, group in sorted(tiers.items()):
            add_block(f"{source}_{tier}d", _plain_block([(n, _within(p.direct(), tier)) for n, p in group],
                      guarded_sql(records, as_of_list, tier, predicates)), [n for n, _ in group])
            for n, p in group:
                parts_sql[n] = f"coalesce({n}, 0)" if p.kind == "count" else n
        if slid:
            reach = max(p.hi for _, p in slid)
            first = guarded_sql(records, _dates(as_ofs[:1]), reach, predicates)
            block = _plain_block([(f"{n}_first", _within(p.direct(), reach)) for n, p in slid], first)
            add_block(f"{source}_first", f"SELECT * EXCLUDE (as_of) FROM ({block})",
                      [f"{n}_first" for n, _ in slid], on="(person_id)")
            first_day = _day_number(f"DATE '{as_ofs[0].isoformat()}'")
            for k, ((lo, hi), group) in enumerate(sorted(by_window.items())):
                add_block(f"{source}_slide{k}", _slide_sql(records, as_ofs, lo, hi, group), [n for n, _ in group])
            for n, p in slid:
                if p.kind == "count":  # INTEGER, as a count not slid: the table's types must
                    # not depend on which dates were built together (a sum would be BIGINT)
                    parts_sql[n] = f"(coalesce({n}_first, 0) + coalesce({n}, 0))::INTEGER"
                else:  # the latest day, then days before this as-of date if still in the window
                    # INTEGER, as days_before is when not slid
                    since = f"{_day_number('as_of')} - greatest({first_day} - {n}_first, {n})"
                    parts_sql[n] = f"CASE WHEN {since} <= {p.hi} THEN {since} END"
        for col, feats in per_value.items():
            reach = max(r for _, _, r in feats)
            block = _per_value_block(col, [(c, pv) for c, pv, _ in feats],
                                     guarded_sql(records, as_of_list, reach, predicates))
            add_block(f"{source}_by_{col}", _within(block, reach),
                      [c for c, _, _ in feats])
            parts_sql.update({c: c for c, _, _ in feats})
        for k, (f, group) in enumerate(conditional):
            # only the (person, as_of) pairs meeting the condition, from the parts above
            cond = _substitute(f.only_if, {c: _substitute(features_sql[c], parts_sql)
                                           for c in features_sql if c in f.only_if})
            needed = sorted({part_block[n] for n in _PART_REF.findall(cond)})
            ctes[f"only_{source}_{k}"] = ("MATERIALIZED ", "SELECT k.person_id, k.as_of FROM cohort k "
                                          + " ".join(f"LEFT JOIN {a} USING {block_on[a]}" for a in needed)
                                          + f" WHERE {cond}")
            guarded = guarded_sql(records, as_of_list, f.reach_days, predicates, only=f"only_{source}_{k}")
            add_block(f"{source}_{f.column}", _plain_block(
                [(n, _within(p.direct(), f.reach_days)) for n, p in group],
                f"SELECT g.* FROM ({guarded}) g SEMI JOIN only_{source}_{k} USING (person_id, as_of)"),
                [n for n, _ in group])
            parts_sql.update({n: n for n, _ in group})
    for alias in {part_block[n] for c, (_, sql) in ctes.items() if c.startswith("only_")
                  for n in _PART_REF.findall(sql)}:
        ctes[alias] = ("MATERIALIZED ", ctes[alias][1])
    layer1 = [f"{sql} AS {n}" for n, sql in parts_sql.items()]
    layer1 += [f"({f.sql}) AS {f.column}" for f in by_source["persons"]]
    if "first_record_at" in helpers:
        if not shared:
            ctes["first_any"] = ("", FIRST_ANY_SQL)
            ctes["first_late"] = ("", first_late_sql(as_of_list))
        ctes["first_record"] = ("", _first_record_sql(pseudonym))
        joins.append("LEFT JOIN first_record USING (person_id, as_of)")
        layer1.append("first_record.first_record_at")
    if "team_quiet_periods" in helpers:
        if not shared:
            ctes["team_feed"] = ("", team_feed_sql(as_of_list))
        joins.append("LEFT JOIN team_feed ON team_feed.team_id = k.team_id AND team_feed.as_of = k.as_of")
        layer1.append("team_feed.team_quiet_periods")
    declared = [f for f in cat.features + cat.inputs if f.source in ("contacts", "tags")]
    layer2 = [(f"coalesce({features_sql[f.column]}, 0)" if f.missing == "zero" and not f.internal
               else features_sql[f.column]) + f" AS {f.column}" for f in declared]
    layer2 += [f.column for f in by_source["persons"]] + [h for h in sorted(helpers)]
    derived = {f.column: (f"coalesce({f.sql}, 0)" if f.missing == "zero" else f.sql)
               for f in by_source["derived"]}
    outputs = [f"{derived[f.column]} AS {f.column}" if f.column in derived else f.column
               for f in cat.features]
    return [(name, hint, sql) for name, (hint, sql) in ctes.items()], f"""
    SELECT person_id, as_of, team_id,
           {', '.join(outputs)}
    FROM (
        SELECT person_id, as_of, team_id,
               {', '.join(layer2)}
        FROM (
            SELECT p.{pseudonym} AS person_id, k.as_of, k.team_id,
                   {', '.join(layer1)}
            FROM cohort k JOIN persons p USING (person_id)
            {' '.join(joins)}
        )
    )"""


def _substitute(text: str, values: dict[str, str]) -> str:
    """Replace each whole word of `text` that is a key of `values` by its value, in brackets."""
    return re.sub(r"\b([a-z_][a-z0-9_]*)\b", lambda m: f"({values[m.group(1)]})" if m.group(1) in values
                  else m.group(1), text)


@dataclass
class FeaturesResult:
    as_ofs: list[date]
    rows: int
    columns: int
    seconds: float
    batches: int = 1

    def summary(self) -> dict:
        return {"as_ofs": [d.isoformat() for d in self.as_ofs], "rows": self.rows,
                "features": self.columns, "batches": self.batches, "seconds": round(self.seconds, 2)}


def compute_snapshots(con, cat: Catalogue, as_ofs: list[date], *, shared: bool = False) -> pl.DataFrame:
    """The snapshot rows for `as_ofs` as a DataFrame, without writing anything.

    `shared`: the tables of `shared_tables` are already on `con`, computed over everyone (as for
    one bucket of people on a Dask worker: wobble.scale)."""
    sql = compile_sql(cat, sorted(set(as_ofs)), source_systems(con), shared=shared)
    return con.sql(sql + " ORDER BY as_of, person_id").pl()


def source_systems(con) -> tuple[str, ...]:
    """Every `source_system` in the warehouse, sorted: the vocabulary of its bit masks."""
    rows = con.execute("SELECT DISTINCT source_system FROM contacts UNION "
                       "SELECT DISTINCT source_system FROM tags ORDER BY 1").fetchall()
    return tuple(r[0] for r in rows)


def shared_tables(con, as_ofs: list[date]) -> None:
    """Temp tables every group of people reads: `first_any` (one row per person), `first_late`
    (a few people and dates) and `team_feed` (one row per team and as-of date), computed once
    per run."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE first_any AS {FIRST_ANY_SQL}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE first_late AS {first_late_sql(_dates(as_ofs))}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE team_feed AS {team_feed_sql(_dates(as_ofs))}")


def _columns_read(cat: Catalogue, source: str) -> tuple[str, ...]:
    """The columns of `source` that some feature reads, with `person_id` and `source_system`
    (whose values set the bit masks): all the compiled query needs of a record."""
    texts = []
    for f in cat.features + cat.inputs:
        if f.source == source:
            texts += [sql for _, sql in f.predicates]
            if isinstance(f.sql, PerValue):
                texts += [f.sql.column, f.sql.recent, f.sql.before]
            else:
                texts += [p.pred for p in f.sql.parts] + [p.sql for p in f.sql.parts]
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", re.sub(r"'[^']*'", "''", " ".join(texts))))
    return tuple(c for c in SOURCES[source] if c in words or c in ("person_id", "source_system"))


def window_tables(con, cat: Catalogue, as_ofs: list[date], systems: tuple[str, ...], groups: int) -> None:
    """Temp tables for a run in passes, read once: `person_keys` gives each person a whole-number
    key (`person_id`) beside their pseudonym (`_person_id`), and `contacts_window` and
    `tags_window` hold everyone's records that may count at some date of the run (`window_sql`)
    by that key, with vocabulary columns as ENUMs, in the order of the groups of `_passes`.

    Each pass then reads its own people's stretch rather than every record again, and groups
    and joins on a whole number rather than a string; the records take about a third of the
    memory they would as strings."""
    con.execute("CREATE OR REPLACE TEMP TABLE person_keys AS SELECT person_id AS _person_id, "
                f"(row_number() OVER ())::INTEGER AS person_id, hash(person_id) % {groups} AS _group "
                "FROM persons")
    for source in ("contacts", "tags"):
        columns = _columns_read(cat, source)
        enums = ", ".join(f"w.{c}::ENUM({', '.join(_quote(x) for x in v)}) AS {c}"
                          for c, v in _vocab(columns, systems).items())
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {source}_window AS
            SELECT w.* REPLACE (k.person_id AS person_id, {enums})
            FROM ({window_sql(source, _dates(sorted(as_ofs)), cat.lookback_days, columns)}) w
            JOIN person_keys k ON k._person_id = w.person_id
            ORDER BY k._group""")


def build_features(cfg: Config, as_ofs: list[date], *, wait_seconds: float = 0.0,
                   people: str | None = None) -> FeaturesResult:
    """Compute snapshots for `as_ofs` and replace any earlier snapshots at those dates.

    `people`, SQL over `person_id`, keeps only the people it is true of: the snapshots at those
    dates are then of them alone (training builds its test dates for its test people only).

    In passes of about BATCH_ROWS snapshot rows (see `_passes`), each over every date for a group
    of people chosen by a hash of `person_id`, so that weekly dates slide (see `_slide_sql`) and
    memory stays bounded at any size. Each pass runs its blocks one at a time (`_run_pass`).
    DuckDB may use up to MEMORY_LIMIT and spills to disk beyond it.
    """
    if not as_ofs:
        raise WobbleError("give at least one as-of date")
    t0 = time.perf_counter()
    cat = load_catalogue(cfg.features_dir)
    as_ofs = sorted(set(as_ofs))
    with connect(cfg.warehouse, wait_seconds=wait_seconds) as con:
        if not scalar(con, "SELECT count(*) FROM persons"):
            raise WobbleError("the warehouse has no persons: run `wobble ingest` first")
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET preserve_insertion_order = false")  # rows are keyed; order is not needed
        n_people = scalar(con, f"SELECT count(*) FROM persons WHERE NOT opted_out AND ({people or 'true'})") or 1
        systems = source_systems(con)
        passes = _passes(n_people, len(as_ofs))
        windowed = len(passes) > 1
        # The passes are computed on a second connection, outside the transaction that replaces
        # the snapshots: a temp table dropped inside a transaction is kept until it ends, and a
        # dozen passes' worth of them filled memory and spilled gigabytes to disk.
        work = con.cursor()
        try:
            shared_tables(work, as_ofs)
            if windowed:
                window_tables(work, cat, as_ofs, systems, len(passes))
            with transaction(con):
                prepare_snapshots(con, compile_sql(cat, as_ofs, systems), as_ofs)
                for group in passes:
                    _run_pass(work, con, compile_steps(cat, as_ofs, systems, shared=True, group=group,
                                                       people=people, windowed=windowed))
                rows = scalar(con, f"SELECT count(*) FROM feature_snapshots "
                                   f"WHERE as_of IN (SELECT unnest({_dates(as_ofs)}))")
        finally:
            work.close()
    return FeaturesResult(as_ofs, int(rows), len(cat.features), time.perf_counter() - t0, len(passes))


BATCH_ROWS = 1_600_000  # cohort rows (people × as-of dates) aggregated at once: bounds memory
# (1,000,000 people at one date, or 100,000 at 13 weekly dates, peak near the 4 GB limit). At
# 1,000,000 people × 13 dates, 8 passes ran faster than 11 (1.2 million rows) or 6 or 7 (spilling).
MEMORY_LIMIT = "4GB"


def _passes(people: int, dates: int) -> list[tuple[int, int] | None]:
    """The group of people (k, of n groups by hash) of each pass, each pass taking every date:
    as few groups as keep people × dates near BATCH_ROWS; None when one pass holds everyone.

    Splitting people rather than dates keeps weekly dates together, where counts over long
    windows slide from date to date instead of being counted again for each one."""
    groups = -(-people * dates // BATCH_ROWS)  # ceiling
    return [None] if groups <= 1 else [(k, groups) for k in range(groups)]


def _run_pass(work, con, steps: tuple[list[tuple[str, str, str]], str]) -> None:
    """Insert one pass's rows into `feature_snapshots` on `con`, computed on `work` (another
    connection to the same warehouse): each block of `compile_steps` first made a temp table of
    its own (named as its CTE, so it shadows a table of the warehouse for the queries after it,
    as the CTE did), then the final select over them, fetched whole as Arrow and inserted.

    One statement for the whole query plans its dozen joins on guessed sizes and, at 100,000
    people × 13 dates, ran out of memory at 4 GB; block by block DuckDB knows each table's size,
    and only one block's working memory is live at a time. The final rows are fetched whole
    (about 700 bytes a row) rather than streamed: a stream is computed and inserted on one
    thread, and took a third longer."""
    blocks, final = steps
    for name, _, body in blocks:
        work.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {body}")
    rows = work.sql(final).to_arrow_table()
    for name, _, _ in blocks:
        work.execute(f"DROP TABLE temp.{name}")
    # not `register`: a view dropped inside a transaction, and the Arrow table it holds, are
    # kept until the transaction ends (a gigabyte a pass at 1,000,000 people × 13 dates)
    con.from_arrow(rows).insert_into("feature_snapshots")


def prepare_snapshots(con, sql: str, as_ofs: list[date]) -> None:
    """Make `feature_snapshots` ready for the rows of query `sql` at `as_ofs`: created with the
    query's columns (rebuilt if the catalogue changed them), without earlier rows at those dates."""
    rel = con.sql(sql)
    new = list(zip(rel.columns, [str(t) for t in rel.types], strict=True))
    exists = scalar(con, "SELECT count(*) FROM information_schema.tables "
                         "WHERE table_name = 'feature_snapshots' AND table_type = 'BASE TABLE'")
    if exists:
        old = [(r[0], r[1]) for r in con.execute("DESCRIBE feature_snapshots").fetchall()]
        if old == new:
            con.execute(f"DELETE FROM feature_snapshots WHERE as_of IN (SELECT unnest({_dates(as_ofs)}))")
            return
        con.execute("DROP TABLE feature_snapshots")
    cols = ", ".join(f"{name} {typ}" for name, typ in new)
    con.execute(f"CREATE TABLE feature_snapshots ({cols})")


def dates_to_build(con, as_ofs: list[date]) -> list[date]:
    """Those of `as_ofs` whose snapshots are missing or are not of the whole cohort (training
    builds its test dates for its held-out people only), so a list or a monitor built on them
    would silently leave people out."""
    as_ofs = sorted(set(as_ofs))
    if not as_ofs or not table_exists(con, "feature_snapshots"):
        return as_ofs
    dl = _dates(as_ofs)
    complete = {r[0] for r in con.execute(f"""
        SELECT k.as_of
        FROM (SELECT as_of, count(*) AS n FROM ({cohort_sql(dl)}) GROUP BY as_of) k
        JOIN (SELECT as_of, count(*) AS n FROM feature_snapshots WHERE as_of IN (SELECT unnest({dl}))
              GROUP BY as_of) s USING (as_of)
        WHERE s.n = k.n""").fetchall()}
    return [d for d in as_ofs if d not in complete]


def weekly_as_ofs(end: date, weeks: int, step: int = 1) -> list[date]:
    """`weeks` Mondays ending at `end` (a Monday), `step` weeks apart, oldest first."""
    return sorted(end - timedelta(weeks=k * step) for k in range(weeks))


def catalogue_markdown(cat: Catalogue) -> str:
    """The catalogue as Markdown (docs/features.md): one table per family."""
    n_derived = sum(f.source == "derived" for f in cat.features)
    lines = [
        "# Feature catalogue",
        "",
        "<!-- Generated by `wobble features list --markdown > docs/features.md`; do not edit. -->",
        "",
        f"{len(cat.features)} columns of `feature_snapshots` in {len(cat.families)} families "
        f"({len(cat.predictors)} are model inputs; {n_derived} are derived features from "
        "`src/wobble/derived.py`). Each row of `feature_snapshots` is one person at one as-of date; "
        "a record counts only if it was known before that date (`recorded_at < as_of`) and, for a "
        "window of N days, happened in the N days before it. Tags are timed by when they were "
        "recorded. *Blank* means missing, never zero.",
        "",
    ]
    for family, description in cat.families:
        feats = [f for f in cat.features if f.family == family]
        if not feats:
            continue
        lines += [f"## {family}", "", description, "",
                  "| column | what it says | unit | model input |", "|---|---|---|---|"]
        for f in feats:
            source = " (derived)" if f.source == "derived" else ""
            unit = f.unit or "yes/no"  # an empty unit marks a 1/0 flag
            text = f.description.replace("|", "\\|")
            lines.append(f"| `{f.column}`{source} | {text} | {unit} | {'yes' if f.predictor else 'no'} |")
        lines.append("")
    return "\n".join(lines)
