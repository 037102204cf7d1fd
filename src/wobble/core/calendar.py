"""The calendar wobble runs on: as-of dates are Mondays, and the data say which Monday is current.

A list, a snapshot and a training example are all "as of" a Monday T: they use records known
before T (`recorded_at < T`). The current as-of date is the configured one, else the latest Monday
whose every day before it the warehouse's records reach (`data_end`): a last record on Sunday
2026-11-22 gives Monday 2026-11-23, one on Thursday 2026-11-19 gives Monday 2026-11-16 (the days
from Friday to Sunday are not in yet), unless the sources record on weekdays only, when a last
record on Friday 2026-11-20 gives Monday 2026-11-23. A run may name a later Monday when only a
weekend lies between it and the last record (`as_of_for`): a last record on Friday 2026-11-20
allows 2026-11-23 whatever the sources.
"""

from __future__ import annotations

from datetime import date, timedelta

from wobble.core.errors import WobbleError
from wobble.core.warehouse import connect, scalar


def is_monday(d: date) -> bool:
    return d.weekday() == 0


def require_monday(d: date, what: str = "as-of dates") -> date:
    """`d`, or an error saying that it is not a Monday."""
    if not is_monday(d):
        raise WobbleError(f"{d} is not a Monday; {what} are Mondays")
    return d


def monday_on_or_before(d: date) -> date:
    """2026-11-25 (a Wednesday) → 2026-11-23."""
    return d - timedelta(days=d.weekday())


def weekly_as_ofs(end: date, weeks: int, step: int = 1) -> list[date]:
    """`weeks` Mondays ending at `end` (a Monday), `step` weeks apart, oldest first."""
    return sorted(end - timedelta(weeks=k * step) for k in range(weeks))


def data_end(con, cfg) -> date:
    """The as-of date the data support: the config's `as_of`, else the latest Monday whose every day
    before it the records reach (the Monday on or before the day after the last record). Where
    records are almost never made at weekends (WEEKEND_SHARE), a last record on a Friday or a
    Saturday reaches the Sunday: the weekend holds nothing to wait for."""
    if cfg.wobble.as_of:
        return cfg.wobble.as_of
    return _end_after(con, _last_record_day(con))


def _end_after(con, last: date) -> date:
    """`data_end` for records whose last day is `last`."""
    if last.weekday() in (4, 5) and _weekend_share(con, last) < WEEKEND_SHARE:
        last += timedelta(days=6 - last.weekday())
    return monday_on_or_before(last + timedelta(days=1))


# Below this share of the records made at weekends (over the eight weeks to the last one), the
# sources record on weekdays only: a site whose GP and community systems are its sources.
WEEKEND_SHARE = 0.02


def _weekend_share(con, last: date) -> float:
    """The share of the contacts recorded on a Saturday or Sunday in the eight weeks to `last`."""
    return scalar(con, f"""
        SELECT coalesce(avg((dayofweek(recorded_at) IN (0, 6))::INTEGER), 0) FROM contacts
        WHERE recorded_at >= DATE '{last.isoformat()}' - INTERVAL 55 DAY
          AND recorded_at < DATE '{last.isoformat()}' + INTERVAL 1 DAY""")


def _last_record_day(con) -> date:
    last = scalar(con, "SELECT max(recorded_at)::DATE FROM contacts")
    if last is None:
        raise WobbleError("the warehouse has no contacts: run `wobble ingest` first")
    return last


# Days before a given as-of date that may hold no record at all: a weekend, since many sources
# record nothing then and an extract taken on a Monday morning may end on the Friday before.
QUIET_DAYS = 2


def as_of_for(cfg, given: date | None) -> date:
    """The as-of date of a run: `given` (a Monday), else `data_end` of the configured warehouse.

    A given date may be later than `data_end` by a weekend the records do not reach (QUIET_DAYS),
    not by more (nor, with the config's `as_of`, later than that): a later date would read the
    weeks the data do not reach as weeks without a single contact, and its list would become each
    team's latest."""
    if given:
        require_monday(given)
    with connect(cfg.warehouse, read_only=True) as con:  # the last record read once, for both dates
        last = None if cfg.wobble.as_of else _last_record_day(con)
        end = cfg.wobble.as_of if last is None else _end_after(con, last)
    latest = end if last is None else monday_on_or_before(last + timedelta(days=1 + QUIET_DAYS))
    if given and given > latest:
        reach = "the config's as_of" if last is None else (
            f"the records reach {last}; a later Monday would leave more than a weekend before it without a record")
        raise WobbleError(f"{given} is after the data: the latest as-of date they allow is {latest} ({reach})")
    return given or end
