"""The data-quality report of an ingest run: what came in, what was kept out and why, and where
the data is thin.

Reads the run's file results and the warehouse (`contacts`, `tags`, `persons`, `quarantine`,
`ingest_unmapped`); writes `<outputs>/reports/data-quality-<timestamp>.md` and `.html`, and,
when the run happens inside a Prefect flow, a Markdown artifact with the same text. Sections:

- files: each file's counts (`rows_in = loaded + quarantined + duplicate`) or its error;
- quarantine by source and reason, and the people left out because they opted out;
- unmapped codes: source codes no mapping knows, with their row counts (never silently dropped);
- date ranges by source system;
- completeness: optional fields by source, and rows by source, team and month over everything
  loaded, with the months a usual feed went quiet flagged by the one rule every stage uses
  (`wobble.features.feeds`): a feed that stops, for one team or for all, shows as a run of
  flagged months.

The report is for data teams: counts are not small-number suppressed, and it holds no
identifiers (codes that look like NHS numbers are masked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl

from wobble.core.config import Config
from wobble.core.render import plural, render
from wobble.core.runs import in_prefect_run
from wobble.core.vocab import system_label
from wobble.core.warehouse import one_row
from wobble.features.feeds import RULE, feed_months, feeds_behind, months_between
from wobble.ingest.load import HONOURED
from wobble.ingest.validate import HIDDEN_RULE, hidden_values

HEATMAP_MAX_TEAMS = 40

@dataclass
class Gap:
    source_system: str
    team_id: str
    month: str
    rows: int
    expected: int


def write_report(con: duckdb.DuckDBPyConnection, cfg: Config, result) -> tuple[Path, Path]:
    """Write the run's report as Markdown and HTML; return both paths."""
    data = build(con, cfg, result)
    out = cfg.outputs / "reports"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"data-quality-{result.started_at:%Y%m%dT%H%M%S}"
    md_path, html_path = out / f"{stem}.md", out / f"{stem}.html"
    data["status"] = status(data)
    data["change"] = change_since(_previous_facts(out, stem), data["status"]["facts"])
    (out / f"{stem}.json").write_text(json.dumps(data["status"]["facts"], indent=1), encoding="utf-8")
    markdown = render("quality.md.j2", **data)
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(render("quality.html.j2", **data), encoding="utf-8")
    _prefect_artifact(markdown)
    return md_path, html_path


def build(con: duckdb.DuckDBPyConnection, cfg: Config, result) -> dict:
    """Everything the report shows, as plain data."""
    files = [f for f in result.files]
    by_source: dict[str, dict[str, int]] = {}
    for f in files:
        for reason, n in f.reasons.items():
            by_source.setdefault(f.source, {}).setdefault(reason, 0)
            by_source[f.source][reason] += n
    reasons = sorted({r for d in by_source.values() for r in d})
    unmapped = [(f.source, field, code, n) for f in files for field, codes in f.unmapped.items()
                for code, n in codes.items()]
    span = _loaded_span(con)
    cells, gaps, months = _coverage(con, span)
    teams_by_source: dict[str, list[str]] = {}
    for (system, team), _ in cells.items():
        teams_by_source.setdefault(system, [])
        if team not in teams_by_source[system]:
            teams_by_source[system].append(team)
    gap_keys = {(g.source_system, g.team_id, g.month) for g in gaps}
    heatmaps = []
    for system in sorted(teams_by_source):
        teams = sorted(teams_by_source[system])
        with_gap = sorted({g.team_id for g in gaps if g.source_system == system})
        shown = teams if len(teams) <= HEATMAP_MAX_TEAMS else with_gap
        heatmaps.append({
            "system": system, "teams_total": len(teams),
            "rows": [{"team": t, "cells": [{"n": cells[(system, t)].get(m, 0), "gap": (system, t, m) in gap_keys}
                                           for m in months[system]]} for t in shown],
            "months": months[system],
        })
    summary = result.summary()
    return {
        "generated": datetime.now().strftime("%d %B %Y %H:%M"),
        "started": result.started_at.strftime("%d %B %Y %H:%M"),
        "name": cfg.wobble.name,
        "warehouse": str(cfg.warehouse),
        "summary": summary,
        "files": files,
        "reasons": reasons,
        "by_source": by_source,
        "reason_totals": {r: sum(d.get(r, 0) for d in by_source.values()) for r in reasons},
        "details": _quarantine_details(con, files),
        "unmapped": sorted(unmapped, key=lambda u: (u[0], u[1], -u[3]))[:500],
        "unmapped_total": len(unmapped),
        "passed_over_total": sum(f.passed_over for f in files),
        "unmapped_cumulative": _cumulative_unmapped(con),
        "ranges": _date_ranges(con),
        "field_completeness": _field_completeness(con),
        "gaps": gaps,
        "heatmaps": heatmaps,
        "gap_rule": RULE,
        "persons": _persons(con),
        "unattached_team": cfg.teams.unattached,
        "warnings": _warnings(files) + _feeds_behind(con, span[1]),
        "left_alone": _left_alone(files),
    }


