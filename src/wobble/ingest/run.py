"""Ingest: source extracts → the contract's `persons`, `contacts` and `tags`, or `quarantine`.

Reads every file named by the sources in `wobble.toml` (CSV, Parquet, FHIR R4 Bulk Data NDJSON;
persons first, so that activity can be matched to a registered person), validates each row,
pseudonymises identifiers and writes, per file, in one transaction:

- the rows that pass, to `persons` / `contacts` / `tags` (one row per person / contact / tag);
- every row that does not, to `quarantine` (one row per input row, with its line, a reason and
  the row with identifiers masked);
- one `load_ledger` row: the file's content hash and `rows_in = loaded + quarantined + duplicate`.

Then it writes a data-quality report (`wobble.ingest.quality`).

A file whose content hash is already in the ledger is skipped, so loading twice changes nothing.
When a register (persons) file of the run fails, the run's contact and tag files not yet loaded
are held back (status `held`: neither loaded nor ledgered, and the run exits non-zero): matched
against an incomplete register, their people would be quarantined as person_not_found for good.
They load on the next run once the register is fixed.
A contact or tag already loaded under the same source system and record id is a duplicate when it
is identical, a correction (it replaces the old version) when it differs and is not older, and a
duplicate again when it is an older version than the one held.

Reasons, first match wins: malformed_line, missing_field, entered_in_error (FHIR), invalid_nhs_number,
impossible_date, unknown_code, person_not_found, opted_out (activity of people with a national
data opt-out is not kept: only the line and reason), then duplicate.

How it scales (docs/ingest.md): each file is read twice by DuckDB, in parallel. The first pass
collects the distinct identifiers and codes, so each NHS number (and staff code) is pseudonymised
once, in SQL, and unmapped codes are counted. The second pass parses and validates every row into
one compact staging table whose rowids follow the file's lines. Raw NHS numbers live only in this
run's temporary tables (in memory, or DuckDB's spill folder), never in the warehouse.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import duckdb

from wobble.core.config import Config
from wobble.core.errors import WobbleError, first_line, some_of
from wobble.core.vault import vault_key
from wobble.core.warehouse import connect, scalar
from wobble.ingest.fhir import OUTCOME, export_issues, is_read
from wobble.ingest.identity import build_vault
from wobble.ingest.load import Batch, FileResult, load_activity, load_deletions, load_persons
from wobble.ingest.optout import apply_opt_out_list
from wobble.ingest.plan import Planned, drop_temp, open_input, plan_files
from wobble.ingest.quality import write_report
from wobble.ingest.reader import Fingerprint, known_hash, remember_hash, stat_and_fingerprint
from wobble.ingest.state import RunState
from wobble.ingest.tabular import duckdb_error_line


@dataclass
class IngestResult:
    """Totals over all files, and each file's own result."""

    files: list[FileResult]
    opted_out_persons: int = 0
    opt_out_list: dict[str, int] = field(default_factory=dict)
    report_md: Path | None = None
    report_html: Path | None = None
    team_assigned: dict[str, int] = field(default_factory=dict)  # people placed by 'lsoa' / 'unattached'
    vault: dict | None = None  # the identity vault's path and people, when [vault] is configured
    started_at: datetime = field(default_factory=datetime.now)
    seconds: float = 0.0
    now: datetime | None = None  # the clock dates were checked against

    def total(self, attr: str) -> int:
        return sum(getattr(f, attr) for f in self.files)

    @property
    def failed(self) -> list[FileResult]:
        """The files that did not load and need someone to act: failed, or held back."""
        return [f for f in self.files if f.status in ("failed", "held")]

    def reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            for k, v in f.reasons.items():
                out[k] = out.get(k, 0) + v
        return dict(sorted(out.items()))

    def summary(self) -> dict:
        rows = self.total("rows_in")
        return {
            "rows_in": rows,
            "rows_loaded": self.total("rows_loaded"),
            "rows_quarantined": self.total("rows_quarantined"),
            "rows_duplicate": self.total("rows_duplicate"),
            "rows_replaced": self.total("rows_replaced"),
            "rows_withdrawn": self.total("rows_withdrawn") + self.opt_out_list.get("rows_withdrawn", 0),
            "rows_retracted": self.total("rows_retracted"),
            # FHIR Bulk Data `deleted` files: records removed, deletions of records not held, and
            # deleted Patients, which are not applied (`wobble.ingest.load.load_deletions` says why)
            "rows_deleted": self.total("rows_deleted"),
            "deletions_not_held": self.total("deletions_not_held"),
            "deleted_patients_not_applied": self.total("deletions_not_applied"),
            "files_loaded": sum(f.status == "loaded" for f in self.files),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_failed": sum(f.status == "failed" for f in self.files),
            "files_held": sum(f.status == "held" for f in self.files),
            "files_not_read": sum(f.status == "not_read" for f in self.files),
            "quarantine_reasons": self.reasons(),
            "opted_out_persons": self.opted_out_persons,
            "opt_out_list": self.opt_out_list,
            "persons_from_other_identifier": self.total("other_identifier"),
            "persons_team_assigned": self.team_assigned,
            "clock": self.now.isoformat(sep=" ") if self.now else None,
            "errors": [f"{f.file}: {f.error}" for f in self.failed],
            "report": str(self.report_md) if self.report_md else None,
            "report_html": str(self.report_html) if self.report_html else None,
            "vault": self.vault,
            "rows_per_second": round(rows / self.seconds) if self.seconds else None,
            "seconds": round(self.seconds, 2),
        }


