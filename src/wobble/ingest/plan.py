"""Planning an ingest: which files to load, in which order, and each file's fingerprint."""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb

from wobble.core.config import Config, Source
from wobble.core.errors import ConfigError, WobbleError
from wobble.ingest.fhir import (
    FILES_REMEMBERED,
    TABLE_OF,
    export_folders,
    fhir_files,
    holds,
    is_read,
    listed_names,
    read_fhir,
    type_from_name,
)
from wobble.ingest.identifiers import NHS_LIKE, NUMBER_REMOVED
from wobble.ingest.reader import Fingerprint, Input
from wobble.ingest.tabular import drop_copies, open_csv, open_parquet

TABLE_ORDER = {"persons": 0, "contacts": 1, "tags": 2}


@dataclass
class Planned:
    """One file to load (or a source with no file: `path` None)."""

    name: str
    source: Source
    path: Path | None
    fhir_type: str = ""  # the FHIR resource type of an export file
    others: tuple[str, ...] = ()  # the other types a FHIR file named for no type holds (`fhir_files`)

    @property
    def part(self) -> bool:
        """Whether this is one type's part of a FHIR file holding several, ledgered on its own."""
        return bool(self.others)

    def shown(self, cfg: Config) -> str:
        """The file as reports name it: its path (a FHIR file of one person's records by its folder
        and content hash: `personal_name`; a number written like an NHS number removed, as from any
        text kept, since a folder or file may be named for a person's), and the type of a part."""
        where = NHS_LIKE.sub(NUMBER_REMOVED, display_path(cfg, self.path))
        if self.source.kind == "fhir" and personal_name(self.path):
            folder = Path(where).parent
            where = ("" if folder == Path(".") else f"{folder}/") + hashed_name(self.path)
        return where + (f" ({self.fhir_type} resources)" if self.part else "")

    @property
    def not_read(self) -> bool:
        return self.source.kind == "fhir" and self.path is not None and not is_read(self.fhir_type)


def personal_name(path: Path) -> bool:
    """Whether a FHIR file's name may name a person: it is named for no type and holds one person's
    records (Synthea names each person's Bundle `Given_Family_<id>.json`; a Patient/$everything
    saved per person may carry an NHS number). Reports, the ledger and the console then name it by
    its content hash instead (`hashed_name`), as raw identifiers never leave ingest."""
    if type_from_name(path.name) in TABLE_OF or path.name in listed_names(path.parent):
        return False  # named by the export, for its type
    try:
        return holds(path).one_person
    except (OSError, duckdb.Error):
        return False


def hashed_name(path: Path) -> str:
    """A person's file as reports name it: 'one person's records, sha256 2fa15bc7e1d4' (the first
    12 hex digits of its content's SHA-256, which `sha256sum` finds among the folder's files)."""
    st = path.stat()
    return f"one person's records, sha256 {_content_sha(path, st.st_size, st.st_mtime_ns)[:12]}"


@lru_cache(maxsize=FILES_REMEMBERED)
def _content_sha(path: Path, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def plan_files(cfg: Config, names: list[str]) -> list[Planned]:
    """The files in load order: persons before contacts before tags (a FHIR export's `deleted`
    files first among its activity: `fhir_files`), and last the FHIR files of resource types
    wobble does not read (reported, left alone)."""
    plan: list[tuple[int, Planned]] = []
    matched = _tabular_files(cfg)
    for name in names:
        source = cfg.sources[name]
        if source.kind == "fhir":
            found = [t for export in export_folders(cfg.path(source.path)) for t in fhir_files(export)]
            kinds: dict[Path, list[str]] = {}
            for kind, p in found:
                kinds.setdefault(p, []).append(kind)
            files = [Planned(name, source, p, kind, tuple(k for k in kinds[p] if k != kind)) for kind, p in found]
            plan += [(3 if f.not_read else 0 if f.fhir_type == "Patient" else 1, f) for f in files]
        else:
            order = TABLE_ORDER[source.table]
            files = [Planned(name, source, p) for p in matched[name]]
            plan += [(order, f) for f in files]
        if not files:
            plan.append((0, Planned(name, source, None)))
    plan.sort(key=lambda t: t[0])  # stable: config order within a table
    return [f for _, f in plan]


def _tabular_files(cfg: Config) -> dict[str, list[Path]]:
    """The files each CSV or Parquet source of the config matches, sorted: every source's, not only
    this run's, since a file that two sources of one table match would load twice (two systems'
    contacts), or, under one system, the second source's reading would overwrite the first's as a
    correction: refused, in one line, whichever of them this run loads. (One file read as contacts by
    one source and as tags by another is an extract holding both: allowed.)"""
    matched: dict[str, list[Path]] = {}
    owner: dict[tuple[Path, str], str] = {}
    for name, source in cfg.sources.items():
        if source.kind == "fhir":
            continue  # an export is a folder of its own, read by one source
        matched[name] = [Path(p) for p in sorted(glob.glob(str(cfg.path(source.path))))]
        for p in matched[name]:
            other = owner.setdefault((p.resolve(), source.table), name)
            if other != name:
                raise ConfigError(f"sources.{other} and sources.{name} both read {display_path(cfg, p)}: "
                                  "a file belongs to one source (narrow one of their paths)")
    return matched


def display_path(cfg: Config, path: Path) -> str:
    """The file as the config names it: relative to the config's folder when it is inside it."""
    for p in (Path(os.path.abspath(path)), path.resolve()):
        try:
            return str(p.relative_to(cfg.root))
        except ValueError:
            continue
    return str(path)


_TEMP_TABLES = ("staged", "staged_t", "ids", "ids0", "cand", "seen", "staff", "codes", "dups", "existing",
                "incoming", "bad", "newly_out", "rej_errors", "rej_scans", "rejects", "fhir_rows", "fhir_lines",
                "fhir_json", "fhir_entries", "line_steps")


def drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    """Drop the temp tables and views one file's load leaves behind, and its transcoded copy."""
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    for t in _TEMP_TABLES:
        con.execute(f"DROP {'VIEW' if t in views else 'TABLE'} IF EXISTS {t}")
    drop_copies(con)


def open_input(con, cfg: Config, f: Planned, fp: Fingerprint) -> Input:
    """The planned file (or part) read as contract fields, by the reader its kind needs."""
    source, path = f.source, f.path
    if source.kind == "fhir":
        return read_fhir(con, cfg, source, path, fp, f.fhir_type, f.others)
    if fp.size == 0:
        raise WobbleError("the file is empty")
    if source.kind == "parquet":
        return open_parquet(con, source, path)
    return open_csv(con, source, path, fp)