DETAILS_SHOWN = 60


def _quarantine_details(con, files) -> dict:
    """This run's quarantine grouped by source, reason and detail (the field and its masked
    value), largest first: the DETAILS_SHOWN biggest groups, and how many rows the rest hold."""
    batches = [f.batch_id for f in files if getattr(f, "batch_id", None)]
    if not batches:
        return {"rows": [], "more_groups": 0, "more_rows": 0}
    groups = con.execute("""
        SELECT source, reason, coalesce(detail, '') AS detail, count(*) AS n FROM quarantine
        WHERE batch_id IN (SELECT unnest(?::VARCHAR[])) GROUP BY ALL ORDER BY n DESC, source, reason, detail""",
                         [batches]).fetchall()
    rest = groups[DETAILS_SHOWN:]
    return {"rows": groups[:DETAILS_SHOWN], "more_groups": len(rest), "more_rows": sum(g[3] for g in rest)}


FACTS = (  # what the status line judges and the next run compares: key, how a reader names it
    ("files_failed", "files that failed"), ("files_held", "files held back until the register loads"),
    ("rows_loaded", "rows loaded"), ("rows_quarantined", "rows quarantined"),
    ("unmapped_codes", "unmapped codes"), ("passed_over_codes", "codes only on resources not read"),
    ("gaps", "team-month feed gaps"), ("warnings", "things worth a look"), ("persons", "people in the warehouse"),
)


def status(data: dict) -> dict:
    """The report's one-line verdict: 'problem' when a file failed (or was held back because a register
    file failed), 'look' when a feed went quiet, codes are
    unmapped, something is worth a look or over 5% of rows were quarantined for a fault (not counting
    rows the source's own word withdrew: a national data opt-out, a record entered in error; about
    5% of England has opted out, so counting them would keep every run at 'look'); else 'ok'. With
    the facts it judged (kept beside the report as JSON, for the next run's comparison).

    What a FHIR export holds that wobble does not read (resource types, a problem list's other
    diagnoses and the codes on them) is listed but not judged: a whole-system export holds it every
    week, so judging it would keep every run at 'look' too."""
    s = data["summary"]
    passed_over = data.get("passed_over_total", 0)
    facts = {"started": data["started"], "files_failed": s["files_failed"], "files_held": s.get("files_held", 0),
             "rows_loaded": s["rows_loaded"], "rows_quarantined": s["rows_quarantined"],
             "unmapped_codes": data["unmapped_total"] - passed_over, "passed_over_codes": passed_over,
             "gaps": len(data["gaps"]), "warnings": len(data["warnings"]), "persons": data["persons"]["total"]}
    honoured = sum(n for r, n in s.get("quarantine_reasons", {}).items() if r in HONOURED)
    share = (s["rows_quarantined"] - honoured) / s["rows_in"] if s["rows_in"] else 0.0
    issues = [f"{facts[k]:,} {label}" for k, label in FACTS if k in ("files_failed", "files_held", "gaps",
                                                                        "unmapped_codes", "warnings") and facts[k]]
    if share > 0.05:
        issues.append(f"{100 * share:.1f}% of rows quarantined" + (" for a fault" if honoured else ""))
    level = "problem" if facts["files_failed"] or facts["files_held"] else "look" if issues else "ok"
    words = {"problem": "Problem: a file could not be loaded", "look": "Needs a look",
             "ok": "All well: every file loaded, no feed went quiet, every code mapped"}[level]
    return {"level": level, "text": words + (f" ({'; '.join(issues)})." if issues else "."), "facts": facts}