def ingest(
    cfg: Config,
    *,
    key: bytes,
    progress: Callable[[str], None] | None = None,
    wait_seconds: float | None = None,
    only: list[str] | None = None,
    report: bool = True,
    now: datetime | None = None,
) -> IngestResult:
    """Load every configured source (or those named in `only`) into the warehouse.

    Files that cannot be read at all (wrong delimiter, missing columns, not text…) are reported
    as failed with a one-line reason; the other files still load. Returns counts per file, and
    the paths of the data-quality report. `now` fixes the clock dates are checked against
    (default `[ingest] now`, else the wall clock).
    """
    t0 = time.perf_counter()
    names = list(cfg.sources) if only is None else only
    if not names:
        raise WobbleError("no sources in the config: add a [sources.<name>] block")
    unknown = [n for n in names if n not in cfg.sources]
    if unknown:
        raise WobbleError(f"no source named {unknown[0]!r} in the config")
    plan = plan_files(cfg, names)
    v_key = vault_key(cfg) if cfg.vault is not None else None  # refuse before loading anything
    result = IngestResult([])
    wait = cfg.ingest.wait_seconds if wait_seconds is None else wait_seconds
    with connect(cfg.warehouse, wait_seconds=wait) as con, ThreadPoolExecutor(1) as hasher:
        run = RunState(con, cfg, key, now)
        result.now = run.now
        # Fingerprint files in the background, in load order, while earlier files load; a file
        # whose stat data show it is one already loaded (`known_hash`) is not read again.
        stats: dict[Path, tuple] = {}

        def hashed(path: Path) -> Fingerprint:
            fp, st, started = stat_and_fingerprint(path)
            stats[path] = (st, started)
            return fp

        prints: dict[Path, Future] = {}
        for f in plan:  # a file of several types is planned once per type, and read once
            if f.path and not f.not_read and f.path not in prints:
                prints[f.path] = _loaded_print(con, f) or hasher.submit(hashed, f.path)
        result.opt_out_list = apply_opt_out_list(run)
        register_failed: list[str] = []  # persons files that failed: their run's activity is held back
        for f in plan:
            fr = _one_file(run, f, prints.get(f.path), register_failed, progress)
            result.files.append(fr)
            if _holds_back(con, f, fr):
                register_failed.append(fr.file)
            if f.path in stats:
                remember_hash(con, f.path, *stats[f.path], prints[f.path].result().sha256)
            if fr.table == "persons" and fr.status == "loaded" and run.opt_outs:
                listed = apply_opt_out_list(run)  # newly registered people may be on the list
                for k in ("persons_flagged", "rows_withdrawn"):
                    listed[k] += result.opt_out_list[k]
                result.opt_out_list = listed
        result.opted_out_persons = int(scalar(con, "SELECT count(*) FROM persons WHERE opted_out"))
        result.team_assigned = dict(con.sql("SELECT team_assigned_by, count(*) FROM persons WHERE team_assigned_by "
                                            "IS NOT NULL GROUP BY ALL ORDER BY 1").fetchall())
        if v_key is not None:
            if progress:
                progress("identity vault")
            result.vault = build_vault(run, v_key)
        result.seconds = time.perf_counter() - t0
        if report:
            if progress:
                progress("data-quality report")
            result.report_md, result.report_html = write_report(con, cfg, result)
    result.seconds = time.perf_counter() - t0
    return result


def in_ledger(con, source: str, sha256: str) -> bool:
    """Whether a file with this content was loaded for `source` already."""
    return bool(scalar(con, "SELECT count(*) FROM load_ledger WHERE source = ? AND content_hash = ?",
                       [source, sha256]))


def _loaded_print(con, f: Planned) -> Future | None:
    """A finished fingerprint for a file its stat data show was loaded for its source already
    (`known_hash`; a file of several types: each part it loads): only its hash is known, which is
    all a skipped file needs; else None."""
    sha = known_hash(con, f.path)
    kinds = [k for k in (f.fhir_type, *f.others) if is_read(k)] if f.part else [""]
    if sha is None or not all(in_ledger(con, f.name, _part_sha(sha, k) if k else sha) for k in kinds):
        return None
    done: Future = Future()
    done.set_result(Fingerprint(sha, size=-1, line_breaks=-1, ends_with_newline=False))
    return done


