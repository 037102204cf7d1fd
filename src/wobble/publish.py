"""Publish: scores and explanations → one short list per team, for discussion.

Reads `scores`, `explanations`, `feature_snapshots`, `contacts`, `tags`, `huddle_lists` (the
previous list) and `huddle_outcomes`; writes `huddle_lists` (one row per listed person per team
and as_of) and, per team, a CSV and a self-contained HTML page under `<outputs>/lists/<as_of>/`.
Nothing here acts on a person: each row is a prompt for the team's conversation.
Publishing the same as-of with the same model again changes nothing.
"""

from __future__ import annotations

import csv
import json
import math
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
from wobble.spec import load_spec
from wobble.vocab import TAG_LABELS, age_band_sql
from wobble.warehouse import connect, transaction

PROMPT = "What do we know that the data doesn't?"
MAX_REASONS = 5
MIN_REASONS = 3

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("wobble", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
)


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
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "model_name": self.model_name, "model_version": self.model_version,
            "as_of": self.as_of.isoformat(), "demo": self.approval.demo,
            "approved_by": self.approval.approved_by,
            "lists": [{"team": t.team, "rows": t.rows, "csv": str(t.csv), "html": str(t.html)}
                      for t in self.lists],
            "seconds": round(self.seconds, 2),
        }


def publish(cfg: Config, *, model: str, version: str, as_of: date) -> PublishResult:
    """Build and write every team's list at `as_of` from an approved model version."""
    from wobble.score import score

    t0 = time.perf_counter()
    with connect(cfg.warehouse, read_only=True) as con:
        approval = require_approval(con, model, version)
    spec = load_spec(cfg.models_dir, model)
    score(cfg, model=model, version=version, as_of=as_of)
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
        outcomes = _last_outcomes(con, as_of)
        previous = _previous(con, model, as_of)
        published_at = _published_at(con, model, version, as_of)
        rows = _assemble(listed, reasons, tags, sparks, person_caveats, team_caveats, outcomes,
                         previous, spec.target.horizon_days, model, version, approval, published_at)
        with transaction(con):
            con.execute("DELETE FROM huddle_lists WHERE as_of = ? AND model_name = ? AND model_version = ?",
                        [as_of, model, str(version)])
            con.register("_rows", rows.select(_TABLE_COLUMNS))
            con.execute(f"INSERT INTO huddle_lists ({', '.join(_TABLE_COLUMNS)}) SELECT * FROM _rows")
            con.unregister("_rows")
            last_update = con.execute("SELECT max(recorded_at) FROM contacts WHERE recorded_at < ?",
                                      [as_of]).fetchone()[0]
    result = PublishResult(model, str(version), as_of, approval)
    out = cfg.outputs / "lists" / as_of.isoformat()
    out.mkdir(parents=True, exist_ok=True)
    for team in sorted(rows["team_id"].unique().to_list()):
        team_rows = rows.filter(pl.col("team_id") == team).sort("rank").to_dicts()
        csv_path = out / f"{team}.csv"
        html_path = out / f"{team}.html"
        _write_csv(csv_path, team_rows)
        html_path.write_text(_render_html(
            cfg, team, team_rows, team_caveats.get(team, []), spec, approval, as_of, last_update,
            published_at,
        ), encoding="utf-8")
        result.lists.append(TeamList(team, len(team_rows), csv_path, html_path))
    result.seconds = time.perf_counter() - t0
    return result


_TABLE_COLUMNS = [
    "team_id", "as_of", "person_id", "rank", "risk", "team_percentile", "change", "previous_risk",
    "age_band", "reasons", "recent_tags", "caveats", "sparkline", "model_name", "model_version",
    "demo", "published_at",
]


