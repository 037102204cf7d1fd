"""What a list page and its CSV show of each row: shared by the static lists and the review pages.

Turns `huddle_lists` and `huddle_list_context` rows into the plain values templates render (risk in
words, change since the last list, reasons, tags, the sparkline as inline SVG with a text
alternative, caveats) and writes a team's CSV.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import date
from pathlib import Path

from wobble.core.config import Config
from wobble.core.render import day_text
from wobble.lists.rows import spark_start
from wobble.models.approve import Approval

PROMPT = "What do we know that the data doesn't?"
CHANGE_TEXT = {"new": "new on the list", "rising": "risk rising", "steady": "risk about the same",
               "falling": "risk falling"}


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



def list_header(cfg: Config, context: dict, spec, approval: Approval, people: int) -> dict:
    """The facts above a list: framing, model and approval, data freshness, gaps, the last huddle."""
    last = from_json(context["last_huddle"])
    return {
        "team": context["team_id"], "as_of": context["as_of"], "as_of_text": day_text(context["as_of"]),
        "demo": approval.demo, "prompt": PROMPT, "name": cfg.wobble.name,
        "data_updated": [{"system": d["system"], "date": day_text(d["date"], short=True)}
                         for d in from_json(context["data_updated"]) or []],
        "model_title": spec.title, "model_name": spec.name, "model_version": approval.model_version,
        "approved_by": approval.approved_by, "approved_at": day_text(approval.approved_at),
        "published_at": f"{day_text(context['published_at'])} {context['published_at']:%H:%M}",
        "people": people, "team_caveats": from_json(context["team_caveats"]) or [],
        "last_huddle": None if not last else {"date": day_text(last["date"]), "sentence": last["sentence"]},
    }


def from_json(value):
    """A JSON column's value, parsed (DuckDB hands JSON to Python as text)."""
    return json.loads(value) if isinstance(value, str) else value


def person_view(row: dict, horizon_days: int, last_outcome: dict | None, team_caveats: list[str]) -> dict:
    """One huddle_lists row as a page and the CSV show it; the team's caveats are shown once, above."""
    spark = from_json(row["sparkline"])
    as_of = row["as_of"]
    prev = row["previous_risk"]
    caveats = from_json(row["caveats"])
    phrase = risk_phrase(row["risk"], row["team_percentile"], horizon_days)
    detail = None if prev is None else f"{100 * prev:.0f}% at the last list, {100 * row['risk']:.0f}% now"
    reasons = from_json(row["reasons"])
    return {
        "rank": row["rank"], "person_id": row["person_id"], "age_band": row["age_band"],
        "risk": row["risk"], "previous_risk": prev, "risk_phrase": phrase,
        "risk_sentence": phrase[0].upper() + phrase[1:], "risk_pct": f"{100 * row['risk']:.0f}%",
        "change": row["change"], "change_text": CHANGE_TEXT.get(row["change"], row["change"]),
        "change_detail": detail,
        "reasons": [{**r, "raises": r["direction"] == "raises concern"} for r in reasons],
        "tags": [{**t, "date_text": day_text(t["date"], short=True)} for t in from_json(row["recent_tags"])],
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


def write_csv(path: Path, people: list[dict], demo: bool) -> None:
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


