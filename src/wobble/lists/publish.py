"""Publish: scores and explanations → one short list per team, for discussion.

Reads `scores`, `explanations`, `feature_snapshots`, `contacts`, `tags`, `huddle_lists` (the
previous list) and `huddle_outcomes`; writes `huddle_lists` (one row per listed person per team
and as_of), `huddle_list_context` (one row per team and as_of: data freshness, the team's data
gaps, the last huddle's summary) and, per team, a CSV and a self-contained HTML page under
`<outputs>/lists/<as_of>/`. Run inside a Prefect flow, it also leaves a table and a Markdown
artifact. Nothing here acts on a person: each row is a prompt for the team's conversation.
Publishing the same as-of with the same model again changes nothing.

The review service has its own database (`wobble.lists.service`): publish first brings back the
outcomes recorded there, and ends by pushing every team's list into it in one transaction.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import polars as pl

from wobble.core.config import Config
from wobble.core.errors import WobbleError
from wobble.core.render import render
from wobble.core.runs import in_prefect_run
from wobble.core.sql import age_band_sql
from wobble.core.vocab import system_label
from wobble.core.warehouse import connect, transaction
from wobble.features import load_catalogue
from wobble.lists import rows as row_parts
from wobble.lists.outcomes import last_outcomes, summarise, summary_sentence
from wobble.lists.reasons import list_reasons
from wobble.lists.recent import CAPACITY, EVENT, SECTION, event_sentences, recent_crisis
from wobble.lists.score import coverage, score
from wobble.lists.service import pull_outcomes, push_lists
from wobble.lists.views import change_label, from_json, list_header, person_view, write_csv
from wobble.models.approve import Approval, require_approval
from wobble.models.spec import load_spec
from wobble.models.tracking import registered_version


@dataclass
class TeamList:
    team: str
    rows: int  # the capacity part
    csv: Path
    html: Path
    recent_crisis: int = 0  # the other part


@dataclass
class PublishResult:
    model_name: str
    model_version: str
    as_of: date
    approval: Approval
    lists: list[TeamList] = field(default_factory=list)
    scored: int = 0
    seconds: float = 0.0
    score_seconds: float = 0.0
    with_change_reason: float | None = None  # share of the capacity part with a reason about change
    coverage: dict = field(default_factory=dict)  # registered adults scored (wobble.lists.score.coverage)

    def summary(self) -> dict:
        return {
            "model_name": self.model_name, "model_version": self.model_version,
            "as_of": self.as_of.isoformat(), "demo": self.approval.demo,
            "approved_by": self.approval.approved_by, "scored": self.scored,
            "lists": [{"team": t.team, "rows": t.rows, "recent_crisis": t.recent_crisis, "csv": str(t.csv),
                       "html": str(t.html)} for t in self.lists],
            "with_change_reason": self.with_change_reason, "coverage": self.coverage,
            "score_seconds": round(self.score_seconds, 2), "seconds": round(self.seconds, 2),
        }


def publish(cfg: Config, *, model: str, version: str, as_of: date, scored=None) -> PublishResult:
    """Build and write every team's list at `as_of` from an approved model version.

    `scored`: the ScoreResult of scores and explanations already written for this version and date
    (by team, on a Dask cluster: wobble.ops.scale); without it, `score.score` writes them first.
    """
    lists = prepare_lists(cfg, model=model, version=version, as_of=as_of, scored=scored)
    return finish_lists(lists, [write_team_page(page) for page in lists.pages])


@dataclass
class TeamPage:
    """What one team's page and CSV are made of: `write_team_page` writes them, in any process."""

    cfg: Config
    team: str
    rows: list[dict]  # the team's huddle_lists rows, by rank
    context: dict  # its huddle_list_context row
    outcomes: dict  # person_id → the last huddle outcome for them
    team_caveats: list[str]
    spec: object
    approval: Approval
    csv: Path
    html: Path


@dataclass
class PreparedLists:
    """Every team's list, written to the warehouse; the pages are still to write."""

    result: PublishResult
    rows: pl.DataFrame
    contexts: dict[str, dict]
    pages: list[TeamPage]
    started: float


