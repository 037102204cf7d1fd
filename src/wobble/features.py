"""Features: declared once in YAML under `features/`, compiled to one DuckDB query.

Reads `persons`, `contacts` and `tags`; writes `feature_snapshots`, one row per
(person_id, as_of) for everyone in the cohort at that date (registered, alive, not opted out).

A feature family is one YAML file: a list of features, each with a name, a source table, a filter
(`where`), an aggregate, windows and the plain-language sentence a huddle reads. The compiler, not
the author, adds the time guard: a record counts at as-of date T only if `recorded_at < T`
(known before T) and, for a window of w days, it happened in [T − w, T). For example

    name: ae_attendance, where: service = 'ae_attendance', aggregate: count(*), windows: [30d]

becomes the column `ae_attendance_30d`:

    count(*) FILTER (WHERE service = 'ae_attendance' AND occurred_at >= as_of - INTERVAL 30 DAY)

over the contacts joined to each as-of date on `recorded_at < as_of AND occurred_at < as_of`.
Many as-of dates come from one pass: contacts are joined to every as-of date they can count for.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wobble.config import Config
from wobble.errors import ConfigError, WobbleError
from wobble.vocab import CRISIS_SERVICES, SERVICE_LABELS, SERVICES, age_band_sql, sql_list
from wobble.warehouse import connect, scalar, transaction

SOURCES = {
    "contacts": ("person_id", "occurred_at", "recorded_at", "service", "status", "mode",
                 "professional_id", "source_system"),
    "tags": ("person_id", "recorded_at", "tag", "polarity", "author_role", "source_system"),
    "persons": ("birth_year", "sex", "imd_decile", "ethnicity_group", "registered_on", "team_id"),
}
# Placeholders a `where` may use; expanded by the compiler.
MACROS = {"{crisis_services}": sql_list(CRISIS_SERVICES)}
_WINDOW = re.compile(r"^(\d+)d$")
_AGG = re.compile(r"^(count|sum|max|min|avg)\((DISTINCT\s+)?(.+)\)$", re.IGNORECASE | re.DOTALL)
_DAYS_SINCE = re.compile(r"^days_since\((max|min)\((\w+)\)\)$")
_SHARE = re.compile(r"^share\((.+)\)$", re.DOTALL)
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureDecl(_Strict):
    """One feature as written in YAML (before `each` expansion)."""

    name: str
    source: str
    description: str
    aggregate: str | None = None  # contacts/tags: an aggregate; persons: an expression
    where: str = "true"
    windows: list[str] = Field(default_factory=lambda: ["all"])
    unit: str = ""
    missing: Literal["zero", "null"] = "zero"
    each: Literal["service"] | None = None
    predictor: bool = True  # false: kept for fairness reporting or caveats, never a model input
    expression: str | None = None  # persons only: a scalar SQL expression of the person's row

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
    source: str
    description: str  # with {window} filled in
    unit: str
    missing: str
    predictor: bool
    sql: str  # the aggregate (or expression) with its filter
    window_days: int | None


@dataclass(frozen=True)
class Catalogue:
    features: tuple[Feature, ...]
    lookback_days: int

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.features]

    @property
    def predictors(self) -> list[str]:
        return [f.column for f in self.features if f.predictor]

    def get(self, column: str) -> Feature:
        for f in self.features:
            if f.column == column:
                return f
        raise KeyError(column)


def window_phrase(days: int | None) -> str:
    if days is None:
        return "the last three years"
    if days % 365 == 0:
        years = days // 365
        return "year" if years == 1 else f"{years} years"
    return f"{days} days"


def load_catalogue(features_dir: Path) -> Catalogue:
    """Read every `*.yml` under `features_dir`; fail loudly on anything ambiguous."""
    files = sorted(Path(features_dir).glob("*.yml"))
    if not files:
        raise ConfigError(f"no feature files (*.yml) in {features_dir}")
    out: list[Feature] = []
    seen: dict[str, str] = {}
    lookback = 365
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
        for decl in fam.features:
            for feat in _expand(fam.family, decl, path.name):
                if feat.column in seen:
                    raise ConfigError(
                        f"{path.name}: feature {feat.column!r} is already declared in {seen[feat.column]}"
                    )
                seen[feat.column] = path.name
                out.append(feat)
                if feat.window_days:
                    lookback = max(lookback, feat.window_days)
    return Catalogue(tuple(out), lookback)


def _expand(family: str, decl: FeatureDecl, fname: str) -> list[Feature]:
    if decl.source not in SOURCES:
        raise ConfigError(
            f"{fname}: feature {decl.name!r}: unknown source {decl.source!r} "
            f"(one of: {', '.join(SOURCES)})"
        )
    items = [{}] if decl.each is None else [
        {"service": s, "service_label": SERVICE_LABELS[s]} for s in SERVICES
    ]
    out = []
    for item in items:
        name = decl.name.format(**item) if item else decl.name
        if not _NAME.match(name):
            raise ConfigError(f"{fname}: feature name {name!r} must be lower_snake_case")
        where = decl.where.format(**item) if item else decl.where
        for macro, value in MACROS.items():
            where = where.replace(macro, value)
        _check_columns(fname, name, decl.source, where)
        if decl.source == "persons":
            if not decl.expression:
                raise ConfigError(f"{fname}: feature {name!r}: persons features need an expression")
            out.append(Feature(name, family, "persons", decl.description, decl.unit, decl.missing,
                               decl.predictor, decl.expression, None))
            continue
        if not decl.aggregate:
            raise ConfigError(f"{fname}: feature {name!r}: needs an aggregate")
        for w in decl.windows:
            days = None if w == "all" else int(_WINDOW.match(w).group(1))
            column = f"{name}_{w}" if w != "all" else name
            time_col = "occurred_at" if decl.source == "contacts" else "recorded_at"
            cond = where if days is None else f"({where}) AND {time_col} >= as_of - INTERVAL {days} DAY"
            sql = _aggregate_sql(fname, name, decl.aggregate, cond, time_col)
            desc = decl.description.format(window=window_phrase(days), **item)
            out.append(Feature(column, family, decl.source, desc, decl.unit, decl.missing,
                               decl.predictor, sql, days))
    return out


def _check_columns(fname: str, name: str, source: str, where: str) -> None:
    """Unknown columns in a filter are errors at load time, not at query time."""
    stripped = re.sub(r"'[^']*'", "''", where)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", stripped))
    keywords = {"and", "or", "not", "in", "is", "null", "true", "false", "between", "like",
                "lower", "upper", "coalesce", "as_of", "interval", "day", "days"}
    unknown = sorted(w for w in words - keywords if w not in SOURCES[source])
    if unknown:
        raise ConfigError(
            f"{fname}: feature {name!r}: unknown column(s) {', '.join(unknown)} in 'where' "
            f"for source {source} (columns: {', '.join(SOURCES[source])})"
        )


def _aggregate_sql(fname: str, name: str, aggregate: str, cond: str, time_col: str) -> str:
    agg = aggregate.strip()
    if m := _DAYS_SINCE.match(agg):
        return f"date_diff('day', {m.group(1)}({m.group(2)}) FILTER (WHERE {cond}), as_of)"
    if m := _SHARE.match(agg):
        return (f"count(*) FILTER (WHERE ({cond}) AND ({m.group(1)}))::DOUBLE "
                f"/ nullif(count(*) FILTER (WHERE {cond}), 0)")
    if m := _AGG.match(agg):
        fn, distinct, arg = m.group(1), m.group(2) or "", m.group(3)
        return f"{fn}({distinct}{arg}) FILTER (WHERE {cond})"
    raise ConfigError(
        f"{fname}: feature {name!r}: cannot compile aggregate {aggregate!r}; use count(*), "
        "count(DISTINCT col), sum/max/min/avg(expr), days_since(max(col)) or share(condition)"
    )


# ---------------------------------------------------------------------------------------------


def cohort_sql(as_of_list: str) -> str:
    """People in the cohort at each as-of date: registered before it, alive, not opted out."""
    return f"""
        SELECT p.person_id, a.as_of, p.team_id
        FROM persons p CROSS JOIN (SELECT unnest({as_of_list}) AS as_of) a
        WHERE NOT p.opted_out AND p.team_id IS NOT NULL
          AND (p.registered_on IS NULL OR p.registered_on < a.as_of)
          AND (p.died_on IS NULL OR p.died_on >= a.as_of)
    """


def compile_sql(cat: Catalogue, as_ofs: list[date]) -> str:
    """One query returning (person_id, as_of, team_id, every feature) for all as-of dates."""
    as_of_list = "[" + ", ".join(f"DATE '{d.isoformat()}'" for d in as_ofs) + "]"
    look = cat.lookback_days
    parts: dict[str, list[Feature]] = {"contacts": [], "tags": [], "persons": []}
    for f in cat.features:
        parts[f.source].append(f)

    def agg_block(source: str, time_col: str) -> str:
        cols = ",\n               ".join(f"{f.sql} AS {f.column}" for f in parts[source])
        extra = " AND s.occurred_at < a.as_of" if source == "contacts" else ""
        return f"""
        SELECT s.person_id, a.as_of,
               {cols}
        FROM {source} s
        JOIN (SELECT unnest({as_of_list}) AS as_of) a
          ON s.recorded_at < a.as_of{extra}
         AND s.{time_col} >= a.as_of - INTERVAL {look} DAY
        GROUP BY s.person_id, a.as_of"""

    def final(f: Feature, alias: str) -> str:
        ref = f"{alias}.{f.column}"
        return f"coalesce({ref}, 0) AS {f.column}" if f.missing == "zero" else f"{ref} AS {f.column}"

    person_cols = ",\n           ".join(
        f"({f.sql}) AS {f.column}" for f in parts["persons"]
    )
    selects = [final(f, "c") for f in parts["contacts"]] + [final(f, "t") for f in parts["tags"]]
    selects += [f.column for f in parts["persons"]]
    return f"""
    WITH cohort AS ({cohort_sql(as_of_list)}),
    c AS ({agg_block('contacts', 'occurred_at')}),
    t AS ({agg_block('tags', 'recorded_at')}),
    p AS (
        SELECT k.person_id, k.as_of,
           {person_cols}
        FROM cohort k JOIN persons USING (person_id)
    )
    SELECT k.person_id, k.as_of, k.team_id,
           {', '.join(selects)}
    FROM cohort k
    LEFT JOIN c USING (person_id, as_of)
    LEFT JOIN t USING (person_id, as_of)
    LEFT JOIN p USING (person_id, as_of)
    """


@dataclass
class FeaturesResult:
    as_ofs: list[date]
    rows: int
    columns: int
    seconds: float

    def summary(self) -> dict:
        return {"as_ofs": [d.isoformat() for d in self.as_ofs], "rows": self.rows,
                "features": self.columns, "seconds": round(self.seconds, 2)}


def compute_snapshots(con, cat: Catalogue, as_ofs: list[date]) -> pl.DataFrame:
    """The snapshot rows for `as_ofs` as a DataFrame, without writing anything."""
    return con.sql(compile_sql(cat, sorted(set(as_ofs))) + " ORDER BY as_of, person_id").pl()


def build_features(cfg: Config, as_ofs: list[date], *, wait_seconds: float = 0.0) -> FeaturesResult:
    """Compute snapshots for `as_ofs` and replace any earlier snapshots at those dates."""
    if not as_ofs:
        raise WobbleError("give at least one as-of date")
    t0 = time.perf_counter()
    cat = load_catalogue(cfg.features_dir)
    as_ofs = sorted(set(as_ofs))
    sql = compile_sql(cat, as_ofs)
    with connect(cfg.warehouse, wait_seconds=wait_seconds) as con:
        if not scalar(con, "SELECT count(*) FROM persons"):
            raise WobbleError("the warehouse has no persons: run `wobble ingest` first")
        with transaction(con):
            con.execute(f"CREATE OR REPLACE TEMP TABLE new_snap AS {sql}")
            _replace_snapshots(con, as_ofs)
            rows = scalar(con, "SELECT count(*) FROM new_snap")
    return FeaturesResult(as_ofs, int(rows), len(cat.features), time.perf_counter() - t0)


def _replace_snapshots(con, as_ofs: list[date]) -> None:
    """Swap in the new rows; if the catalogue's columns changed, the table is rebuilt."""
    new_cols = [r[0] for r in con.execute("DESCRIBE new_snap").fetchall()]
    exists = scalar(con, "SELECT count(*) FROM information_schema.tables "
                         "WHERE table_name = 'feature_snapshots' AND table_type = 'BASE TABLE'")
    if exists:
        old_cols = [r[0] for r in con.execute("DESCRIBE feature_snapshots").fetchall()]
        if old_cols != new_cols:
            con.execute("DROP TABLE feature_snapshots")
            exists = False
    if not exists:
        con.execute("CREATE TABLE feature_snapshots AS SELECT * FROM new_snap")
        return
    con.execute("DELETE FROM feature_snapshots WHERE as_of IN (SELECT DISTINCT as_of FROM new_snap)")
    con.execute("INSERT INTO feature_snapshots SELECT * FROM new_snap")


def weekly_as_ofs(end: date, weeks: int, step: int = 1) -> list[date]:
    """`weeks` Mondays ending at `end` (a Monday), `step` weeks apart, oldest first."""
    from datetime import timedelta

    return sorted(end - timedelta(weeks=k * step) for k in range(weeks))


AGE_BAND_SQL = age_band_sql("age")