def _listed(con, cfg: Config, model: str, version: str, as_of: date) -> pl.DataFrame:
    caps = pl.DataFrame({"team_id": [], "cap": []}, schema={"team_id": pl.String, "cap": pl.Int64})
    teams = [r[0] for r in con.execute(
        "SELECT DISTINCT team_id FROM scores WHERE model_name = ? AND model_version = ? AND as_of = ?",
        [model, str(version), as_of]).fetchall()]
    caps = pl.DataFrame({"team_id": teams, "cap": [cfg.teams.capacity_for(t) for t in teams]},
                        schema={"team_id": pl.String, "cap": pl.Int64})
    con.register("_caps", caps)
    df = con.sql(f"""
        SELECT s.team_id, s.person_id, s.risk, s.team_percentile, f.age,
               {age_band_sql('f.age')} AS age_band,
               s.team_rank AS rank
        FROM scores s
        JOIN feature_snapshots f ON f.person_id = s.person_id AND f.as_of = s.as_of
        WHERE s.model_name = '{model}' AND s.model_version = '{version}'
          AND s.as_of = DATE '{as_of.isoformat()}'
          AND s.team_rank <= (SELECT cap FROM _caps c WHERE c.team_id = s.team_id)
    """).pl()
    con.unregister("_caps")
    return df.with_columns(pl.lit(as_of).alias("as_of"))


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none on record"
    if unit == "share":
        return f"{round(100 * v)}%"
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.1f}"


def reason_sentence(feature, value: float | None, team_typical: float | None) -> str:
    """One plain sentence: the person's value, what it means, and what is typical in the team."""
    unit = feature.unit
    desc = feature.description
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{desc[0].upper() + desc[1:]}: none on record"
    if unit in ("", "decile", "years", "share"):
        if unit == "" and value in (0, 1):
            text = desc[0].upper() + desc[1:] if value == 1 else "Not " + desc
        else:
            text = f"{desc[0].upper() + desc[1:]}: {_fmt_value(value, unit)}"
    else:
        text = f"{_fmt_value(value, unit)} {desc}"
    known = team_typical is not None and not (isinstance(team_typical, float) and math.isnan(team_typical))
    if known and unit not in ("", "decile", "years"):
        if team_typical == 0 and value != 0:
            text += " — most people in this team have none"
        else:
            text += f" — typical in this team: {_fmt_value(team_typical, unit)}"
    return text


def _reasons(con, cat: Catalogue, model: str, version: str, as_of: date) -> dict[str, list[dict]]:
    expl = con.sql("""
        SELECT e.person_id, s.team_id, e.feature, e.value, e.contribution
        FROM explanations e JOIN scores s USING (model_name, model_version, as_of, person_id)
        WHERE e.model_name = ? AND e.model_version = ? AND e.as_of = ?
    """, params=[model, str(version), as_of]).pl()
    feats = sorted(expl["feature"].unique().to_list())
    if not feats:
        return {}
    medians = con.sql(
        f"SELECT team_id, {', '.join(f'median({f}) AS {f}' for f in feats)} FROM feature_snapshots "
        f"WHERE as_of = DATE '{as_of.isoformat()}' GROUP BY team_id"
    ).pl()
    med = {row["team_id"]: row for row in medians.to_dicts()}
    expl = expl.with_columns(pl.col("contribution").abs().alias("_abs")).sort(
        ["person_id", "_abs"], descending=[False, True])
    # Keep the strongest few per person: at least MIN_REASONS, more while they still matter.
    expl = expl.with_columns(pl.int_range(pl.len()).over("person_id").alias("_k")).filter(
        (pl.col("_k") < MIN_REASONS) | ((pl.col("_k") < MAX_REASONS) & (pl.col("_abs") >= 0.1))
    )
    out: dict[str, list[dict]] = {}
    for r in expl.iter_rows(named=True):  # at most MAX_REASONS rows per listed person
        f = cat.get(r["feature"])
        out.setdefault(r["person_id"], []).append({
            "feature": r["feature"],
            "text": reason_sentence(f, r["value"], med.get(r["team_id"], {}).get(r["feature"])),
            "direction": "raises concern" if r["contribution"] > 0 else "lowers concern",
            "contribution": round(r["contribution"], 4),
        })
    return out


