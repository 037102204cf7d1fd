"""What a list page and its CSV show of each row: shared by the static lists and the review pages.

Turns `huddle_lists` and `huddle_list_context` rows into the plain values templates render (risk in
words, change since the last list, reasons, tags, the sparkline as inline SVG with a text
alternative, caveats) and writes a team's CSV.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import date, timedelta
from functools import cache
from pathlib import Path

from wobble.core.config import Config
from wobble.core.render import day_text
from wobble.core.vocab import upper_first
from wobble.lists.recent import EVENT
from wobble.lists.rows import SPARK_MONTHS, spark_bounds
from wobble.models.approve import Approval

PROMPT = "What do we know that the data doesn't?"
CHANGE_TEXT = {"new": "new on the list", "higher": "chance higher than at the last list",
               "same": "chance about the same as at the last list", "lower": "chance lower than at the last list",
               "carried": "still here: no outcome recorded yet"}

# A chance in words and as a band, never as an exact percentage: a calibrated score is an estimate,
# and isotonic calibration gives many people the same value (and some 0% or 100%).
BANDS: tuple[tuple[float, str, str], ...] = (
    (0.05, "less than 1 in 20", "under 5%"),
    (0.10, "1 in 20 to 1 in 10", "5–10%"),
    (0.20, "1 to 2 in 10", "10–20%"),
    (0.40, "2 to 4 in 10", "20–40%"),
    (0.60, "4 to 6 in 10", "40–60%"),
    (0.80, "6 to 8 in 10", "60–80%"),
    (float("inf"), "more than 8 in 10", "over 80%"),
)


def band(p: float) -> int:
    """The index in BANDS of the band holding the chance `p`."""
    return next(k for k, (upper, _, _) in enumerate(BANDS) if p < upper)


def risk_phrase(p: float, percentile: float | None, horizon_days: int, outcome: str = "a crisis") -> str:
    """'2 to 4 in 10 chance of a crisis in the next 90 days; higher than 98 in 100 people in this team'."""
    text = f"{BANDS[band(p)][1]} chance of {outcome} in the next {horizon_days} days"
    if percentile is not None:
        text += f"; higher than {min(99, math.floor(percentile * 100))} in 100 people in this team"
    return text


def change_label(risk: float, previous: float | None) -> str:
    """new | higher | same | lower: the chance's band against the last list's."""
    if previous is None:
        return "new"
    now, before = band(risk), band(previous)
    return "higher" if now > before else "lower" if now < before else "same"


RECENT_TITLE = "Recently in crisis — check a plan exists"


def section_intros(spec) -> dict[str, str]:
    """What each part of a list is, in a sentence or two, from the model's spec."""
    t, c, s = spec.target, spec.cohort, spec.listing
    who = f" among people with no crisis contact in the last {c.no_crisis_days} days" if c.no_crisis_days else ""
    capacity = (f"Ordered by the chance of {t.outcome_phrase} in the next {t.horizon_days} days{who}. "
                + ("Everyone here has at least one reason about change, shown first. " if s.require_change_reason
                   else "")
                + "People whose chances read the same are ordered by the model's finer score: "
                  "close places mean little.")
    recent = (f"People with a crisis contact in the last {s.recent_crisis_days} days, and for up to "
              f"{s.follow_up_days} days after one until the huddle records an outcome for them. They do not "
              "count against the team's capacity and carry no chance: the question is whether a plan exists.")
    return {"capacity": capacity, "recent_crisis": recent}


def list_header(cfg: Config, context: dict, spec, approval: Approval, people: int, recent: int = 0) -> dict:
    """The facts above a list: framing, model and approval, data freshness, gaps, the last huddle,
    and each part's title and what it is (`people` in the capacity part, `recent` in the other)."""
    last = from_json(context["last_huddle"])
    return {
        "team": context["team_id"], "as_of": context["as_of"], "as_of_text": day_text(context["as_of"]),
        "demo": approval.demo, "prompt": PROMPT, "name": cfg.wobble.name,
        "data_updated": [{"system": d["system"], "date": day_text(d["date"], short=True)}
                         for d in from_json(context["data_updated"]) or []],
        "model_title": spec.title, "model_name": spec.name, "model_version": approval.model_version,
        "approved_by": approval.approved_by, "approved_at": day_text(approval.approved_at),
        "published_at": f"{day_text(context['published_at'])} {context['published_at']:%H:%M}",
        "people": people, "recent": recent, "team_caveats": from_json(context["team_caveats"]) or [],
        "last_huddle": None if not last else {"date": day_text(last["date"]), "sentence": last["sentence"]},
        "titles": {"capacity": spec.listing.title, "recent_crisis": RECENT_TITLE},
        "intros": section_intros(spec),
        "has_recent": spec.listing.recent_crisis_days > 0,
    }