def prepare_lists(cfg: Config, *, model: str, version: str, as_of: date, scored=None) -> PreparedLists:
    """Score (unless `scored`), choose reasons and caveats, write `huddle_lists` and its context."""
    t0 = time.perf_counter()
    registered_version(cfg, model, version)  # a version the registry has, before asking if it is approved
    with connect(cfg.warehouse, read_only=True) as con:
        approval = require_approval(con, model, version)
    spec = load_spec(cfg.models_dir, model)
    scored = scored or score(cfg, model=model, version=version, as_of=as_of)
    cat = load_catalogue(cfg.features_dir)
    with connect(cfg.warehouse) as con:
        pull_outcomes(cfg, con)  # decisions recorded on the review page since the last run
        listed = _listed(con, cfg, model, version, as_of)
        if listed.height == 0:
            raise WobbleError(f"no one to list at {as_of}")
        con.register("_listed_df", listed.select("person_id"))
        con.execute("CREATE OR REPLACE TEMP TABLE _capacity_ids AS SELECT person_id FROM _listed_df")
        con.unregister("_listed_df")
        recent = recent_crisis(con, spec, as_of, model, "_capacity_ids")
        con.execute("CREATE OR REPLACE TEMP TABLE _listed_ids AS SELECT person_id FROM _capacity_ids")
        if recent.height:
            con.register("_recent_df", recent.select("person_id"))
            con.execute("INSERT INTO _listed_ids SELECT person_id FROM _recent_df")
            con.unregister("_recent_df")
        reasons = list_reasons(con, cat, model, version, as_of, change_first=spec.listing.require_change_reason)
        tags = row_parts.recent_tags(con, as_of)
        sparks = row_parts.sparklines(con, as_of)
        person_caveats = row_parts.person_caveats(con, as_of)
        team_caveats = row_parts.team_caveats(con, as_of, cfg.teams.unattached, cfg.teams.unattached_owner)
        previous = row_parts.previous_risks(con, model, as_of)
        published_at = _published_at(con, model, version, as_of)
        rows = _assemble(listed, recent, reasons, tags, sparks, person_caveats, team_caveats, previous,
                         model, version, approval, published_at)
        # said above the list, not on each person's row: it is about people who are not on it
        unranked = row_parts.unranked_caveats(con, spec, version, as_of)
        above = {t: team_caveats.get(t, []) + unranked.get(t, []) for t in set(team_caveats) | set(unranked)}
        context = _context(con, rows, above, as_of, model, version, published_at)
        outcomes = last_outcomes(con, as_of, "_listed_ids")
        covered = coverage(con, spec, model, str(version), as_of)
        with transaction(con):
            key = [as_of, model, str(version)]
            con.execute("DELETE FROM huddle_lists WHERE as_of = ? AND model_name = ? AND model_version = ?", key)
            con.execute("DELETE FROM huddle_list_context WHERE as_of = ? AND model_name = ? AND model_version = ?",
                        key)
            for table, df in (("huddle_lists", rows.select(_TABLE_COLUMNS)), ("huddle_list_context", context)):
                con.register("_rows", df)
                con.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT * FROM _rows")
                con.unregister("_rows")
    capacity_reasons = rows.filter(pl.col("section") == CAPACITY)["reasons"].to_list()
    result = PublishResult(model, str(version), as_of, approval, scored=scored.scored,
                           score_seconds=scored.seconds, coverage=covered,
                           with_change_reason=round(sum(any(r.get("about_change") for r in json.loads(x))
                                                        for x in capacity_reasons) / len(capacity_reasons), 4))
    out = cfg.outputs / "lists" / as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    contexts = {c["team_id"]: c for c in context.to_dicts()}
    pages = [TeamPage(cfg, team, rows.filter(pl.col("team_id") == team).sort("_order").to_dicts(), contexts[team],
                      {p: o for (t, p), o in outcomes.items() if t == team}, team_caveats.get(team, []), spec,
                      approval, out / f"{team}.csv", out / f"{team}.html")
             for team in sorted(rows["team_id"].unique().to_list())]  # one page per team
    return PreparedLists(result, rows, contexts, pages, t0)


def team_views(page: TeamPage) -> tuple[dict, list[dict]]:
    """(the facts above one team's list, each listed person as the page shows them)."""
    people = [person_view(r, page.spec, page.outcomes.get(r["person_id"]), page.team_caveats)
              for r in page.rows]
    capacity, recent = sum(p["section"] == CAPACITY for p in people), sum(p["section"] == SECTION for p in people)
    return list_header(page.cfg, page.context, page.spec, page.approval, capacity, recent), people


def write_team_page(page: TeamPage) -> TeamList:
    """One team's page (HTML) and CSV."""
    header, people = team_views(page)
    capacity, recent = header["people"], header["recent"]
    write_csv(page.csv, people, page.approval.demo)
    page.html.write_text(render("list.html.j2", h=header, people=people), encoding="utf-8")
    return TeamList(page.team, capacity, page.csv, page.html, recent)


