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

from wobble.core.sql import in_list
from wobble.core.vocab import upper_first
from wobble.features import Catalogue
from wobble.features.language import window_phrase
from wobble.lists.score import SCORE_ROWS, team_groups

MAX_REASONS = 5
MIN_REASONS = 3
# A contribution (log-odds) at least this large earns a fourth or fifth reason; a strength this
# large is shown even when concerns fill the first places.
STRONG_REASON = 0.1
STRENGTH_WORTH_SHOWING = 0.05


# Days from two years on read as years: "about 28 years since registering", not "10155 days".
DAYS_AS_YEARS = 730


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "none on record"
    if unit == "share":
        return f"{round(100 * v)}%"
    if unit == "days" and v >= DAYS_AS_YEARS:
        return f"about {round(v / 365.25)} years"
    return f"{int(round(v)):,}" if abs(v - round(v)) < 1e-9 else f"{v:,.1f}"


def _singular(desc: str) -> str:
    """'A&E attendances in …' → 'A&E attendance in …': the first plural word, for a count of one."""
    words = desc.split(" ")
    for i, w in enumerate(words[:4]):
        if w.islower() and len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "is")):
            words[i] = w[:-1]
            return " ".join(words)
    return desc


# What an empty cell means, for an analyst: "(blank: none in the last year)", "(blank unless …)",
# or a last clause "; blank with fewer than two)". A reason has a value, so it leaves them out.
_BLANK_NOTE = re.compile(r"\s*\(blank[: ][^)]*\)|;\s*blank [^;)]*(?=\))")


def reason_sentence(feature, value: float | None, team_typical: float | None) -> str:
    """One plain sentence: the person's value, what it means, and what is typical in the team (an
    infinite typical value: most people in the team have none in the last year). A change feature
    with a `noun` reads as change instead (`change_sentence`)."""
    said = change_sentence(feature, value)
    if said is not None:
        return said
    unit = feature.unit
    desc = _BLANK_NOTE.sub("", feature.description)
    cap = upper_first(desc)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{cap}: none on record"
    if unit in ("", "decile", "years", "share", "index"):  # "Continuity …: 0.8", not "0.8 continuity …"
        if unit == "" and value in (0, 1):
            text = cap if value == 1 else "Not " + desc
        else:
            text = f"{cap}: {_fmt_value(value, unit)}"
            if unit == "years":  # "Age: 83 years"
                text += " year" if value == 1 else " years"
    elif unit == "days" and value >= DAYS_AS_YEARS and desc.startswith("days "):
        text = upper_first(f"{_fmt_value(value, unit)} {desc.removeprefix('days ')}")
    else:
        text = f"{_fmt_value(value, unit)} {_singular(desc) if value == 1 else desc}"
    known = team_typical is not None and not (isinstance(team_typical, float) and math.isnan(team_typical))
    if known and unit not in ("", "decile", "years"):
        if math.isinf(team_typical):  # a days-since blank: none in the window it reads
            text += f" — most people in this team have none in the last {window_phrase(_window(feature))}"
        elif team_typical == 0 and value > 0:
            text += " — most people in this team have none"
        else:
            text += f" — typical in this team: {_fmt_value(team_typical, unit)}"
    return text


def _window(feature) -> int:
    """The days a feature reads back (a year when it does not say)."""
    return getattr(feature, "window_days", None) or 365


def _about(n: float) -> str:
    """'3' or 'about 3': a count that is not whole is said as roughly that many (never '-0.0')."""
    whole = max(1, round(n))
    return f"{whole}" if abs(n - whole) < 0.05 else f"about {whole}"