def _one_file(run: RunState, f: Planned, fp: Future | None, register_failed: list[str],
              progress: Callable[[str], None] | None) -> FileResult:
    """Load one planned file, or say why not: no file matches, a resource type not read, or held
    back because a register file of this run failed (`register_failed`)."""
    if f.path is None:
        return FileResult(f.name, f.source.path, "failed", error=f"no file matches {f.source.path}")
    if f.not_read:
        issues = export_issues(f.path) if f.fhir_type == OUTCOME else {}
        return FileResult(f.name, f.shown(run.cfg), "not_read", export_issues=issues,
                          error=f"resource type {f.fhir_type or 'unknown'} is not read")
    if progress:
        progress(f"{f.name}: {Path(f.shown(run.cfg)).name}")
    if f.part:
        fp = _part_print(fp, f.fhir_type)
    if register_failed and not _is_register(f):
        return hold_file(run, f, fp, _held_back(register_failed))
    return load_file(run, f, fp)


def _part_print(fp: Future, kind: str) -> Future:
    """A part's fingerprint: its file's, with a hash of the file's and the type's, so that the
    ledger holds each type of a file of several as loaded on its own."""
    out: Future = Future()

    def done(whole: Future) -> None:
        try:
            print_ = whole.result()
        except BaseException as exc:  # noqa: BLE001 - handed on to whoever waits for the part
            out.set_exception(exc)
            return
        out.set_result(replace(print_, sha256=_part_sha(print_.sha256, kind)))

    fp.add_done_callback(done)
    return out


def _part_sha(sha: str, kind: str) -> str:
    """The ledger's hash for one type's part of a file of several: the file's and the type's."""
    return hashlib.sha256(f"{sha} {kind}".encode()).hexdigest()


def _holds_back(con, f: Planned, fr: FileResult) -> bool:
    """Whether a register file's failure holds back the run's activity: a file that was there and
    did not load, or no register file at all while the warehouse has no register yet. A register
    glob that matches nothing this week (the site moves loaded files away) fails alone: the
    register already loaded still places the week's activity."""
    if fr.status != "failed" or not _is_register(f):
        return False
    return f.path is not None or not scalar(con, "SELECT count(*) FROM persons")


def _is_register(f: Planned) -> bool:
    """Whether a planned file feeds `persons` (a register, or a FHIR export's Patient file)."""
    return f.fhir_type == "Patient" if f.source.kind == "fhir" else f.source.table == "persons"


def _held_back(register_failed: list[str]) -> str:
    """Why an activity file is held back: activity is matched against the register, and a register
    file of this run did not load, so its people would be quarantined as person_not_found for good
    (the file's hash then in the ledger). Held back, it loads on the next run once that is fixed."""
    return (f"held back, not loaded: register file {some_of(register_failed, 3)} failed in this run; this file "
            "loads on the next run once the register is fixed")


def hold_file(run: RunState, f: Planned, fp: Future, why: str) -> FileResult:
    """Hold a file back (neither loaded nor ledgered), saying why; one already in the ledger is skipped."""
    name, rel = f.name, f.shown(run.cfg)
    try:
        sha = fp.result().sha256
    except OSError as exc:
        return FileResult(name, rel, "failed", error=f"cannot read the file ({exc.strerror})")
    if in_ledger(run.con, name, sha):
        return FileResult(name, rel, "skipped")
    return FileResult(name, rel, "held", error=why)


def load_file(run: RunState, f: Planned, fp: Future) -> FileResult:
    """Load one file (or one type's part of it) in one transaction, or say why it failed; a file
    already in the ledger is skipped."""
    t0 = time.perf_counter()
    name, source, rel = f.name, f.source, f.shown(run.cfg)
    try:
        fingerprint: Fingerprint = fp.result()
    except OSError as exc:
        return FileResult(name, rel, "failed", error=f"cannot read the file ({exc.strerror})")
    if in_ledger(run.con, name, fingerprint.sha256):
        return FileResult(name, rel, "skipped", seconds=time.perf_counter() - t0)
    batch = Batch(name, source, rel, f"{name}-{fingerprint.sha256[:16]}", fingerprint.sha256)
    try:
        inp = open_input(run.con, run.cfg, f, fingerprint)
        batch.table = inp.table
        load = {"persons": load_persons, "deletions": load_deletions}.get(inp.table, load_activity)
        result = load(run, batch, inp)
    except WobbleError as exc:
        return FileResult(name, rel, "failed", table=batch.table, error=str(exc),
                          seconds=time.perf_counter() - t0)
    except duckdb.Error as exc:
        return FileResult(name, rel, "failed", table=batch.table, error=duckdb_error_line(exc),
                          seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a fault in wobble itself must not stop the other files
        return FileResult(name, rel, "failed", table=batch.table, error=_unexpected(exc),
                          seconds=time.perf_counter() - t0)
    finally:
        drop_temp(run.con)
    result.seconds = time.perf_counter() - t0
    return result


def _unexpected(exc: Exception) -> str:
    """One line for an error wobble did not foresee (a bug, not the file's fault): what and where,
    so it can be reported; the file's transaction was rolled back and the other files still load."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return (f"wobble could not read this file: unexpected {type(exc).__name__}{where} ({first_line(exc)}); "
            "please report this to wobble's maintainers")
