"""Publish: scores and explanations → one short list per team, for discussion.

Reads `scores`, `explanations`, `feature_snapshots`, `contacts`, `tags`, `huddle_lists` (the
previous list) and `huddle_outcomes`; writes `huddle_lists` (one row per listed person per team
and as_of), `huddle_list_context` (one row per team and as_of: data freshness, the team's data
gaps, the last huddle's summary) and, per team, a CSV and a self-contained HTML page under
`<outputs>/lists/<as_of>/`. Run inside a Prefect flow, it also leaves a table and a Markdown
artifact. Nothing here acts on a person: each row is a prompt for the team's conversation.
Publishing the same as-of with the same model again changes nothing.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import jinja2
import polars as pl

from wobble.approve import Approval, require_approval
from wobble.config import Config
from wobble.errors import WobbleError
from wobble.features import Catalogue, load_catalogue
from wobble.outcomes import last_outcomes, summarise, summary_sentence
from wobble.spec import load_spec
from wobble.vocab import TAG_LABELS, age_band_sql
from wobble.warehouse import connect, transaction

PROMPT = "What do we know that the data doesn't?"
MAX_REASONS = 5
MIN_REASONS = 3
# A contribution (log-odds) at least this large earns a fourth or fifth reason; a strength this
# large is shown even when concerns fill the first places.
STRONG_REASON = 0.1
STRENGTH_WORTH_SHOWING = 0.05
SYSTEM_LABELS = {"gp": "GP", "acute": "hospital", "community": "community health", "social_care": "social care",
                 "housing": "housing"}
CHANGE_TEXT = {"new": "new on the list", "rising": "risk rising", "steady": "risk about the same",
               "falling": "risk falling"}

ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


ENV.filters["day"] = lambda d: day_text(d, short=True)


@dataclass
class TeamList:
    team: str
    rows: int
    csv: Path
    html: Path


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

    def summary(self) -> dict:
        return {
            "model_name": self.model_name, "model_version": self.model_version,
            "as_of": self.as_of.isoformat(), "demo": self.approval.demo,
            "approved_by": self.approval.approved_by, "scored": self.scored,
            "lists": [{"team": t.team, "rows": t.rows, "csv": str(t.csv), "html": str(t.html)}
                      for t in self.lists],
            "score_seconds": round(self.score_seconds, 2), "seconds": round(self.seconds, 2),
        }


def publish(cfg: Config, *, model: str, version: str, as_of: date, scored=None) -> PublishResult:
    """Build and write every team's list at `as_of` from an approved model version.

    `scored`: the ScoreResult of scores and explanations already written for this version and date
    (by team, on a Dask cluster: wobble.scale); without it, `score.score` writes them first.
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
    from wobble.score import score

    t0 = time.perf_counter()
    with connect(cfg.warehouse, read_only=True) as con:
        approval = require_approval(con, model, version)
    spec = load_spec(cfg.models_dir, model)
    scored = scored or score(cfg, model=model, version=version, as_of=as_of)
    cat = load_catalogue(cfg.features_dir)
    with connect(cfg.warehouse) as con:
        listed = _listed(con, cfg, model, version, as_of)
        if listed.height == 0:
            raise WobbleError(f"no one to list at {as_of}")
        con.register("_listed_df", listed.select("person_id"))
        con.execute("CREATE OR REPLACE TEMP TABLE _listed_ids AS SELECT person_id FROM _listed_df")
        con.unregister("_listed_df")
        reasons = _reasons(con, cat, model, version, as_of)
        tags = _recent_tags(con, as_of)
        sparks = _sparklines(con, as_of)
        person_caveats = _person_caveats(con, as_of)
        team_caveats = _team_caveats(con, as_of)
        previous = _previous(con, model, as_of)
        published_at = _published_at(con, model, version, as_of)
        rows = _assemble(listed, reasons, tags, sparks, person_caveats, team_caveats, previous,
                         model, version, approval, published_at)
        context = _context(con, rows, team_caveats, as_of, model, version, published_at)
        outcomes = last_outcomes(con, as_of, "_listed_ids")
        with transaction(con):
            key = [as_of, model, str(version)]
            con.execute("DELETE FROM huddle_lists WHERE as_of = ? AND model_name = ? AND model_version = ?", key)
            con.execute("DELETE FROM huddle_list_context WHERE as_of = ? AND model_name = ? AND model_version = ?",
                        key)
            for table, df in (("huddle_lists", rows.select(_TABLE_COLUMNS)), ("huddle_list_context", context)):
                con.register("_rows", df)
                con.execute(f"INSERT INTO {table} ({', '.join(df.columns)}) SELECT * FROM _rows")
                con.unregister("_rows")
    result = PublishResult(model, str(version), as_of, approval, scored=scored.scored,
                           score_seconds=scored.seconds)
    out = cfg.outputs / "lists" / as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    contexts = {c["team_id"]: c for c in context.to_dicts()}
    pages = [TeamPage(cfg, team, rows.filter(pl.col("team_id") == team).sort("rank").to_dicts(), contexts[team],
                      {p: o for (t, p), o in outcomes.items() if t == team}, team_caveats.get(team, []), spec,
                      approval, out / f"{team}.csv", out / f"{team}.html")
             for team in sorted(rows["team_id"].unique().to_list())]  # one page per team
    return PreparedLists(result, rows, contexts, pages, t0)


