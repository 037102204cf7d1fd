"""Reasons: each listed person's TreeSHAP contributions, as plain sentences a huddle can read.

Reads `explanations` (one row per listed person and feature) and the team's typical values from
`feature_snapshots`; returns, per person, three to five reasons in the order to show them, each
with whether it raises or lowers concern.
"""

from __future__ import annotations

import math
import re
from datetime import date

import polars as pl

from wobble.features import Catalogue

MAX_REASONS = 5
MIN_REASONS = 3
# A contribution (log-odds) at least this large earns a fourth or fifth reason; a strength this
# large is shown even when concerns fill the first places.
STRONG_REASON = 0.1
STRENGTH_WORTH_SHOWING = 0.05


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


def list_reasons(con, cat: Catalogue, model: str, version: str, as_of: date) -> dict[str, list[dict]]:
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

