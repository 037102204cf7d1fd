"""The feature query: the catalogue compiled to DuckDB SQL, with the time guard the compiler adds.

Reads `persons`, `contacts` and `tags`; returns one row per (person_id, as_of) for everyone in the
cohort at that date. A record counts at as-of date T only if it was known before T
(`recorded_at < T`), happened before T, and, for a window of w days, happened in [T − w, T):
`guarded_sql` joins each record to the as-of dates it may count for, with `days_before` (whole days
from the record's day to T; 1 = the day before). Many as-of dates come from one query: for weekly
dates, counts over long windows slide from one date to the next (`_slide_sql`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from wobble.core.errors import WobbleError
from wobble.core.sql import array, dates
from wobble.core.vocab import SOURCE_SYSTEMS
from wobble.features import derived as derived_module
from wobble.features.aggregates import Part, PerValue, _count, _whole, _within
from wobble.features.catalogue import Catalogue, Feature
from wobble.features.feeds import team_quiet_sql
from wobble.features.language import CODED, PERIOD_DAYS, PSEUDO_COLUMNS, SMALL_INTS, SOURCES, TIME_COLUMN, fill

# Features are computed in passes by how far back they reach: a 30-day count reads a twelfth
# of the records a one-year count does, at every as-of date.
TIERS = (30, 90, 182)
SLIDE_MIN_PARTS = 4  # fewer parts over a window are counted at each date, not slid (measured)


def cohort_sql(as_of_list: str) -> str:
    """People in the cohort at each as-of date: registered before it, alive, not opted out."""
    return f"""
        SELECT p.person_id, a.as_of, p.team_id
        FROM persons p CROSS JOIN (SELECT unnest({as_of_list}) AS as_of) a
        WHERE NOT p.opted_out AND p.team_id IS NOT NULL
          AND (p.registered_on IS NULL OR p.registered_on < a.as_of)
          AND (p.died_on IS NULL OR p.died_on >= a.as_of)
    """



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
    cols = [f"(1::UBIGINT << (list_position({array(v)}, {c}) - 1)::UBIGINT) AS {c}_bit"
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
    later = dates(as_ofs[1:])
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
            FROM ({_in_reach(records, dates(as_ofs), hi)}) r
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
    query = _Query(cat, sorted(as_ofs), systems, shared=shared, group=group, people=people, windowed=windowed)
    for source in ("contacts", "tags"):
        query.add_source(source)
    return query.steps()


@dataclass
class _SourceParts:
    """What one source's features need: each distinct predicate (computed once per record), each
    distinct part (once per person and date), the per-value features by column, and the features
    computed only where a condition holds, with their own parts."""

    predicates: dict[str, str] = field(default_factory=dict)  # name → SQL
    parts: dict[Part, str] = field(default_factory=dict)  # part → its column
    per_value: dict[str, list[tuple[str, PerValue, int]]] = field(default_factory=dict)
    conditional: list[tuple[Feature, list[tuple[str, Part]]]] = field(default_factory=list)


class _Query:
    """The blocks of `compile_steps` as they are added, and the final select over them."""

    def __init__(self, cat: Catalogue, as_ofs: list[date], systems: tuple[str, ...], *, shared: bool,
                 group: tuple[int, int] | None, people: str | None, windowed: bool):
        self.cat, self.as_ofs, self.systems, self.shared, self.windowed = cat, as_ofs, systems, shared, windowed
        self.as_of_list = dates(as_ofs)
        self.look = cat.lookback_days
        self.span = (as_ofs[-1] - as_ofs[0]).days
        self.by_source: dict[str, list[Feature]] = {"contacts": [], "tags": [], "persons": [], "derived": []}
        for f in cat.features + cat.inputs:
            self.by_source[f.source].append(f)
        self.helpers = {p for f in self.by_source["derived"] for p in f.inputs if p in derived_module.HELPER_COLUMNS}
        self.ctes: dict[str, tuple[str, str]] = {"cohort": ("", cohort_sql(self.as_of_list))}  # name → (hint, SQL)
        some = ([f"hash(person_id) % {group[1]} = {group[0]}"] if group else []) + ([f"({people})"] if people else [])
        if windowed and not shared:
            raise WobbleError("the window tables come with the shared tables (see build_features)")
        if some and not shared:
            raise WobbleError("some of the people need the shared tables (team_feed is over everyone)")
        self.pseudonym = "_person_id" if windowed else "person_id"  # the person's pseudonym, in `persons`
        if windowed:  # people by their whole-number key, and their pseudonym (see window_tables)
            self.ctes = {"persons": ("", f"""
            SELECT p.* REPLACE (k.person_id AS person_id), p.person_id AS _person_id
            FROM (SELECT * FROM main.persons WHERE {' AND '.join(some) or 'true'}) p
            JOIN person_keys k ON k._person_id = p.person_id""")} | self.ctes
        elif some:  # the tables, seen through CTEs of the same names holding those people only
            self.ctes = {t: ("NOT MATERIALIZED ", f"SELECT * FROM main.{t} WHERE {' AND '.join(some)}")
                         for t in ("persons", "contacts", "tags")} | self.ctes
        self.joins: list[str] = []  # block joins onto the cohort
        self.parts_sql: dict[str, str] = {}  # part column → its value in the joined row
        self.part_block: dict[str, str] = {}  # part column → the block it comes from
        self.block_on: dict[str, str] = {}  # block → the columns it joins on
        self.features_sql: dict[str, str] = {}  # declared feature → its SQL over parts

    def add_block(self, alias: str, sql: str, names: list[str], on: str = "(person_id, as_of)") -> None:
        self.ctes[alias] = ("", sql)
        self.joins.append(f"LEFT JOIN {alias} USING {on}")
        self.part_block.update({n: alias for n in names})
        self.block_on[alias] = on

    def add_source(self, source: str) -> None:
        """Every block over one source's records: counted, slid, per value, and conditional."""
        sp = self._collect(source)
        columns = _columns_read(self.cat, source)
        window = (f"SELECT * FROM {source}_window WHERE person_id IN (SELECT person_id FROM persons)"
                  if self.windowed else window_sql(source, self.as_of_list, self.look, columns))
        records = f"({records_sql(source, window, columns, self.systems, sp.predicates)})"
        if self.windowed:  # a pass's own records, prepared once for its blocks; over everyone at once
            # (one pass), preparing them whole would hold a year of records in memory
            self.ctes[f"{source}_records"] = ("", records[1:-1])
            records = f"{source}_records"
        counted, by_window = self._split_parts(sp)
        self._counted_blocks(source, records, sp, counted)
        if by_window:
            self._slid_blocks(source, records, sp, by_window)
        for col, feats in sp.per_value.items():
            reach = max(r for _, _, r in feats)
            block = _per_value_block(col, [(c, pv) for c, pv, _ in feats],
                                     guarded_sql(records, self.as_of_list, reach, sp.predicates))
            self.add_block(f"{source}_by_{col}", _within(block, reach), [c for c, _, _ in feats])
            self.parts_sql.update({c: c for c, _, _ in feats})
        for k, (f, group) in enumerate(sp.conditional):
            self._conditional_block(source, records, sp, k, f, group)

    def _collect(self, source: str) -> _SourceParts:
        """Each feature of `source` as parts, sharing the parts and predicates features have in common."""
        prefix = f"_{source[0]}"
        names: dict[str, str] = {}  # predicate SQL → its name
        sp = _SourceParts()
        for f in self.by_source[source]:
            named = {key: "true" if sql == "true" else names.setdefault(sql, f"_p{len(names)}")
                     for key, sql in f.predicates}
            if isinstance(f.sql, PerValue):
                pv = PerValue(f.sql.column, f.sql.kind, fill(f.sql.recent, named), fill(f.sql.before, named))
                sp.per_value.setdefault(pv.column, []).append((f.column, pv, f.reach_days))
                self.features_sql[f.column] = f.column
                continue
            resolved = [Part(p.kind, fill(p.pred, named), p.lo, p.hi, fill(p.sql, named)) for p in f.sql.parts]
            if f.only_if:
                refs = [f"{f.column}__{k}" for k in range(len(resolved))]
                sp.conditional.append((f, list(zip(refs, resolved, strict=True))))
            else:
                refs = [sp.parts.setdefault(p, f"{prefix}{len(sp.parts)}") for p in resolved]
            self.features_sql[f.column] = fill(f.sql.final, {str(k): r for k, r in enumerate(refs)})
            if f.only_if:  # blank for everyone else
                self.features_sql[f.column] = f"CASE WHEN {refs[0]} IS NOT NULL THEN {self.features_sql[f.column]} END"
        sp.predicates = {n: s for s, n in names.items()}
        return sp

    def _split_parts(self, sp: _SourceParts):
        """(parts counted at every date, parts that slide from date to date by their window)."""

        def slides(part: Part) -> bool:
            """Slide it from date to date when the window is long against the dates' span."""
            return (len(self.as_ofs) > 1 and part.kind != "sql" and part.hi >= 2 * self.span
                    and not any(_PSEUDO.search(sql) for n, sql in sp.predicates.items()
                                if re.search(rf"\b{n}\b", part.pred)))

        by_window: dict[tuple[int, int], list[tuple[str, Part]]] = {}
        counted: list[tuple[str, Part]] = []
        for part, name in sp.parts.items():
            (by_window.setdefault((part.lo, part.hi), []) if slides(part) else counted).append((name, part))
        # A window slides in a block of its own; for a part or two that costs more than
        # counting them at every date in a block that is read anyway.
        for window in [w for w, group in by_window.items() if len(group) < SLIDE_MIN_PARTS]:
            counted += by_window.pop(window)
        return counted, by_window

    def _counted_blocks(self, source: str, records: str, sp: _SourceParts, counted) -> None:
        """One block per tier of reach: parts counted at every as-of date."""
        tiers: dict[int, list[tuple[str, Part]]] = {}
        reach = {name: min(t for t in TIERS + (self.look,) if t >= part.hi) for name, part in counted}
        if len(self.as_ofs) == 1 and reach:
            # At one date a record meets the date once whatever the tier: one block reads each
            # record once, where a block per tier read the recent ones again and cost a join each.
            reach = dict.fromkeys(reach, max(reach.values()))
        for name, part in counted:
            tiers.setdefault(reach[name], []).append((name, part))
        for tier, group in sorted(tiers.items()):
            self.add_block(f"{source}_{tier}d", _plain_block([(n, _within(p.direct(), tier)) for n, p in group],
                           guarded_sql(records, self.as_of_list, tier, sp.predicates)), [n for n, _ in group])
            for n, p in group:
                self.parts_sql[n] = f"coalesce({n}, 0)" if p.kind == "count" else n

    def _slid_blocks(self, source: str, records: str, sp: _SourceParts, by_window) -> None:
        """Parts at the first as-of date, then one block per window of how they change after it."""
        slid = [x for group in by_window.values() for x in group]
        reach = max(p.hi for _, p in slid)
        first = guarded_sql(records, dates(self.as_ofs[:1]), reach, sp.predicates)
        block = _plain_block([(f"{n}_first", _within(p.direct(), reach)) for n, p in slid], first)
        self.add_block(f"{source}_first", f"SELECT * EXCLUDE (as_of) FROM ({block})",
                       [f"{n}_first" for n, _ in slid], on="(person_id)")
        first_day = _day_number(f"DATE '{self.as_ofs[0].isoformat()}'")
        for k, ((lo, hi), group) in enumerate(sorted(by_window.items())):
            self.add_block(f"{source}_slide{k}", _slide_sql(records, self.as_ofs, lo, hi, group),
                           [n for n, _ in group])
        for n, p in slid:
            if p.kind == "count":  # INTEGER, as a count not slid: the table's types must
                # not depend on which dates were built together (a sum would be BIGINT)
                self.parts_sql[n] = f"(coalesce({n}_first, 0) + coalesce({n}, 0))::INTEGER"
            else:  # the latest day, then days before this as-of date if still in the window
                # INTEGER, as days_before is when not slid
                since = f"{_day_number('as_of')} - greatest({first_day} - {n}_first, {n})"
                self.parts_sql[n] = f"CASE WHEN {since} <= {p.hi} THEN {since} END"

    def _conditional_block(self, source: str, records: str, sp: _SourceParts, k: int, f: Feature, group) -> None:
        """Parts computed only for the (person, as_of) pairs meeting `f.only_if`, from the parts above."""
        cond = _substitute(f.only_if, {c: _substitute(self.features_sql[c], self.parts_sql)
                                       for c in self.features_sql if c in f.only_if})
        needed = sorted({self.part_block[n] for n in _PART_REF.findall(cond)})
        self.ctes[f"only_{source}_{k}"] = ("MATERIALIZED ", "SELECT k.person_id, k.as_of FROM cohort k "
                                           + " ".join(f"LEFT JOIN {a} USING {self.block_on[a]}" for a in needed)
                                           + f" WHERE {cond}")
        guarded = guarded_sql(records, self.as_of_list, f.reach_days, sp.predicates, only=f"only_{source}_{k}")
        self.add_block(f"{source}_{f.column}", _plain_block(
            [(n, _within(p.direct(), f.reach_days)) for n, p in group],
            f"SELECT g.* FROM ({guarded}) g SEMI JOIN only_{source}_{k} USING (person_id, as_of)"),
            [n for n, _ in group])
        self.parts_sql.update({n: n for n, _ in group})

    def _helper_columns(self) -> list[str]:
        """The derived features' helper columns, joined onto the cohort (see `wobble.features.derived`)."""
        out = []
        if "first_record_at" in self.helpers:
            if not self.shared:
                self.ctes["first_any"] = ("", FIRST_ANY_SQL)
                self.ctes["first_late"] = ("", first_late_sql(self.as_of_list))
            self.ctes["first_record"] = ("", _first_record_sql(self.pseudonym))
            self.joins.append("LEFT JOIN first_record USING (person_id, as_of)")
            out.append("first_record.first_record_at")
        if "team_quiet_months" in self.helpers:
            if not self.shared:
                self.ctes["team_feed"] = ("", team_quiet_sql(self.as_of_list))
            self.joins.append("LEFT JOIN team_feed ON team_feed.team_id = k.team_id AND team_feed.as_of = k.as_of")
            out.append("team_feed.team_quiet_months")
        return out

    def steps(self) -> tuple[list[tuple[str, str, str]], str]:
        """The blocks, and the final select: parts, then declared features, then derived ones."""
        for alias in {self.part_block[n] for c, (_, sql) in self.ctes.items() if c.startswith("only_")
                      for n in _PART_REF.findall(sql)}:
            self.ctes[alias] = ("MATERIALIZED ", self.ctes[alias][1])
        layer1 = [f"{sql} AS {n}" for n, sql in self.parts_sql.items()]
        layer1 += [f"({f.sql}) AS {f.column}" for f in self.by_source["persons"]]
        layer1 += self._helper_columns()
        declared = [f for f in self.cat.features + self.cat.inputs if f.source in ("contacts", "tags")]
        layer2 = [(f"coalesce({self.features_sql[f.column]}, 0)" if f.missing == "zero" and not f.internal
                   else self.features_sql[f.column]) + f" AS {f.column}" for f in declared]
        layer2 += [f.column for f in self.by_source["persons"]] + [h for h in sorted(self.helpers)]
        derived = {f.column: (f"coalesce({f.sql}, 0)" if f.missing == "zero" else f.sql)
                   for f in self.by_source["derived"]}
        outputs = [f"{derived[f.column]} AS {f.column}" if f.column in derived else f.column
                   for f in self.cat.features]
        return [(name, hint, sql) for name, (hint, sql) in self.ctes.items()], f"""
    SELECT person_id, as_of, team_id,
           {', '.join(outputs)}
    FROM (
        SELECT person_id, as_of, team_id,
               {', '.join(layer2)}
        FROM (
            SELECT p.{self.pseudonym} AS person_id, k.as_of, k.team_id,
                   {', '.join(layer1)}
            FROM cohort k JOIN persons p USING (person_id)
            {' '.join(self.joins)}
        )
    )"""


def _substitute(text: str, values: dict[str, str]) -> str:
    """Replace each whole word of `text` that is a key of `values` by its value, in brackets."""
    return re.sub(r"\b([a-z_][a-z0-9_]*)\b", lambda m: f"({values[m.group(1)]})" if m.group(1) in values
                  else m.group(1), text)


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
