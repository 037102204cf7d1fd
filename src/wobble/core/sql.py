"""Values written into DuckDB SQL text: the one home for quoting and literals.

Every stage that builds SQL from Python values goes through these, so a quote in a name, a file
path or a code can never end a string early. Values a user can type reach the warehouse as bound
parameters (`?`), not through here; these are for names, codes from the vocabularies, dates and
paths that must appear in the text itself (DDL, `read_csv(...)`, lists of as-of dates).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from wobble.core.vocab import AGE_BANDS


def literal(value: str) -> str:
    """A string literal: `it's` → `'it''s'`."""
    return "'" + str(value).replace("'", "''") + "'"


def identifier(name: str) -> str:
    """A quoted identifier, for a source's own column name (a double quote in it is doubled)."""
    return '"' + str(name).replace('"', '""') + '"'


def in_list(values: Iterable[str]) -> str:
    """A list for `IN`: ('a', 'b')."""
    return "(" + ", ".join(literal(v) for v in values) + ")"


def array(values: Iterable[str]) -> str:
    """A DuckDB list of strings: ['a', 'b']."""
    return "[" + ", ".join(literal(v) for v in values) + "]"


def date_literal(d: date) -> str:
    """DATE '2026-11-23'."""
    return f"DATE '{d.isoformat()}'"


def dates(values: Iterable[date]) -> str:
    """A DuckDB list of dates, [DATE '2026-11-16', DATE '2026-11-23']; `unnest` it, or use it with
    `list_min` / `list_max`."""
    return "[" + ", ".join(date_literal(d) for d in values) + "]"


def in_dates(values: Iterable[date]) -> str:
    """Dates for `IN`: (DATE '2026-11-16', DATE '2026-11-23')."""
    return "(" + ", ".join(date_literal(d) for d in values) + ")"


def age_band_sql(age_expr: str) -> str:
    """A CASE expression mapping an age in years to the contract's age bands ('80+')."""
    arms = " ".join(f"WHEN {age_expr} <= {hi} THEN '{label}'" for _lo, hi, label in AGE_BANDS)
    return f"CASE {arms} END"


def imd_quintile_sql(decile_expr: str) -> str:
    """IMD quintile (1 = most deprived) from an IMD decile, as text; NULL stays NULL."""
    return f"(({decile_expr} + 1) // 2)::INTEGER::VARCHAR"