def change_sentence(feature, value: float | None) -> str | None:
    """A change feature's value as change, in words: '3 more GP appointments than usual for them in
    the last 30 days', 'contacts attended rising over the last 12 months: about 1.5 more each month'.
    None when the feature has no `noun` or no reading (`Feature.reads`), or no value."""
    noun, reads = getattr(feature, "noun", None), getattr(feature, "reads", "")
    if not noun or not reads or value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    window = f"the last {window_phrase(feature.window_days)}"
    v = float(value)
    if reads == "excess":
        if abs(v) < 0.5:
            text = f"about as many {noun} as usual for them in {window}"
        else:
            n = _about(abs(v))
            thing = _singular(noun) if n in ("1", "about 1") else noun
            text = f"{n} {'more' if v > 0 else 'fewer'} {thing} than usual for them in {window}"
    elif reads == "ratio":
        usual = ("about their usual rate" if 0.8 < v < 1.25 else "almost none, against their usual rate"
                 if v < 0.05 else f"{v:.1f} times their usual rate")
        text = f"{noun} in {window}: {usual}"
    elif reads == "slope":
        if abs(v) < 0.05:
            text = f"{noun} steady over {window}"
        else:
            text = f"{noun} {'rising' if v > 0 else 'falling'} over {window}: about {abs(v):.1f} " \
                   f"{'more' if v > 0 else 'fewer'} each month"
    elif reads == "acceleration":
        text = (f"{noun} picking up faster lately (over {window})" if v > 0.05 else
                f"{noun} slowing lately (over {window})" if v < -0.05 else
                f"{noun} at a steady pace over {window}")
    elif reads == "share_change":
        points = round(100 * v)
        text = (f"{noun} about the same in {window} as in the months before" if points == 0 else
                f"{noun} {'up' if points > 0 else 'down'} {abs(points)} percentage points in {window} "
                "against the months before")
    else:  # new
        n = round(v)
        text = (f"no new {noun} in {window}" if n <= 0 else
                f"{n} new {_singular(noun) if n == 1 else noun} in {window} (none in the months before)")
    return upper_first(text)


def choose_reasons(expl: pl.DataFrame) -> pl.DataFrame:
    """Which explanations to show, for every listed person at once, in the order to show them.

    `expl` has person_id, feature, contribution, readable and, optionally, first and measure (see
    `list_reasons`). Per person, the `first` one (the strongest reason about change, on lists that
    require one) leads; then, among the readable ones by |contribution| (ties by feature name) and
    only the first of each measure's windows ("3 more concerns than usual in the last 60 days" and
    "… in the last 30 days" say one thing twice): at least MIN_REASONS; a fourth and fifth while
    they still matter (|SHAP| ≥ STRONG_REASON); and, when none of those lowers concern, the
    strongest strength (a contribution ≤ −STRENGTH_WORTH_SHOWING) in place of the fifth, so what
    lowers concern is shown beside what raises it.
    """
    k, c = pl.col("_k"), pl.col("contribution")
    first = pl.col("first") if "first" in expl.columns else pl.lit(False)
    measure = pl.col("measure") if "measure" in expl.columns else pl.col("feature")
    ranked = (
        expl.with_columns(first.alias("_first"), measure.alias("_measure"))
        .filter(pl.col("readable") | pl.col("_first"))
        .with_columns(pl.when(pl.col("_first")).then(float("inf")).otherwise(c.abs()).alias("_abs"))
        .sort(["person_id", "_abs", "feature"], descending=[False, True, False])
        .filter(pl.int_range(pl.len()).over(["person_id", "_measure"]) == 0)
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
                                                             "_first_strength", "_first", "_measure")


# "None in the last year" for a days-since feature: later than any value, when finding what is
# typical in a team and which side of it a person is on.
NONE_YET = 1e9


def neutral_expr() -> pl.Expr:
    """Whether a change feature's value reads as no change at all ("about as many as usual",
    "steady"), by its reading (`_reads`): no reason to talk about anyone."""
    v, r = pl.col("value"), pl.col("_reads")
    return (pl.when(r == "excess").then(v.abs() < 0.5)
            .when(r == "ratio").then((v > 0.8) & (v < 1.25))
            .when(r.is_in(["slope", "acceleration"])).then(v.abs() <= 0.05)
            .when(r == "share_change").then(v.abs() < 0.005)
            .when(r == "new").then(v < 0.5)
            .otherwise(False)).fill_null(False)


def readable_expr() -> pl.Expr:
    """Whether a reason reads true on its own: its direction agrees with which side of the team's
    typical value the person is on, for the feature's `concern` (higher values concern more, or
    lower ones do: days since, strengths). So a recent event never "lowers concern", a count above
    typical never "lowers concern", and a value equal to typical is no reason at all, nor is a
    change feature that reads as no change (`neutral_expr`). Features that concern neither way
    (age, deprivation) and teams with no typical value read as they are."""
    v, t, up = pl.col("_v"), pl.col("typical"), pl.col("contribution") > 0
    higher = (up & (v > t)) | (~up & (v < t))
    lower = (up & (v < t)) | (~up & (v > t))
    return (pl.when(neutral_expr()).then(False)
            .when(pl.col("concern") == "none").then(True)
            .when(t.is_null() | t.is_nan()).then(True)
            .when(pl.col("concern") == "lower").then(lower)
            .otherwise(higher))