def finish_lists(lists: PreparedLists, written: list[TeamList]) -> PublishResult:
    """The publish result once every page is written; in a Prefect run, its artifacts too."""
    if sorted(t.team for t in written) != [p.team for p in lists.pages]:
        raise WobbleError("a team's list page was not written")
    result = lists.result
    if lists.pages:  # the review service's copy, in one transaction of its database
        push_lists(lists.pages[0].cfg, [(page.context, *team_views(page)) for page in lists.pages])
    result.lists = sorted(written, key=lambda t: t.team)
    result.seconds = time.perf_counter() - lists.started
    if in_prefect_run():
        _prefect_artifacts(result, lists.rows, lists.contexts)
    return result


_TABLE_COLUMNS = [
    "team_id", "as_of", "person_id", "section", "rank", "risk", "team_percentile", "change", "previous_risk",
    "age_band", "reasons", "recent_tags", "caveats", "sparkline", "model_name", "model_version",
    "demo", "published_at",
]


def _listed(con, cfg: Config, model: str, version: str, as_of: date) -> pl.DataFrame:
    teams = [r[0] for r in con.execute(
        "SELECT DISTINCT team_id FROM scores WHERE model_name = ? AND model_version = ? AND as_of = ?",
        [model, str(version), as_of]).fetchall()]
    caps = pl.DataFrame({"team_id": teams, "cap": [cfg.teams.capacity_for(t) for t in teams]},
                        schema={"team_id": pl.String, "cap": pl.Int64})
    con.register("_caps", caps)
    df = con.sql(f"""
        SELECT s.team_id, s.person_id, s.risk, s.team_percentile, f.age,
               {age_band_sql('f.age')} AS age_band, s.list_rank AS rank
        FROM scores s
        JOIN _caps c ON c.team_id = s.team_id AND s.list_rank <= c.cap
        JOIN feature_snapshots f ON f.person_id = s.person_id AND f.as_of = s.as_of
        WHERE s.model_name = ? AND s.model_version = ? AND s.as_of = ?
    """, params=[model, str(version), as_of]).pl()
    con.unregister("_caps")
    return df.with_columns(pl.lit(as_of).alias("as_of"))



def _published_at(con, model: str, version: str, as_of: date) -> datetime:
    (first,), = con.execute(
        "SELECT min(published_at) FROM huddle_lists WHERE model_name = ? AND model_version = ? AND as_of = ?",
        [model, str(version), as_of]).fetchall()
    return first or datetime.now().replace(microsecond=0)



def _assemble(listed, recent, reasons, tags, sparks, person_caveats, team_caveats, previous,
              model, version, approval, published_at) -> pl.DataFrame:
    """One row per listed person: the capacity part by rank, then the recent-crisis part by rank."""
    rows = []

    def common(r: dict, section: str) -> dict:
        pid = r["person_id"]
        return {
            "team_id": r["team_id"], "as_of": listed["as_of"][0], "person_id": pid, "section": section,
            "rank": r["rank"], "age_band": r["age_band"],
            "recent_tags": json.dumps(tags.get(pid, [])),
            "caveats": json.dumps(person_caveats.get(pid, []) + team_caveats.get(r["team_id"], [])),
            "sparkline": json.dumps(sparks.get(pid, [0] * row_parts.SPARK_MONTHS)),
            "model_name": model, "model_version": str(version), "demo": approval.demo,
            "published_at": published_at,
        }

    for r in listed.sort(["team_id", "rank"]).iter_rows(named=True):  # one row per listed person
        prev = previous.get(r["person_id"])
        rows.append({**common(r, CAPACITY), "risk": r["risk"], "team_percentile": r["team_percentile"],
                     "change": change_label(r["risk"], prev), "previous_risk": prev,
                     "reasons": json.dumps(reasons.get(r["person_id"], []))})
    for r in recent.iter_rows(named=True) if recent.height else []:  # one row per recently in crisis
        events = [{"feature": "crisis_contact", "text": t, "direction": EVENT}
                  for t in event_sentences(r["events"], r["carried"])]
        rows.append({**common(r, SECTION), "risk": None, "team_percentile": None,
                     "change": "carried" if r["carried"] else "new", "previous_risk": None,
                     "reasons": json.dumps(events)})
    frame = pl.DataFrame(rows, schema_overrides={"previous_risk": pl.Float64, "risk": pl.Float64,
                                                 "team_percentile": pl.Float64})
    return frame.with_columns((pl.col("section") != CAPACITY).cast(pl.Int32).alias("_s")).with_columns(
        (pl.col("_s") * 1_000_000 + pl.col("rank")).alias("_order")).drop("_s")


