"""Planning an ingest: which files to load, in which order, and each file's fingerprint."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from wobble.core.config import Config, Source
from wobble.core.errors import ConfigError, WobbleError
from wobble.ingest.fhir import export_folders, fhir_files, is_read, read_fhir
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
        """The file as reports name it: its path, and the type of a part."""
        return display_path(cfg, self.path) + (f" ({self.fhir_type} resources)" if self.part else "")

    @property
    def not_read(self) -> bool:
        return self.source.kind == "fhir" and self.path is not None and not is_read(self.fhir_type)


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
