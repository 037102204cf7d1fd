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

The aggregates an author may write are listed in `wobble.features.aggregates`. Besides the table's
columns, `where` and aggregates may use `days_before`, `weeks_before` (1 = the last 7 days) and
`months_before` (1 = the last 30 days). Derived features that no single aggregate can express are
plain functions in `wobble.features.derived`, compiled into the same query.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wobble.core.errors import ConfigError
from wobble.core.vocab import STRENGTH_TAGS
from wobble.features import derived as derived_module
from wobble.features.aggregates import _SHARE, _SHARE_CHANGE, Aggregate, PerValue, _aggregate
from wobble.features.language import (
    EACH,
    KEYWORDS,
    LOOKBACK_DAYS,
    NAME,
    SOURCES,
    WINDOW,
    check_columns,
    fill,
    macros,
    window_phrase,
)


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
    # a feature about change: its value reads as a rise at or above this (e.g. 1 more contact than
    # usual, 1.25 times the usual rate); lists need one such reason for early warning
    rises_at: float | None = None
    # which way concern goes: "higher" values concern more (the default), "lower" ones do (days
    # since, strengths: the default for those), or "none" (age, deprivation)
    concern: Literal["higher", "lower", "none"] | None = None
    # a change feature's subject as a huddle says it, plural ("GP appointments", "concerns noted by
    # frontline staff"): its reasons then read as change ("3 more GP appointments than usual for
    # them in the last 30 days") rather than as the description
    noun: str | None = None

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: list[str]) -> list[str]:
        for w in v:
            if w != "all" and not WINDOW.match(w):
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
    rises_at: float | None = None  # a change feature: reads as a rise at or above this value
    concern: str = "higher"  # higher | lower | none: which way of the typical value concerns more
    noun: str | None = None  # a change feature's subject, plural, for reasons that read as change
    reads: str = ""  # how a change feature's value reads (`CHANGE_READINGS`), from its aggregate
    measure: str = ""  # the declaration it was expanded from, before its windows: one measure's windows share it


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
            names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", feat.only_if)) - KEYWORDS
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
        name = fill(decl.name, item)
        if not NAME.match(name):
            raise ConfigError(f"{fname}: feature name {name!r} must be lower_snake_case")
        where = macros(fill(decl.where, item))
        check_columns(fname, name, decl.source, where, "where")
        if decl.source == "persons":
            if not decl.expression:
                raise ConfigError(f"{fname}: feature {name!r}: persons features need an expression")
            expr = macros(decl.expression)
            check_columns(fname, name, "persons", expr, "expression")
            out.append(Feature(name, family, "persons", fill(decl.description, item), decl.unit,
                               decl.missing, decl.predictor, expr, None, 0, decl.internal,
                               rises_at=decl.rises_at, concern=decl.concern or "none"))
            continue
        if not decl.aggregate:
            raise ConfigError(f"{fname}: feature {name!r}: needs an aggregate")
        for w in decl.windows:
            days = LOOKBACK_DAYS if w == "all" else int(WINDOW.match(w).group(1))
            column = name if w == "all" else f"{name}_{w}"
            aggregate = fill(decl.aggregate, item)
            sql, reach = _aggregate(fname, column, decl.source, aggregate, days, decl.internal)
            desc = fill(decl.description, {"window": window_phrase(days), **item})
            predicates = (("where", where),)
            if m := (_SHARE_CHANGE.match(aggregate) or _SHARE.match(aggregate)):
                predicates += (("cond", macros(m.group(1))),)
            out.append(Feature(column, family, decl.source, desc, decl.unit, decl.missing,
                               decl.predictor, sql, days, reach, decl.internal, (), predicates,
                               decl.only_if, decl.rises_at, _concern(decl, aggregate, item),
                               fill(decl.noun, item) if decl.noun else None, _reads(aggregate), name))
    return out


# How a change feature's value reads, by its aggregate: excess "3 more … than usual", ratio "2.5
# times their usual rate", slope "rising: about 1 more a month", acceleration "rising faster",
# share_change "up 20 points", new "2 new …".
CHANGE_READINGS = ("excess", "ratio", "slope", "acceleration", "share_change", "new")


def _reads(aggregate: str) -> str:
    head = aggregate.strip().split("(", 1)[0].strip()
    return head if head in CHANGE_READINGS else ""


def _concern(decl: FeatureDecl, aggregate: str, item: dict[str, str]) -> str:
    """Which way from the typical value concerns more: as declared, else lower for days since an
    event (a recent one concerns more) and for strengths (fewer concern more), higher otherwise."""
    if decl.concern:
        return decl.concern
    if aggregate.strip().startswith("days_since") or "strength" in decl.unit or item.get("tag") in STRENGTH_TAGS:
        return "lower"
    return "higher"


# --- derived features --------------------------------------------------------------------------

def _derived(families: dict[str, str], declared: dict[str, str]) -> list[Feature]:
    """Every public function of `wobble.features.derived` marked with `@derived`, as a catalogue entry."""
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
                           spec.predictor, fn(*params), None, 0, False, params, rises_at=spec.rises_at,
                           concern=spec.concern))
    out.sort(key=lambda f: inspect.getsourcelines(getattr(derived_module, f.column))[1])
    return out



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