def _context(con, rows: pl.DataFrame, team_caveats, as_of, model, version, published_at) -> pl.DataFrame:
    """One row per team: what a page says above the people (freshness, data gaps, last huddle)."""
    fresh = con.sql("""
        SELECT source_system, max(last)::DATE AS last FROM (
            SELECT source_system, max(recorded_at) AS last FROM contacts WHERE recorded_at < ? GROUP BY ALL
            UNION ALL
            SELECT source_system, max(recorded_at) FROM tags WHERE recorded_at < ? GROUP BY ALL)
        GROUP BY ALL ORDER BY source_system
    """, params=[as_of, as_of]).pl()
    updated = [{"system": system_label(s), "date": d.isoformat()}
               for s, d in fresh.iter_rows()]
    last: dict[str, dict] = {}
    for s in summarise(con, before=as_of):  # ordered by team, then as-of: the last one per team wins
        last[s["team_id"]] = {"date": s["as_of"], "sentence": summary_sentence(s), **s}
    teams = sorted(rows["team_id"].unique().to_list())
    return pl.DataFrame({
        "team_id": teams, "as_of": [as_of] * len(teams), "model_name": [model] * len(teams),
        "model_version": [str(version)] * len(teams),
        "data_updated": [json.dumps(updated)] * len(teams),
        "team_caveats": [json.dumps(team_caveats.get(t, [])) for t in teams],
        "last_huddle": [json.dumps(last.get(t)) for t in teams],
        "published_at": [published_at] * len(teams),
    })



# -- Prefect --------------------------------------------------------------------------------------


def _prefect_artifacts(result: PublishResult, rows: pl.DataFrame, contexts: dict[str, dict]) -> None:
    """A table (one row per team: counts, gaps, where the page is) and a Markdown summary.

    People are not named in artifacts: the lists themselves stay in the warehouse and the outputs.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    counts = rows.group_by("team_id").agg(
        pl.len().alias("listed"),
        (pl.col("section") == CAPACITY).sum().alias("listed_capacity"),
        (pl.col("section") == SECTION).sum().alias("recent_crisis"),
        *[(pl.col("change") == c).sum().alias(c) for c in ("new", "higher", "same", "lower")],
    ).sort("team_id")
    pages = {t.team: t for t in result.lists}
    table = []
    for r in counts.iter_rows(named=True):  # one row per team
        ctx = contexts[r["team_id"]]
        last = from_json(ctx["last_huddle"])
        table.append({
            "team": r["team_id"], "listed": r["listed_capacity"], "recently in crisis": r["recent_crisis"],
            "new": r["new"], "chance higher": r["higher"], "about the same": r["same"], "chance lower": r["lower"],
            "data gaps": len(from_json(ctx["team_caveats"]) or []),
            "last huddle discussed": "" if not last else f"{last['discussed']} of {last['listed']}",
            "page": str(pages[r["team_id"]].html),
        })
    as_of = result.as_of.isoformat()
    create_table_artifact(key="huddle-lists", table=table,
                          description=f"Huddle lists at {as_of} from {result.model_name} v{result.model_version}")
    demo = " (demonstration: synthetic data, demo approval)" if result.approval.demo else ""
    gaps = sorted({c for ctx in contexts.values() for c in (from_json(ctx["team_caveats"]) or [])})
    md = [f"# Huddle lists for {as_of}{demo}", "",
          f"- model: **{result.model_name}** version {result.model_version}, approved by "
          f"{result.approval.approved_by} on {result.approval.approved_at:%Y-%m-%d}",
          f"- people scored: {result.scored:,}; teams: {len(result.lists)}; people listed: {rows.height}",
          f"- scored in {result.score_seconds:.1f} s, published in {result.seconds:.1f} s",
          f"- pages: `{Path(result.lists[0].html).parent}`", "",
          "Lists are for discussion, not decisions. Record outcomes with `wobble review serve` or "
          "`wobble outcome record`."]
    if gaps:
        md += ["", "## Data gaps the lists warn about", *[f"- {g}" for g in gaps[:20]]]
    create_markdown_artifact(key="huddle-lists-summary", markdown="\n".join(md),
                             description=f"Huddle lists at {as_of}")
