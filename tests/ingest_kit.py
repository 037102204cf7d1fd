"""Small hand-made projects for ingest tests: a register, a contacts feed and a tags feed whose
every row is written by the test, so each expected count is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wobble.identifiers import STRANGER_PREFIX_FROM, check_digit, synthetic_nhs_numbers

CONFIG = """
[wobble]
name = "ingest test"

[paths]
warehouse = "wh.duckdb"
outputs = "out"

{lookups}

[sources.register]
kind = "csv"
table = "persons"
system = "gp"
path = "register*.csv"

[sources.register.columns]
nhs_number = "NHS"
sex = "Sex"
birth_year = "Born"
team_id = "Team"
opted_out = "OptOut"

[sources.register.values.sex]
F = "female"
M = "male"

[sources.register.values.opted_out]
Y = "true"
N = "false"

[sources.visits]
kind = "csv"
table = "contacts"
system = "community"
path = "visits*.csv"
timestamp_format = "%Y-%m-%d %H:%M"
{visits_extra}

[sources.visits.columns]
record_id = "Id"
nhs_number = "NHS"
occurred_at = "When"
recorded_at = "Entered"
service = "Service"
status = "Outcome"
mode = "How"
professional = "Staff"

[sources.visits.values.service]
DN = "community_nursing"
CMHT = "mental_health_contact"

[sources.visits.values.status]
Seen = "attended"
DNA = "did_not_attend"

[sources.visits.values.mode]
Home = "home_visit"
Tel = "phone"

[sources.notes]
kind = "csv"
table = "tags"
system = "community"
path = "notes*.csv"
timestamp_format = "%Y-%m-%d %H:%M"

[sources.notes.columns]
record_id = "Id"
nhs_number = "NHS"
recorded_at = "When"
tag = "Code"

[sources.notes.values.tag]
LM = "low_mood"
SN = "support_network"
"""

VISITS_HEADER = "Id,NHS,When,Entered,Service,Outcome,How,Staff"
NOTES_HEADER = "Id,NHS,When,Code"
REGISTER_HEADER = "NHS,Sex,Born,Team,OptOut"


def numbers(n: int, seed: int = 1) -> list[str]:
    """`n` valid, distinct synthetic NHS numbers as text."""
    return [str(x) for x in synthetic_nhs_numbers(np.random.default_rng(seed), n)]


def stranger() -> str:
    """A valid NHS number no register in these tests holds."""
    prefix = np.array([STRANGER_PREFIX_FROM + 1], dtype=np.int64)
    c = int(check_digit(prefix)[0])
    assert c != 10
    return f"{prefix[0]}{c}"


def broken(nhs: str) -> str:
    """The same number with a wrong check digit."""
    return nhs[:9] + str((int(nhs[9]) + 1) % 10)


def project(root: Path, *, lookups: str = "", visits_extra: str = "", files: dict[str, str | bytes]) -> Path:
    """Write wobble.toml and the given files under `root`; return the config path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "wobble.toml").write_text(CONFIG.format(lookups=lookups, visits_extra=visits_extra))
    for name, content in files.items():
        data = content.encode() if isinstance(content, str) else content
        (root / name).write_bytes(data)
    return root / "wobble.toml"


def register(people: list[str], opted_out: tuple[str, ...] = (), team: str = "T01") -> str:
    rows = [f"{n},F,1950,{team},{'Y' if n in opted_out else 'N'}" for n in people]
    return "\n".join([REGISTER_HEADER, *rows]) + "\n"


def visit(rid: str, nhs: str, when: str = "2025-03-01 10:00", entered: str = "2025-03-01 11:00",
          service: str = "DN", outcome: str = "Seen", how: str = "Home", staff: str = "S1") -> str:
    return ",".join([rid, nhs, when, entered, service, outcome, how, staff])


def csv_text(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"
