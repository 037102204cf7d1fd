"""The warehouse's clock: every time it stores is Europe/London wall-clock time (through summer
time), whatever zone a source recorded in; a source's `timezone` says how to convert its times."""

from __future__ import annotations

from zoneinfo import ZoneInfo

WAREHOUSE_TZ = "Europe/London"
LONDON = ZoneInfo(WAREHOUSE_TZ)