def list_reasons(con, cat: Catalogue, model: str, version: str, as_of: date,
                 change_first: bool = False) -> dict[str, list[dict]]:
    """Each listed person's reasons as sentences, with what is typical in their team.

    A reason is shown only when it reads true (`readable_expr`): TreeSHAP splits credit between
    overlapping counts (90-day and 1-year) and one can come out negative, which would read as "5
    concerns in the last year — most people have none (lowers concern)". With `change_first`, the
    person's strongest reason about change (a change feature whose value reads as a rise and raises
    concern, as `models.explain.change_reasons` picks) leads, so it is always shown.
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

    def as_value(f: str) -> str:  # a days-since blank is "none in the last year": later than any
        return f"coalesce({f}, {NONE_YET})" if by_name[f].unit == "days" else f

    # a median holds its group's values: whole teams at a time, as they are scored (at 5,000,000
    # people every team's at once ran DuckDB out of memory)
    medians = ', '.join(f'median({as_value(f)})::DOUBLE AS {f}' for f in feats)
    typical = pl.concat([con.sql(
        f"SELECT team_id, {medians} FROM feature_snapshots WHERE as_of = ? "
        f"{'' if teams is None else f'AND team_id IN {in_list(teams)}'} GROUP BY team_id", params=[as_of]
    ).pl() for teams in team_groups(con, as_of, SCORE_ROWS)]).unpivot(
        index="team_id", variable_name="feature", value_name="typical").with_columns(
        pl.when(pl.col("typical") >= NONE_YET).then(float("inf")).otherwise(pl.col("typical")).alias("typical"))
    meta = pl.DataFrame({
        "feature": feats, "measure": [by_name[f].measure or f for f in feats],
        "concern": [by_name[f].concern for f in feats],
        "_days": [by_name[f].unit == "days" for f in feats],
        "_rises_at": [by_name[f].rises_at for f in feats], "_reads": [by_name[f].reads for f in feats],
    }, schema={"feature": pl.String, "measure": pl.String, "concern": pl.String, "_days": pl.Boolean,
               "_rises_at": pl.Float64, "_reads": pl.String})
    v = pl.col("value")
    expl = (expl.join(typical, on=["team_id", "feature"], how="left").join(meta, on="feature")
            .with_columns(pl.when(v.is_not_null()).then(v)
                          .otherwise(pl.when(pl.col("_days")).then(float("inf")).otherwise(float("-inf")))
                          .alias("_v"))
            .with_columns(readable_expr().alias("readable"),
                          ((pl.col("contribution") > 0) & (v >= pl.col("_rises_at"))).fill_null(False)
                          .alias("about_change")))
    if change_first:
        first = (expl.filter("about_change").sort(["person_id", "contribution", "feature"],
                                                  descending=[False, True, False])
                 .group_by("person_id", maintain_order=True).first()
                 .select("person_id", "feature", pl.lit(True).alias("first")))
        expl = expl.join(first, on=["person_id", "feature"], how="left").with_columns(pl.col("first").fill_null(False))
    out: dict[str, list[dict]] = {}
    for r in choose_reasons(expl).iter_rows(named=True):  # at most MAX_REASONS per listed person
        typical_value = None if r["typical"] is None or math.isnan(r["typical"]) else r["typical"]
        finite = typical_value is not None and not math.isinf(typical_value)
        out.setdefault(r["person_id"], []).append({
            "feature": r["feature"],
            "text": reason_sentence(by_name[r["feature"]], r["value"], typical_value),
            "direction": "raises concern" if r["contribution"] > 0 else "lowers concern",
            "contribution": round(r["contribution"], 4),
            "about_change": bool(r["about_change"]),
            # what the sentence was built from, so anyone can check it reads true
            "value": r["value"], "typical": typical_value if finite else None,
            "typical_is_none": typical_value is not None and math.isinf(typical_value),
        })
    return out