def _recent_tags(con, as_of: date) -> dict[str, list[dict]]:
    df = con.sql("""
        SELECT person_id, tag, polarity, author_role, recorded_at::DATE AS day
        FROM tags t WHERE recorded_at < ? AND recorded_at >= ? - INTERVAL 90 DAY
          AND person_id IN (SELECT person_id FROM _listed_ids)
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY recorded_at DESC, tag_id) <= 6
        ORDER BY person_id, recorded_at DESC
    """, params=[as_of, as_of]).pl()
    out: dict[str, list[dict]] = {}
    for r in df.iter_rows(named=True):
        out.setdefault(r["person_id"], []).append({
            "tag": TAG_LABELS.get(r["tag"], r["tag"]), "polarity": r["polarity"],
            "role": (r["author_role"] or "unknown role").replace("_", " "),
            "date": r["day"].isoformat(),
        })
    return out


def _sparklines(con, as_of: date) -> dict[str, list[int]]:
    start = date(as_of.year - 1, as_of.month, 1)
    df = con.sql("""
        SELECT person_id, date_diff('month', ?::DATE, date_trunc('month', occurred_at)::DATE) AS m,
               count(*) AS n
        FROM contacts WHERE recorded_at < ? AND occurred_at >= ? AND occurred_at < ?
          AND person_id IN (SELECT person_id FROM _listed_ids)
        GROUP BY ALL
    """, params=[start, as_of, start, as_of]).pl()
    months = 12 + (1 if as_of.day > 1 else 0)
    out: dict[str, list[int]] = {}
    for r in df.iter_rows(named=True):
        out.setdefault(r["person_id"], [0] * months)[min(int(r["m"]), months - 1)] = int(r["n"])
    return out


def _person_caveats(con, as_of: date) -> dict[str, list[str]]:
    df = con.sql("""
        SELECT f.person_id, f.days_registered, f.days_since_contact
        FROM feature_snapshots f WHERE f.as_of = ? AND f.person_id IN (SELECT person_id FROM _listed_ids)
    """, params=[as_of]).pl()
    out: dict[str, list[str]] = {}
    for r in df.iter_rows(named=True):
        notes = []
        if r["days_registered"] is not None and r["days_registered"] < 182:
            notes.append(f"registered {max(1, r['days_registered'] // 7)} weeks ago: little history")
        if r["days_since_contact"] is None:
            notes.append("no contacts on record in the last year")
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
            f"few or no {system.replace('_', ' ')} records for this team in {span}: "
            "those contacts may be missing from the reasons"
        )
    return out


def _last_outcomes(con, as_of: date) -> dict[str, dict]:
    df = con.sql("""
        SELECT person_id, outcome, as_of, recorded_at FROM huddle_outcomes
        WHERE recorded_at < ? + INTERVAL 7 DAY
        QUALIFY row_number() OVER (PARTITION BY person_id ORDER BY recorded_at DESC) = 1
    """, params=[as_of]).pl()
    return {r["person_id"]: {"outcome": r["outcome"].replace("_", " "), "date": r["recorded_at"].date().isoformat()}
            for r in df.iter_rows(named=True)}


def _previous(con, model: str, as_of: date) -> dict[str, float]:
    df = con.sql("""
        SELECT person_id, risk FROM huddle_lists
        WHERE model_name = ? AND as_of = (SELECT max(as_of) FROM huddle_lists WHERE model_name = ? AND as_of < ?)
    """, params=[model, model, as_of]).pl()
    return dict(zip(df["person_id"].to_list(), df["risk"].to_list(), strict=True))


def _published_at(con, model: str, version: str, as_of: date) -> datetime:
    row = con.execute(
        "SELECT min(published_at) FROM huddle_lists WHERE model_name = ? AND model_version = ? AND as_of = ?",
        [model, str(version), as_of]).fetchone()
    return row[0] if row and row[0] else datetime.now().replace(microsecond=0)


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