def from_json(value):
    """A JSON column's value, parsed (DuckDB hands JSON to Python as text)."""
    return json.loads(value) if isinstance(value, str) else value


def person_view(row: dict, spec, last_outcome: dict | None, team_caveats: list[str]) -> dict:
    """One huddle_lists row as a page and the CSV show it; the team's caveats are shown once, above.
    A row of the recently-in-crisis part has no chance: its reasons say what happened."""
    spark = from_json(row["sparkline"])
    as_of = row["as_of"]
    prev = row["previous_risk"]
    caveats = from_json(row["caveats"])
    risk = row["risk"]
    phrase = (None if risk is None else
              risk_phrase(risk, row["team_percentile"], spec.target.horizon_days, spec.target.outcome_phrase))
    detail = None if prev is None or risk is None else f"{BANDS[band(prev)][1]} at the last list"
    reasons = from_json(row["reasons"])
    return {
        "section": row.get("section") or "capacity",
        "rank": row["rank"], "person_id": row["person_id"], "age_band": row["age_band"],
        "risk": risk, "previous_risk": prev, "risk_phrase": phrase or "",
        "risk_sentence": upper_first(phrase or ""),
        "risk_band": BANDS[band(risk)][2] if risk is not None else "",
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


@cache  # the same for every person on a date's lists: at 5,000,000 people, 20 s of strftime
def _month_labels(n: int, as_of: date) -> tuple[str, ...]:
    """Each sparkline month by the month it ends in: 'Dec 2025' for 23 Nov to 22 Dec 2025."""
    ends = [e - timedelta(days=1) for e in spark_bounds(as_of)[1:]]
    return tuple(e.strftime("%b %Y") for e in ends)[:n]


def spark_caption(values: list[int], as_of: date) -> str:
    """The sparkline's facts in words: the year's total (the reasons' "in the last year") and the busiest month."""
    values = values[-SPARK_MONTHS:]  # lists published before the 12 months were aligned held 13
    total = sum(values)
    if total == 0:
        return "No attended contacts in the 12 months to the list's date."
    labels = _month_labels(len(values), as_of)
    top = max(range(len(values)), key=lambda i: (values[i], i))
    last_day = day_text(as_of - timedelta(days=1), short=True)
    return f"{total} in the 12 months to {last_day}; most in the month to {labels[top]} ({values[top]})."


def sparkline_svg(values: list[int], as_of: date, *, width: int = 160, height: int = 32) -> str:
    """An inline SVG polyline with a text alternative naming every month; no script, no requests."""
    values = values[-SPARK_MONTHS:]
    n = len(values)
    top = max(values) or 1
    step = width / max(1, n - 1)
    pts = " ".join(f"{i * step:.1f},{height - 3 - (v / top) * (height - 6):.1f}" for i, v in enumerate(values))
    labels = _month_labels(n, as_of)
    label = "Attended contacts per month, in the 12 months to the list's date: " + ", ".join(
        f"{m} {v}" for m, v in zip(labels, values, strict=True))
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{label}"><title>{label}</title>'
        f'<polyline fill="none" stroke="currentColor" stroke-width="2" points="{pts}"/></svg>'
    )


def write_csv(path: Path, people: list[dict], demo: bool) -> None:
    """A team's list as CSV, one row per person: the capacity part by rank, then the other part."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["section", "rank", "person_id", "age_band", "risk", "risk_band", "risk_phrase", "change",
                    "previous_risk", "reasons", "recent_tags", "caveats", "contacts_per_month", "last_outcome",
                    "prompt", "demo"])
        for p in people:
            last = p["last_outcome"]
            w.writerow([
                p["section"], p["rank"], p["person_id"], p["age_band"],
                "" if p["risk"] is None else f"{p['risk']:.3f}", p["risk_band"], p["risk_phrase"], p["change"],
                "" if p["previous_risk"] is None else f"{p['previous_risk']:.3f}",
                "; ".join(x["text"] if x["direction"] == EVENT else f"{x['text']} ({x['direction']})"
                          for x in p["reasons"]),
                "; ".join(f"{t['tag']} ({t['polarity']}, {t['role']}, {t['date']})" for t in p["tags"]),
                "; ".join(p["all_caveats"]),
                " ".join(str(v) for v in p["contacts_per_month"]),
                "" if not last else f"{last['label']} (list of {last['list_date']})", PROMPT,
                "yes" if demo else "no"])