def _previous_facts(out: Path, stem: str) -> dict | None:
    """The facts of the latest earlier report in the folder, if any."""
    earlier = sorted(p for p in out.glob("data-quality-*.json") if p.stem < stem)
    if not earlier:
        return None
    try:
        return json.loads(earlier[-1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def change_since(before: dict | None, now: dict) -> dict:
    """Each fact now against the last run's: 'rows quarantined: 806 → 812 (+6)'."""
    if before is None:
        return {"since": None, "lines": ["No earlier data-quality report in this folder: this is the first run."]}
    lines = []
    for key, label in FACTS:
        a, b = before.get(key), now[key]
        if a is None:
            continue
        lines.append(f"{label}: {a:,} → {b:,} ({b - a:+,})" if a != b else f"{label}: {b:,} (unchanged)")
    return {"since": before.get("started"), "lines": lines}


def _persons(con) -> dict:
    row = one_row(con, """
        SELECT count(*), count(*) FILTER (WHERE opted_out), count(*) FILTER (WHERE team_id IS NULL),
               count(*) FILTER (WHERE imd_decile IS NULL AND NOT opted_out),
               count(*) FILTER (WHERE ethnicity_group = 'Not stated'),
               count(DISTINCT team_id),
               count(*) FILTER (WHERE team_assigned_by = 'lsoa'),
               count(*) FILTER (WHERE team_assigned_by = 'unattached'),
               count(*) FILTER (WHERE practice_id IS NULL),
               count(*) FILTER (WHERE sex = 'not_known')
        FROM persons""")
    keys = ("total", "opted_out", "no_team", "no_imd", "ethnicity_not_stated", "teams", "team_by_lsoa",
            "team_unattached", "no_practice", "sex_not_known")
    return dict(zip(keys, row, strict=True))


DELETIONS = (  # what a `deleted` file did (`wobble.ingest.load.load_deletions`), in words
    ("rows_deleted", "contact or tag", "contacts and tags", "removed because the source deleted them"),
    ("deletions_not_held", "deletion", "deletions",
     "of records wobble does not hold (never loaded, or removed already): nothing to remove"),
    ("deletions_not_applied", "deleted Patient", "deleted Patients",
     "not applied: a person leaves the register when the register says so; their contacts and tags go when the "
     "source deletes those"),
)


def _warnings(files) -> list[str]:
    out = []
    for f in files:
        if problems := _server_errors(f):
            out.append(f"{f.file}: the server reported {plural(problems, 'error', 'errors')} while exporting ("
                       + ", ".join(f"{k} {n:,}" for k, n in f.export_issues.items())
                       + "): resources may be missing from this export; the file says which (not shown here, "
                       "as it may name patients)")
        if f.line_breaks_in_fields:
            out.append(f"{f.file}: {f.line_breaks_in_fields:,} line breaks sit inside quoted fields (or are blank "
                       "lines); check that no quote is out of place, since rows can hide inside a field")
        for what, n in f.defaulted.items():
            out.append(f"{f.file}: {what} on {n:,} rows")
        for field, codes in f.unmapped.items():
            if (values := hidden_values(codes)) is not None:
                out.append(f"{f.file}: {field} has {values:,} different values no mapping knows, unlike a code "
                           f"list ({HIDDEN_RULE}): is the right column mapped to {field}? None is shown or kept, "
                           "since a wrong column can hold names or free text")
        if f.other_identifier:
            out.append(f"{f.file}: {f.other_identifier:,} people have no NHS number; they were pseudonymised "
                       "from the identifier the export does have, so their records cannot be matched to other "
                       "sources'")
        if f.rows_withdrawn:
            out.append(f"{f.file}: {f.rows_withdrawn:,} contacts and tags removed because their person has now "
                       "opted out")
        out += [f"{f.file}: {plural(n, one, many)} {rest}" for field, one, many, rest in DELETIONS
                if (n := getattr(f, field))]
        if f.rows_retracted:
            out.append(f"{f.file}: {f.rows_retracted:,} records removed because the source marked them "
                       "entered-in-error")
    return out


def _server_errors(f) -> int:
    """The issues a FHIR server reported as fatal or errors while exporting (a manifest's error file)."""
    return sum(n for k, n in f.export_issues.items() if k.startswith(("fatal", "error")))


def _left_alone(files) -> list[str]:
    """What an export holds that wobble does not read, a line per source and file: listed for the
    data team, not judged by the status (`status`)."""
    out, not_read = [], {}
    for f in files:
        if f.status == "not_read" and not _server_errors(f):
            kind = f.error.removeprefix("resource type ").removesuffix(" is not read")
            not_read.setdefault(f.source, []).append(f"none ({Path(f.file).name})" if kind == "unknown" else kind)
        if f.rows_out_of_scope:
            out.append(f"{f.file}: {plural(f.rows_out_of_scope, 'resource is not one', 'resources are not ones')} "
                       "wobble reads (other categories, or codes not in the tag map: see unmapped codes)")
    for source, kinds in not_read.items():
        counts = {k: kinds.count(k) for k in sorted(set(kinds))}
        out.insert(0, f"{source}: {plural(len(kinds), 'file', 'files')} of resource types wobble does not "
                      "read: " + ", ".join(f"{k}{f' ({n} files)' if n > 1 else ''}" for k, n in counts.items()))
    return out


def _feeds_behind(con, last: date | None) -> list[str]:
    """A line per team and source whose records end days before `last`, the day the latest record
    loaded was recorded (the rule of `feeds_behind`, as a list would see it the day after)."""
    if last is None:
        return []
    return [f"{system_label(f['source_system'])} records for team {f['team_id']} end on {f['last_day']}, "
            f"{f['days_without']} days before the latest record loaded ({last}), though they usually "
            "come every week: is an extract late or partial? Lists will say their latest may be missing"
            for f in feeds_behind(con, last + timedelta(days=1))]


def _cumulative_unmapped(con) -> list[tuple]:
    return con.execute("""
        SELECT source, field, code, sum(rows)::BIGINT AS rows FROM ingest_unmapped
        GROUP BY ALL ORDER BY rows DESC LIMIT 50""").fetchall()


def _date_ranges(con) -> list[dict]:
    rows = con.execute("""
        SELECT 'contacts' AS tbl, source_system, count(*), min(occurred_at), max(occurred_at),
               min(recorded_at), max(recorded_at),
               approx_quantile(epoch(recorded_at) - epoch(occurred_at), 0.5) / 3600.0 AS lag_hours
        FROM contacts GROUP BY ALL
        UNION ALL
        SELECT 'tags', source_system, count(*), NULL, NULL, min(recorded_at), max(recorded_at), NULL
        FROM tags GROUP BY ALL
        ORDER BY 1, 2""").fetchall()
    keys = ("table", "system", "rows", "occurred_from", "occurred_to", "recorded_from", "recorded_to", "lag_hours")
    fmt = [lambda v: v, lambda v: v, lambda v: v, *[_minute] * 4, lambda v: v]
    return [dict(zip(keys, (f(v) for f, v in zip(fmt, r, strict=True)), strict=True)) for r in rows]


def _minute(v) -> str | None:
    return v.strftime("%Y-%m-%d %H:%M") if v is not None else None


def _field_completeness(con) -> list[dict]:
    rows = con.execute("""
        SELECT source_system, count(*), avg((mode IS NOT NULL)::INT), avg((professional_id IS NOT NULL)::INT),
               avg((recorded_at > occurred_at)::INT)
        FROM contacts GROUP BY ALL ORDER BY 1""").fetchall()
    keys = ("system", "rows", "mode", "professional", "recorded_later")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def _loaded_span(con) -> tuple[date | None, date | None]:
    """The first day a record loaded happened and the last day one was recorded (None, None: none)."""
    return one_row(con, """
        SELECT min(first), max(last) FROM (
            SELECT min(occurred_at)::DATE AS first, max(recorded_at)::DATE AS last FROM contacts
            UNION ALL SELECT min(recorded_at)::DATE, max(recorded_at)::DATE FROM tags)""")


def _coverage(con, span: tuple[date | None, date | None] | None = None
              ) -> tuple[dict, list[Gap], dict[str, list[str]]]:
    """Rows per (source system, team, month) over everything loaded (`span`: `_loaded_span`, read
    when not given), and the months flagged as gaps."""
    first, last = span or _loaded_span(con)
    if first is None:
        return {}, [], {}
    as_of = last + timedelta(days=1)  # everything loaded is known before it
    frame = feed_months(con, as_of, months_between(first, as_of))
    gaps = [Gap(r["source_system"], r["team_id"], r["month"].strftime("%Y-%m"), int(r["records"]),
                int(round(r["usual"] * r["covered"]))) for r in frame.filter(pl.col("quiet")).iter_rows(named=True)]
    cells: dict[tuple[str, str], dict[str, int]] = {}
    for r in frame.sort("source_system", "month", "team_id").iter_rows(named=True):
        key = r["month"].strftime("%Y-%m")
        cells.setdefault((r["source_system"], r["team_id"]), {})[key] = int(r["records"])
    # Every month from the first to the last has a column, for every system: a month in which a feed sent
    # nothing (an outage) is a column of zeros, never a missing column.
    every = _month_keys(frame["month"].min(), frame["month"].max()) if frame.height else []
    months = {system: every for system, _ in cells}
    return cells, sorted(gaps, key=lambda g: (g.source_system, g.team_id, g.month)), months


def _month_keys(first: date, last: date) -> list[str]:
    """'2026-01', '2026-02', … from first's month to last's, every month once."""
    out, (y, m) = [], (first.year, first.month)
    while (y, m) <= (last.year, last.month):
        out.append(f"{y}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _prefect_artifact(markdown: str) -> None:
    """Inside a Prefect flow run, attach the report as a Markdown artifact."""
    if in_prefect_run():
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key="data-quality",
                                 description="wobble ingest: data-quality report")
