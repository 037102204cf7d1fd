"""Small hand-made projects for ingest tests: a register, a contacts feed and a tags feed whose
every row is written by the test, so each expected count is known exactly."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
from conftest import TEST_KEY

from wobble.core.config import load_config
from wobble.ingest import IngestResult, ingest
from wobble.ingest.identifiers import STRANGER_PREFIX_FROM, check_digit, synthetic_nhs_numbers

KEY = TEST_KEY.encode()

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


# ---------------------------------------------------------------------------------------------
# Privacy scan: find raw identifiers in every file a run wrote
# ---------------------------------------------------------------------------------------------

# A ten-digit number, maybe written 3-3-4 with spaces or hyphens, not inside a longer number.
_NUMBER = r"(?:^|[^0-9.])([0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4})(?:[^0-9]|$)"


def source_nhs_numbers(world: Path) -> set[str]:
    """Every NHS number (valid or not) written in a synthetic world's extracts, as ten digits."""
    import polars as pl

    from wobble.synth.sources import SOURCES

    found: set[str] = set()
    for _, _, _, kind, pattern, formats, columns in SOURCES:
        for path in sorted((world / "raw").glob(pattern)):
            if kind == "csv":
                df = pl.read_csv(path, separator=formats.get("delimiter", ","), infer_schema=False,
                                 columns=[columns["nhs_number"]], truncate_ragged_lines=True, ignore_errors=True)
            else:
                df = pl.read_parquet(path, columns=[columns["nhs_number"]])
            col = df.to_series().cast(pl.String).str.replace_all(r"[^0-9]", "").drop_nulls()
            found |= {v for v in col.to_list() if len(v) == 10}
    return found


def scan_for(paths: list[Path], needles: set[str], also: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Which of `needles` (ten-digit numbers) or `also` (plain strings) each file holds.

    DuckDB warehouses and SQLite stores are read through SQL, value by value (their pages may be
    compressed); Parquet through polars; zip archives member by member; everything else as bytes.
    """
    import re
    import sqlite3
    import zipfile

    rx = re.compile(_NUMBER)
    # one pass over each text for all the plain strings (a hundred names: one `in` each was 10x slower)
    also_rx = re.compile("|".join(re.escape(s) for s in sorted(set(also), key=len, reverse=True))) if also else None
    hits: dict[str, list[str]] = {}

    def check(name: str, text: str) -> None:
        got = {m.replace(" ", "").replace("-", "") for m in rx.findall(text)} & needles
        if also_rx is not None:
            got |= set(also_rx.findall(text))
        if got:
            hits.setdefault(name, []).extend(sorted(got)[:5])

    for path in paths:
        data = path.read_bytes()
        name = str(path)
        if data[:16].startswith(b"SQLite format 3"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    for row in db.execute(f'SELECT * FROM "{table}"'):
                        check(f"{name}:{table}", " | ".join(map(str, row)))
        elif path.suffix == ".duckdb":
            import duckdb

            with duckdb.connect(str(path), read_only=True) as con:
                for (table,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall():
                    for (text,) in con.execute(f'SELECT CAST(t AS VARCHAR) FROM "{table}" t').fetchall():
                        check(f"{name}:{table}", text)
        elif path.suffix == ".parquet":
            import polars as pl

            for row in pl.read_parquet(path).cast(pl.String).iter_rows():
                check(name, " | ".join(map(str, row)))
        elif data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(path) as z:
                for member in z.namelist():
                    check(f"{name}:{member}", z.read(member).decode("latin-1"))
        check(name, data.decode("latin-1"))  # the raw bytes too, whatever the format
    return hits


def run(cfg_path: Path, **kw) -> IngestResult:
    """`wobble ingest` of the project at `cfg_path`, in process, without the report."""
    return ingest(load_config(cfg_path), key=KEY, report=False, **kw)


def rows(cfg_path: Path, sql: str) -> list[tuple]:
    """The rows `sql` returns from the project's warehouse."""
    with duckdb.connect(str(load_config(cfg_path).warehouse), read_only=True) as con:
        return con.sql(sql).fetchall()


def by_file(result: IngestResult) -> dict:
    """A run's file results by file name."""
    return {f.file: f for f in result.files}
