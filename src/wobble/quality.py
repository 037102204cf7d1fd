"""The data-quality report of an ingest run: what came in, what was kept out and why, and where
the data is thin.

Reads the run's file results and the warehouse (`contacts`, `tags`, `persons`, `quarantine`,
`ingest_unmapped`); writes `<outputs>/reports/data-quality-<timestamp>.md` and `.html`, and,
when the run happens inside a Prefect flow, a Markdown artifact with the same text. Sections:

- files: each file's counts (`rows_in = loaded + quarantined + duplicate`) or its error;
- quarantine by source and reason, and the people left out because they opted out;
- unmapped codes: source codes no mapping knows, with their row counts (never silently dropped);
- date ranges by source system;
- completeness: optional fields by source, and rows by source, team and month, with gaps
  flagged where a team's share of a source's rows falls below half its usual share (a missing
  feed shows as a run of flagged months).

The report is for data teams: counts are not small-number suppressed, and it holds no
identifiers (codes that look like NHS numbers are masked).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import jinja2

from wobble.config import Config

GAP_SHARE = 0.5  # a cell is a gap when its share of the month is below this × the team's usual
GAP_MIN_EXPECTED = 20  # … and at least this many rows were expected there
HEATMAP_MAX_TEAMS = 40

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=jinja2.select_autoescape(["html.j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # a Markdown table cell


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
    markdown = _ENV.get_template("quality.md.j2").render(**data)
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(_ENV.get_template("quality.html.j2").render(**data), encoding="utf-8")
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
    cells, gaps, months = _coverage(con)
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
        "unmapped": sorted(unmapped, key=lambda u: (u[0], u[1], -u[3]))[:500],
        "unmapped_total": len(unmapped),
        "unmapped_cumulative": _cumulative_unmapped(con),
        "ranges": _date_ranges(con),
        "field_completeness": _field_completeness(con),
        "gaps": gaps,
        "heatmaps": heatmaps,
        "gap_rule": f"a team's share of the month's rows from that source is below {GAP_SHARE:.0%} of its "
                    f"usual (median) share, where at least {GAP_MIN_EXPECTED} rows were expected",
        "persons": _persons(con),
        "warnings": _warnings(files),
    }


def _persons(con) -> dict:
    row = con.execute("""
        SELECT count(*), count(*) FILTER (WHERE opted_out), count(*) FILTER (WHERE team_id IS NULL),
               count(*) FILTER (WHERE imd_decile IS NULL AND NOT opted_out),
               count(*) FILTER (WHERE ethnicity_group = 'Not stated'),
               count(DISTINCT team_id)
        FROM persons""").fetchone()
    return dict(zip(("total", "opted_out", "no_team", "no_imd", "ethnicity_not_stated", "teams"), row, strict=True))


def _warnings(files) -> list[str]:
    out = []
    for f in files:
        if f.status == "not_read":
            out.append(f"{f.file}: not read ({f.error})")
        if f.line_breaks_in_fields:
            out.append(f"{f.file}: {f.line_breaks_in_fields:,} line breaks sit inside quoted fields (or are blank "
                       "lines); check that no quote is out of place, since rows can hide inside a field")
        for what, n in f.defaulted.items():
            out.append(f"{f.file}: {what} on {n:,} rows")
        if f.rows_out_of_scope:
            out.append(f"{f.file}: {f.rows_out_of_scope:,} resources are not ones wobble reads (other "
                       "categories, or codes not in the tag map: see unmapped codes)")
        if f.other_identifier:
            out.append(f"{f.file}: {f.other_identifier:,} people have no NHS number; they were pseudonymised "
                       "from the identifier the export does have, so their records cannot be matched to other "
                       "sources'")
        if f.rows_withdrawn:
            out.append(f"{f.file}: {f.rows_withdrawn:,} contacts and tags removed because their person has now "
                       "opted out")
        if f.rows_retracted:
            out.append(f"{f.file}: {f.rows_retracted:,} records removed because the source marked them "
                       "entered-in-error")
    return out


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


def _coverage(con) -> tuple[dict, list[Gap], dict[str, list[str]]]:
    """Rows per (source system, team, month), and the cells flagged as gaps."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE dq_cells AS
        WITH act AS (
            SELECT source_system, date_trunc('month', occurred_at) AS month, person_id FROM contacts
            UNION ALL
            SELECT source_system, date_trunc('month', recorded_at), person_id FROM tags)
        SELECT a.source_system, p.team_id, a.month, count(*) AS n
        FROM act a JOIN persons p USING (person_id)
        WHERE p.team_id IS NOT NULL
        GROUP BY ALL""")
    # Every team that a source covers, in every month the source has data: missing cells are 0.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE dq_grid AS
        WITH teams AS (SELECT DISTINCT source_system, team_id FROM dq_cells),
             months AS (SELECT source_system, month, sum(n) AS total FROM dq_cells GROUP BY ALL)
        SELECT t.source_system, t.team_id, m.month, coalesce(c.n, 0) AS n, m.total,
               coalesce(c.n, 0) / m.total AS share
        FROM teams t JOIN months m USING (source_system)
        LEFT JOIN dq_cells c USING (source_system, team_id, month)""")
    gaps = [Gap(s, t, m.strftime("%Y-%m"), int(n), int(e)) for s, t, m, n, e in con.execute(f"""
        WITH usual AS (SELECT source_system, team_id, median(share) AS usual FROM dq_grid GROUP BY ALL)
        SELECT g.source_system, g.team_id, g.month, g.n, round(u.usual * g.total)
        FROM dq_grid g JOIN usual u USING (source_system, team_id)
        WHERE g.share < {GAP_SHARE} * u.usual AND u.usual * g.total >= {GAP_MIN_EXPECTED}
        ORDER BY 1, 2, 3""").fetchall()]
    cells: dict[tuple[str, str], dict[str, int]] = {}
    months: dict[str, list[str]] = {}
    for s, t, m, n in con.execute("SELECT source_system, team_id, month, n FROM dq_grid ORDER BY 1, 3, 2").fetchall():
        key = m.strftime("%Y-%m")
        cells.setdefault((s, t), {})[key] = int(n)
        if key not in months.setdefault(s, []):
            months[s].append(key)
    con.execute("DROP TABLE dq_cells; DROP TABLE dq_grid")
    return cells, gaps, months


def _prefect_artifact(markdown: str) -> None:
    """Inside a Prefect flow run, attach the report as a Markdown artifact. (Prefect is only
    consulted when the caller has already imported it: plain CLI runs never load it.)"""
    if "prefect" not in sys.modules:
        return
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    create_markdown_artifact(markdown=markdown, key="data-quality",
                             description="wobble ingest: data-quality report")
