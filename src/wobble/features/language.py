"""The feature language's vocabulary: the columns each source offers, the windows, and the checks.

A feature family (`features/*.yml`) may read these columns of its source, and, for contacts and
tags, the pseudo-columns the time guard adds (`days_before`, `weeks_before`, `months_before`).
Placeholders (`{crisis_services}`, `{age_band}`) and `each:` expansions are filled in here.
"""

from __future__ import annotations

import re

from wobble.core.errors import ConfigError
from wobble.core.sql import age_band_sql, in_list
from wobble.core.vocab import (
    CRISIS_SERVICES,
    MODES,
    POLARITIES,
    SERVICE_LABELS,
    SERVICES,
    SOURCE_SYSTEMS,
    STATUSES,
    TAG_LABELS,
    TAGS,
    system_name,
)

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
MACROS = {"{crisis_services}": in_list(CRISIS_SERVICES),
          "{age_band}": age_band_sql("(year(as_of) - birth_year)")}
# `each:` expansions: one feature per value, with these placeholders for name and description.
EACH = {
    "service": [{"service": s, "service_label": SERVICE_LABELS[s]} for s in SERVICES],
    "tag": [{"tag": t, "tag_label": TAG_LABELS[t]} for t in TAGS],
    "system": [{"system": s, "system_label": system_name(s)} for s in SOURCE_SYSTEMS],
}
LOOKBACK_DAYS = 365  # the window `all` means: what the last year holds
PERIOD_DAYS = 30  # the period slope() and acceleration() count in
WINDOW = re.compile(r"^(\d+)d$")
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def window_phrase(days: int | None) -> str:
    """'30 days', 'year', '12 months': how a description says a window."""
    if days is None or days == LOOKBACK_DAYS:
        return "year"
    if days % 365 == 0:
        return f"{days // 365} years"
    if days % PERIOD_DAYS == 0 and days // PERIOD_DAYS in (6, 12, 24):
        return f"{days // PERIOD_DAYS} months"
    return f"{days} days"



def fill(text: str, values: dict[str, str]) -> str:
    """Replace each {key} of `values` in `text`; other braces are left alone."""
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def macros(text: str) -> str:
    return fill(text, {k.strip("{}"): v for k, v in MACROS.items()})


KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false", "between", "like", "case",
             "when", "then", "else", "end", "distinct", "lower", "upper", "coalesce", "interval",
             "day", "days", "year", "date_diff", "least", "greatest", "abs", "cast", "integer",
             "double"}


def check_columns(fname: str, name: str, source: str, text: str, what: str) -> None:
    """Unknown columns are errors at load time, not at query time."""
    stripped = re.sub(r"'[^']*'", "''", text)
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", stripped))
    known = set(SOURCES[source]) | (set(PSEUDO_COLUMNS) if source != "persons" else set())
    unknown = sorted(w for w in words - KEYWORDS - known if not re.match(r"^\d", w))
    if unknown:
        raise ConfigError(
            f"{fname}: feature {name!r}: unknown column(s) {', '.join(unknown)} in {what!r} "
            f"for source {source} (columns: {', '.join(sorted(known))})"
        )