def _assemble(listed, reasons, tags, sparks, person_caveats, team_caveats, outcomes, previous,
              horizon_days, model, version, approval, published_at) -> pl.DataFrame:
    rows = []
    for r in listed.sort(["team_id", "rank"]).iter_rows(named=True):  # one row per listed person
        pid = r["person_id"]
        prev = previous.get(pid)
        rows.append({
            "team_id": r["team_id"], "as_of": r["as_of"], "person_id": pid, "rank": r["rank"],
            "risk": r["risk"], "team_percentile": r["team_percentile"],
            "risk_phrase": risk_phrase(r["risk"], r["team_percentile"], horizon_days),
            "change": change_label(r["risk"], prev), "previous_risk": prev,
            "age_band": r["age_band"],
            "reasons": json.dumps(reasons.get(pid, [])),
            "recent_tags": json.dumps(tags.get(pid, [])),
            "caveats": json.dumps(person_caveats.get(pid, []) + team_caveats.get(r["team_id"], [])),
            "sparkline": json.dumps(sparks.get(pid, [0] * 12)),
            "last_outcome": json.dumps(outcomes.get(pid)),
            "model_name": model, "model_version": str(version), "demo": approval.demo,
            "published_at": published_at,
        })
    return pl.DataFrame(rows, schema_overrides={"previous_risk": pl.Float64})


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["rank", "person_id", "age_band", "risk", "risk_phrase", "change", "previous_risk",
                    "reasons", "recent_tags", "caveats", "last_outcome", "prompt", "demo"])
        for r in rows:
            reasons = "; ".join(f"{x['text']} ({x['direction']})" for x in json.loads(r["reasons"]))
            tags = "; ".join(f"{t['tag']} ({t['polarity']}, {t['role']}, {t['date']})"
                             for t in json.loads(r["recent_tags"]))
            last = json.loads(r["last_outcome"])
            w.writerow([r["rank"], r["person_id"], r["age_band"], f"{r['risk']:.3f}", r["risk_phrase"],
                        r["change"], "" if r["previous_risk"] is None else f"{r['previous_risk']:.3f}",
                        reasons, tags, "; ".join(json.loads(r["caveats"])),
                        "" if not last else f"{last['outcome']} ({last['date']})", PROMPT,
                        "yes" if r["demo"] else "no"])


def sparkline_svg(values: list[int], *, width: int = 120, height: int = 28) -> str:
    """An inline SVG polyline with a text alternative; no script, no external requests."""
    n = len(values)
    top = max(values) or 1
    step = width / max(1, n - 1)
    pts = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    label = "Contacts per month, oldest first: " + ", ".join(str(v) for v in values)
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{pts}"/></svg>'
    )


def _render_html(cfg, team, rows, team_caveats, spec, approval, as_of, last_update, published_at) -> str:
    people = []
    for r in rows:
        people.append({
            **r,
            "reasons": json.loads(r["reasons"]),
            "recent_tags": json.loads(r["recent_tags"]),
            "caveats": json.loads(r["caveats"]),
            "last_outcome": json.loads(r["last_outcome"]),
            "spark_svg": sparkline_svg(json.loads(r["sparkline"])),
            "risk_pct": f"{100 * r['risk']:.0f}%",
            "previous_pct": None if r["previous_risk"] is None else f"{100 * r['previous_risk']:.0f}%",
        })
    return _ENV.get_template("list.html.j2").render(
        team=team, people=people, as_of=as_of, spec=spec, approval=approval,
        demo=approval.demo, prompt=PROMPT, team_caveats=team_caveats,
        last_update=last_update.strftime("%d %B %Y %H:%M") if last_update else "unknown",
        published_at=published_at.strftime("%d %B %Y %H:%M"), name=cfg.wobble.name,
    )