def write_team_page(page: TeamPage) -> TeamList:
    """One team's page (HTML) and CSV."""
    people = [person_view(r, page.spec.target.horizon_days, page.outcomes.get(r["person_id"]), page.team_caveats)
              for r in page.rows]
    header = list_header(page.cfg, page.context, page.spec, page.approval, len(people))
    _write_csv(page.csv, people, page.approval.demo)
    page.html.write_text(ENV.get_template("list.html.j2").render(h=header, people=people), encoding="utf-8")
    return TeamList(page.team, len(people), page.csv, page.html)


def finish_lists(lists: PreparedLists, written: list[TeamList]) -> PublishResult:
    """The publish result once every page is written; in a Prefect run, its artifacts too."""
    if sorted(t.team for t in written) != [p.team for p in lists.pages]:
        raise WobbleError("a team's list page was not written")
    result = lists.result
    result.lists = sorted(written, key=lambda t: t.team)
    result.seconds = time.perf_counter() - lists.started
    if _in_prefect_run():
        _prefect_artifacts(result, lists.rows, lists.contexts)
    return result


_TABLE_COLUMNS = [
    "team_id", "as_of", "person_id", "rank", "risk", "team_percentile", "change", "previous_risk",
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
               {age_band_sql('f.age')} AS age_band, s.team_rank AS rank
        FROM scores s
        JOIN _caps c ON c.team_id = s.team_id AND s.team_rank <= c.cap
        JOIN feature_snapshots f ON f.person_id = s.person_id AND f.as_of = s.as_of
        WHERE s.model_name = ? AND s.model_version = ? AND s.as_of = ?
    """, params=[model, str(version), as_of]).pl()
    con.unregister("_caps")
    return df.with_columns(pl.lit(as_of).alias("as_of"))


# -- reasons ------------------------------------------------------------------------------------


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none on record"
    if unit == "share":
        return f"{round(100 * v)}%"
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


def _singular(desc: str) -> str:
    """'A&E attendances in …' → 'A&E attendance in …': the first plural word, for a count of one."""
    words = desc.split(" ")
    for i, w in enumerate(words[:4]):
        if w.islower() and len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "is")):
            words[i] = w[:-1]
            return " ".join(words)
    return desc


_BLANK_NOTE = re.compile(r"\s*\(blank: [^)]*\)")


def reason_sentence(feature, value: float | None, team_typical: float | None) -> str:
    """One plain sentence: the person's value, what it means, and what is typical in the team."""
    unit = feature.unit
    # "(blank: none in the last year)" tells an analyst what an empty cell means; a reason has a value
    desc = _BLANK_NOTE.sub("", feature.description)
    cap = desc[0].upper() + desc[1:]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{cap}: none on record"
    if unit in ("", "decile", "years", "share"):
        if unit == "" and value in (0, 1):
            text = cap if value == 1 else "Not " + desc
        else:
            text = f"{cap}: {_fmt_value(value, unit)}"
    else:
        text = f"{_fmt_value(value, unit)} {_singular(desc) if value == 1 else desc}"
    known = team_typical is not None and not (isinstance(team_typical, float) and math.isnan(team_typical))
    if known and unit not in ("", "decile", "years"):
        if team_typical == 0 and value > 0:
            text += " — most people in this team have none"
        else:
            text += f" — typical in this team: {_fmt_value(team_typical, unit)}"
    return text


def choose_reasons(expl: pl.DataFrame) -> pl.DataFrame:
    """Which explanations to show, for every listed person at once, in the order to show them.

    `expl` has person_id, feature, contribution and readable (see `_reasons`). Per person, among the
    readable ones by |contribution| (ties by feature name): at least MIN_REASONS; a fourth and fifth
    while they still matter (|SHAP| ≥ STRONG_REASON); and, when none of those lowers concern, the
    strongest strength (a contribution ≤ −STRENGTH_WORTH_SHOWING) in place of the fifth, so what
    lowers concern is shown beside what raises it.
    """
    k, c = pl.col("_k"), pl.col("contribution")
    ranked = (
        expl.filter(pl.col("readable"))
        .with_columns(c.abs().alias("_abs"))
        .sort(["person_id", "_abs", "feature"], descending=[False, True, False])
        .with_columns(pl.int_range(pl.len()).over("person_id").alias("_k"))
        # the chosen ones are a prefix in that order, since |contribution| only falls along it
        .with_columns(((k < MIN_REASONS) | ((k < MAX_REASONS) & (pl.col("_abs") >= STRONG_REASON))).alias("_chosen"),
                      (c <= -STRENGTH_WORTH_SHOWING).alias("_strength"))
        .with_columns(
            ((pl.col("_chosen") & (c < 0)).any().over("person_id").not_()
             & pl.col("_strength").any().over("person_id")).alias("_swap"),
            pl.when(pl.col("_strength")).then(k).otherwise(None).min().over("person_id").alias("_first_strength"),
        )
    )
    keep = (pl.col("_chosen") & (pl.col("_swap").not_() | (k < MAX_REASONS - 1))) | (
        pl.col("_swap") & (k == pl.col("_first_strength")))
    return ranked.filter(keep).sort(["person_id", "_k"]).drop("_abs", "_chosen", "_strength", "_swap",
                                                             "_first_strength")


def _reasons(con, cat: Catalogue, model: str, version: str, as_of: date) -> dict[str, list[dict]]:
    """Each listed person's reasons as sentences, with what is typical in their team.

    A reason is left out when it does not read true on its own: "5 concerns noted in the last year —
    most people in this team have none (lowers concern)" is what TreeSHAP says when a count overlaps
    another the model also uses (90-day and 1-year counts share the credit and one goes negative).
    So a value above the team's typical value that lowers concern is dropped, unless it counts strengths.
    """
    expl = con.sql("""
        SELECT e.person_id, s.team_id, e.feature, e.value, e.contribution
        FROM explanations e JOIN scores s USING (model_name, model_version, as_of, person_id)
        WHERE e.model_name = ? AND e.model_version = ? AND e.as_of = ?
    """, params=[model, str(version), as_of]).pl()
    feats = sorted(expl["feature"].unique().to_list())
    if not feats:
        return {}
    by_name = {f.column: f for f in cat.features}
    typical = con.sql(
        f"SELECT team_id, {', '.join(f'median({f})::DOUBLE AS {f}' for f in feats)} FROM feature_snapshots "
        "WHERE as_of = ? GROUP BY team_id", params=[as_of]
    ).pl().unpivot(index="team_id", variable_name="feature", value_name="typical")
    strengths = pl.DataFrame({"feature": feats, "_counts_strengths": ["strength" in by_name[f].unit for f in feats]})
    v, t = pl.col("value"), pl.col("typical")
    expl = expl.join(typical, on=["team_id", "feature"], how="left").join(strengths, on="feature").with_columns(
        ((pl.col("contribution") >= 0) | v.is_null() | t.is_null() | pl.col("_counts_strengths") | (v <= t))
        .alias("readable"))
    out: dict[str, list[dict]] = {}
    for r in choose_reasons(expl).iter_rows(named=True):  # at most MAX_REASONS per listed person
        out.setdefault(r["person_id"], []).append({
            "feature": r["feature"],
            "text": reason_sentence(by_name[r["feature"]], r["value"], r["typical"]),
            "direction": "raises concern" if r["contribution"] > 0 else "lowers concern",
            "contribution": round(r["contribution"], 4),
        })
    return out


# -- the rest of each row -----------------------------------------------------------------------


def _recent_tags(con, as_of: date) -> dict[str, list[dict]]:
    df = con.sql("""
        SELECT person_id, tag, polarity, author_role, recorded_at::DATE AS day
        FROM tags t WHERE recorded_at < ? AND recorded_at >= ? - INTERVAL 90 DAY
          AND person_id IN (SELECT person_id FROM _listed_ids)
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY recorded_at DESC, tag_id) <= 6
        ORDER BY person_id, recorded_at DESC, tag_id
    """, params=[as_of, as_of]).pl()
    out: dict[str, list[dict]] = {}
    for r in df.iter_rows(named=True):  # at most six per listed person
        out.setdefault(r["person_id"], []).append({
            "tag": TAG_LABELS.get(r["tag"], r["tag"]), "polarity": r["polarity"],
            "role": (r["author_role"] or "unknown role").replace("_", " "),
            "date": r["day"].isoformat(),
        })
    return out


def spark_start(as_of: date) -> date:
    """The first month a sparkline shows: the same month a year before the as-of date."""
    return date(as_of.year - 1, as_of.month, 1)


def _sparklines(con, as_of: date) -> dict[str, list[int]]:
    start = spark_start(as_of)
    df = con.sql("""
        SELECT person_id, date_diff('month', ?::DATE, date_trunc('month', occurred_at)::DATE) AS m,
               count(*) AS n
        FROM contacts WHERE recorded_at < ? AND occurred_at >= ? AND occurred_at < ? AND status = 'attended'
          AND person_id IN (SELECT person_id FROM _listed_ids)
        GROUP BY ALL
    """, params=[start, as_of, start, as_of]).pl()
    months = _spark_months(as_of)
    out: dict[str, list[int]] = {}
    for r in df.iter_rows(named=True):  # at most 13 per listed person
        out.setdefault(r["person_id"], [0] * months)[min(int(r["m"]), months - 1)] = int(r["n"])
    return out


def _spark_months(as_of: date) -> int:
    return 12 + (1 if as_of.day > 1 else 0)


def _person_caveats(con, as_of: date) -> dict[str, list[str]]:
    df = con.sql("""
        SELECT f.person_id, f.days_registered, f.days_since_contact
        FROM feature_snapshots f WHERE f.as_of = ? AND f.person_id IN (SELECT person_id FROM _listed_ids)
    """, params=[as_of]).pl()
    out: dict[str, list[str]] = {}
    for r in df.iter_rows(named=True):  # one per listed person
        notes = []
        if r["days_registered"] is not None and r["days_registered"] < 182:
            weeks = max(1, r["days_registered"] // 7)
            notes.append(f"registered {weeks} week{'s' if weeks > 1 else ''} ago: little history")
        if r["days_since_contact"] is None:
            notes.append("no contacts on record: the data may not see this person at all")
        out[r["person_id"]] = notes
    return out


def _team_caveats(con, as_of: date) -> dict[str, list[str]]:
    """Months in the last year when a system sent no records for a team that it usually covers."""
    df = con.sql("""
        WITH months AS (
            SELECT unnest(generate_series(date_trunc('month', ?::DATE - INTERVAL 12 MONTH),
                                          date_trunc('month', ?::DATE - INTERVAL 1 MONTH),
                                          INTERVAL 1 MONTH))::DATE AS month),
        counts AS (
            SELECT p.team_id, c.source_system, date_trunc('month', c.occurred_at)::DATE AS month,
                   count(*) AS n
            FROM contacts c JOIN persons p USING (person_id)
            WHERE c.recorded_at < ? AND c.occurred_at >= ?::DATE - INTERVAL 13 MONTH
            GROUP BY ALL),
        grid AS (
            SELECT t.team_id, s.source_system, m.month, coalesce(c.n, 0) AS n
            FROM (SELECT DISTINCT team_id FROM counts) t
            CROSS JOIN (SELECT DISTINCT source_system FROM counts) s CROSS JOIN months m
            LEFT JOIN counts c USING (team_id, source_system, month)),
        usual AS (
            SELECT team_id, source_system, median(n) AS typical FROM grid GROUP BY ALL)
        SELECT g.team_id, g.source_system, g.month FROM grid g JOIN usual u USING (team_id, source_system)
        WHERE u.typical >= 10 AND g.n < 0.1 * u.typical
        ORDER BY g.team_id, g.source_system, g.month
    """, params=[as_of, as_of, as_of, as_of]).pl()
    out: dict[str, list[str]] = {}
    for (team, system), part in df.group_by(["team_id", "source_system"], maintain_order=True):
        months = [m.strftime("%B %Y") for m in part["month"].to_list()]
        span = months[0] if len(months) == 1 else f"{months[0]} to {months[-1]}"
        out.setdefault(team, []).append(
            f"few or no {SYSTEM_LABELS.get(system, system.replace('_', ' '))} records for this team in {span}: "
            "those contacts may be missing from the reasons"
        )
    return out


def _previous(con, model: str, as_of: date) -> dict[str, float]:
    df = con.sql("""
        SELECT person_id, risk FROM huddle_lists
        WHERE model_name = ? AND as_of = (SELECT max(as_of) FROM huddle_lists WHERE model_name = ? AND as_of < ?)
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY published_at DESC, model_version DESC) = 1
    """, params=[model, model, as_of]).pl()
    return dict(zip(df["person_id"].to_list(), df["risk"].to_list(), strict=True))


def _published_at(con, model: str, version: str, as_of: date) -> datetime:
    (first,), = con.execute(
        "SELECT min(published_at) FROM huddle_lists WHERE model_name = ? AND model_version = ? AND as_of = ?",
        [model, str(version), as_of]).fetchall()
    return first or datetime.now().replace(microsecond=0)


def risk_phrase(p: float, percentile: float | None, horizon_days: int) -> str:
    """'about 1 in 4 chance of a crisis in the next 90 days; higher than 98 in 100 people in this team'."""
    if p >= 0.9:
        chance = "more than 9 in 10"
    elif p >= 0.15:
        chance = f"about {max(1, round(p * 10))} in 10"
    else:
        chance = f"about 1 in {max(2, round(1 / max(p, 1e-3)))}"
    text = f"{chance} chance of a crisis in the next {horizon_days} days"
    if percentile is not None:
        text += f"; higher than {min(99, math.floor(percentile * 100))} in 100 people in this team"
    return text


def change_label(risk: float, previous: float | None) -> str:
    if previous is None:
        return "new"
    if risk > previous * 1.2:
        return "rising"
    if risk < previous / 1.2:
        return "falling"
    return "steady"


def _assemble(listed, reasons, tags, sparks, person_caveats, team_caveats, previous,
              model, version, approval, published_at) -> pl.DataFrame:
    rows = []
    for r in listed.sort(["team_id", "rank"]).iter_rows(named=True):  # one row per listed person
        pid = r["person_id"]
        prev = previous.get(pid)
        rows.append({
            "team_id": r["team_id"], "as_of": r["as_of"], "person_id": pid, "rank": r["rank"],
            "risk": r["risk"], "team_percentile": r["team_percentile"],
            "change": change_label(r["risk"], prev), "previous_risk": prev,
            "age_band": r["age_band"],
            "reasons": json.dumps(reasons.get(pid, [])),
            "recent_tags": json.dumps(tags.get(pid, [])),
            "caveats": json.dumps(person_caveats.get(pid, []) + team_caveats.get(r["team_id"], [])),
            "sparkline": json.dumps(sparks.get(pid, [0] * _spark_months(r["as_of"]))),
            "model_name": model, "model_version": str(version), "demo": approval.demo,
            "published_at": published_at,
        })
    return pl.DataFrame(rows, schema_overrides={"previous_risk": pl.Float64})


def _context(con, rows: pl.DataFrame, team_caveats, as_of, model, version, published_at) -> pl.DataFrame:
    """One row per team: what a page says above the people (freshness, data gaps, last huddle)."""
    fresh = con.sql("""
        SELECT source_system, max(last)::DATE AS last FROM (
            SELECT source_system, max(recorded_at) AS last FROM contacts WHERE recorded_at < ? GROUP BY ALL
            UNION ALL
            SELECT source_system, max(recorded_at) FROM tags WHERE recorded_at < ? GROUP BY ALL)
        GROUP BY ALL ORDER BY source_system
    """, params=[as_of, as_of]).pl()
    updated = [{"system": SYSTEM_LABELS.get(s, s.replace("_", " ")), "date": d.isoformat()}
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


# -- what a page shows: shared with the review pages ------------------------------------------------


def day_text(d: date | datetime | str, *, short: bool = False) -> str:
    """'23 November 2026' (or '23 Nov 2026'), from a date, a datetime or an ISO string."""
    if isinstance(d, str):
        d = date.fromisoformat(d[:10])
    return f"{d.day} {d:%b %Y}" if short else f"{d.day} {d:%B %Y}"


def list_header(cfg: Config, context: dict, spec, approval: Approval, people: int) -> dict:
    """The facts above a list: framing, model and approval, data freshness, gaps, the last huddle."""
    last = _json(context["last_huddle"])
    return {
        "team": context["team_id"], "as_of": context["as_of"], "as_of_text": day_text(context["as_of"]),
        "demo": approval.demo, "prompt": PROMPT, "name": cfg.wobble.name,
        "data_updated": [{"system": d["system"], "date": day_text(d["date"], short=True)}
                         for d in _json(context["data_updated"]) or []],
        "model_title": spec.title, "model_name": spec.name, "model_version": approval.model_version,
        "approved_by": approval.approved_by, "approved_at": day_text(approval.approved_at),
        "published_at": f"{day_text(context['published_at'])} {context['published_at']:%H:%M}",
        "people": people, "team_caveats": _json(context["team_caveats"]) or [],
        "last_huddle": None if not last else {"date": day_text(last["date"]), "sentence": last["sentence"]},
    }


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def person_view(row: dict, horizon_days: int, last_outcome: dict | None, team_caveats: list[str]) -> dict:
    """One huddle_lists row as a page and the CSV show it; the team's caveats are shown once, above."""
    spark = _json(row["sparkline"])
    as_of = row["as_of"]
    prev = row["previous_risk"]
    caveats = _json(row["caveats"])
    phrase = risk_phrase(row["risk"], row["team_percentile"], horizon_days)
    detail = None if prev is None else f"{100 * prev:.0f}% at the last list, {100 * row['risk']:.0f}% now"
    reasons = _json(row["reasons"])
    return {
        "rank": row["rank"], "person_id": row["person_id"], "age_band": row["age_band"],
        "risk": row["risk"], "previous_risk": prev, "risk_phrase": phrase,
        "risk_sentence": phrase[0].upper() + phrase[1:], "risk_pct": f"{100 * row['risk']:.0f}%",
        "change": row["change"], "change_text": CHANGE_TEXT.get(row["change"], row["change"]),
        "change_detail": detail,
        "reasons": [{**r, "raises": r["direction"] == "raises concern"} for r in reasons],
        "tags": [{**t, "date_text": day_text(t["date"], short=True)} for t in _json(row["recent_tags"])],
        "caveats": [c for c in caveats if c not in team_caveats],
        "team_gaps": bool(team_caveats),
        "all_caveats": caveats,
        "contacts_per_month": spark,
        "spark_svg": sparkline_svg(spark, as_of), "spark_caption": spark_caption(spark, as_of),
        "last_outcome": last_outcome, "prompt": PROMPT,
    }


def _month_labels(n: int, as_of: date) -> list[str]:
    start = spark_start(as_of)
    labels = []
    for k in range(n):
        y, m = start.year + (start.month - 1 + k) // 12, (start.month - 1 + k) % 12 + 1
        labels.append(date(y, m, 1).strftime("%b %Y"))
    return labels


def spark_caption(values: list[int], as_of: date) -> str:
    """The sparkline's facts in words: the busiest month and this month so far."""
    labels = _month_labels(len(values), as_of)
    top = max(range(len(values)), key=lambda i: (values[i], i)) if values else 0
    total = sum(values)
    if total == 0:
        return "No contacts in the last 12 months."
    text = f"{total} in all; most in {labels[top]} ({values[top]})"
    if len(values) > 12:
        text += f"; {values[-1]} so far in {labels[-1]}"
    return text + "."


def sparkline_svg(values: list[int], as_of: date, *, width: int = 160, height: int = 32) -> str:
    """An inline SVG polyline with a text alternative naming every month; no script, no requests."""
    n = len(values)
    top = max(values) or 1
    step = width / max(1, n - 1)
    pts = " ".join(f"{i * step:.1f},{height - 3 - (v / top) * (height - 6):.1f}" for i, v in enumerate(values))
    labels = _month_labels(n, as_of)
    label = "Attended contacts per month: " + ", ".join(f"{m} {v}" for m, v in zip(labels, values, strict=True))
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{pts}"/></svg>'
    )


def _write_csv(path: Path, people: list[dict], demo: bool) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "person_id", "age_band", "risk", "risk_phrase", "change", "previous_risk",
                    "reasons", "recent_tags", "caveats", "contacts_per_month", "last_outcome", "prompt", "demo"])
        for p in people:
            last = p["last_outcome"]
            w.writerow([
                p["rank"], p["person_id"], p["age_band"], f"{p['risk']:.3f}", p["risk_phrase"], p["change"],
                "" if p["previous_risk"] is None else f"{p['previous_risk']:.3f}",
                "; ".join(f"{x['text']} ({x['direction']})" for x in p["reasons"]),
                "; ".join(f"{t['tag']} ({t['polarity']}, {t['role']}, {t['date']})" for t in p["tags"]),
                "; ".join(p["all_caveats"]),
                " ".join(str(v) for v in p["contacts_per_month"]),
                "" if not last else f"{last['label']} (list of {last['list_date']})", PROMPT,
                "yes" if demo else "no"])


# -- Prefect --------------------------------------------------------------------------------------


def _in_prefect_run() -> bool:
    """Whether this runs inside a Prefect flow or task run (never imports Prefect itself)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _prefect_artifacts(result: PublishResult, rows: pl.DataFrame, contexts: dict[str, dict]) -> None:
    """A table (one row per team: counts, gaps, where the page is) and a Markdown summary.

    People are not named in artifacts: the lists themselves stay in the warehouse and the outputs.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    counts = rows.group_by("team_id").agg(
        pl.len().alias("listed"),
        *[(pl.col("change") == c).sum().alias(c) for c in ("new", "rising", "steady", "falling")],
    ).sort("team_id")
    pages = {t.team: t for t in result.lists}
    table = []
    for r in counts.iter_rows(named=True):  # one row per team
        ctx = contexts[r["team_id"]]
        last = _json(ctx["last_huddle"])
        table.append({
            "team": r["team_id"], "listed": r["listed"], "new": r["new"], "rising": r["rising"],
            "steady": r["steady"], "falling": r["falling"],
            "data gaps": len(_json(ctx["team_caveats"]) or []),
            "last huddle discussed": "" if not last else f"{last['discussed']} of {last['listed']}",
            "page": str(pages[r["team_id"]].html),
        })
    as_of = result.as_of.isoformat()
    create_table_artifact(key="huddle-lists", table=table,
                          description=f"Huddle lists at {as_of} from {result.model_name} v{result.model_version}")
    demo = " (demonstration: synthetic data, demo approval)" if result.approval.demo else ""
    gaps = sorted({c for ctx in contexts.values() for c in (_json(ctx["team_caveats"]) or [])})
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
