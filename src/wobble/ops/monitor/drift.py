"""Drift: is the champion looking at the population it learned from?

The population stability index (PSI) of every model feature and of the risk score, the current
as-of date against the model's training as-of dates, overall and per team. PSI = Σ (now − then) ·
ln(now / then) over ten bins cut at the training window's deciles (plus one bin for "missing");
shares below 1 in 10,000 count as 1 in 10,000 so an empty bin cannot give an infinite index.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from wobble.core.errors import WobbleError
from wobble.core.sql import array, date_literal, in_dates
from wobble.core.vocab import system_label, upper_first
from wobble.core.warehouse import scalar
from wobble.features.feeds import (
    BEHIND_RULE,
    RULE,
    behind_sentence,
    feed_months,
    feed_status,
    feeds_behind,
    gap_sentence,
    quiet_spans,
)
from wobble.models.fit import feature_matrix
from wobble.ops.monitor.findings import Finding, avg, pct, psi_text

PSI_FLOOR = 1e-4
DECILES = [i / 10 for i in range(1, 10)]
MIN_TEAM_PEOPLE = 500  # teams with fewer rows scored on either side: PSI mostly noise, shown, not judged
SAMPLE_ROWS = 200_000  # rows scored for the score's PSI, per side: a deterministic sample by person


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI between two count vectors over the same bins."""
    e = np.maximum(expected / max(expected.sum(), 1), PSI_FLOOR)
    a = np.maximum(actual / max(actual.sum(), 1), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _level(psi: float, m) -> str:
    return "act" if psi >= m.psi_act else "watch" if psi >= m.psi_watch else "ok"


def _person_sample(n_rows: int, keep: int = SAMPLE_ROWS) -> str:
    """A SQL filter keeping about `keep` of `n_rows`, by person. By a digest of the pseudonym, not
    its own digits: those split people into held-out and training, and into training's sample
    (`wobble.models.cohort`), so the training dates can hold training people's rows alone, and
    a cut on the same digits could keep none of them."""
    if n_rows <= keep:
        return "true"
    cut = max(1, int(16**6 * keep / n_rows))
    return f"substr(md5(person_id), 1, 6) < '{cut:06x}'"


def _drift(con, features, cat, ref_dates, as_of, cohort, booster, calibrator, m) -> dict:
    present = {r[0] for r in con.execute("DESCRIBE feature_snapshots").fetchall()}
    missing = [f for f in features if f not in present]
    if missing:
        raise WobbleError(f"feature_snapshots lacks model features {', '.join(missing[:5])}: the feature "
                          "catalogue changed since this model was trained; retrain it")
    ref = f"as_of IN {in_dates(ref_dates)} AND {cohort}"
    cur = f"as_of = {date_literal(as_of)} AND {cohort}"
    n_ref = scalar(con, f"SELECT count(*) FROM feature_snapshots WHERE {ref}")
    n_cur = scalar(con, f"SELECT count(*) FROM feature_snapshots WHERE {cur}")
    if not n_ref or not n_cur:
        raise WobbleError(f"no one in the cohort at {as_of if not n_cur else 'the training dates'}")
    # bin edges: the training window's deciles, computed on a sample of people when it is large
    edges_row = con.execute(
        "SELECT " + ", ".join(f"quantile_disc({f}::DOUBLE, {DECILES})" for f in features)
        + f" FROM feature_snapshots WHERE {ref} AND {_person_sample(n_ref, 10 * SAMPLE_ROWS)}").fetchall()[0]
    edges = {f: sorted({e for e in (row or []) if e is not None}) for f, row in zip(features, edges_row, strict=True)}

    def binned(f: str) -> str:  # 0: missing; k: above k - 1 of the edges
        steps = " + ".join(f"({f}::DOUBLE > {e!r})::INT" for e in edges[f]) or "0"
        return f"(CASE WHEN {f} IS NULL THEN 0 ELSE 1 + {steps} END)::UTINYINT"

    aggs = ", ".join(f"avg({f}::DOUBLE), avg(({f} IS NULL)::DOUBLE)" for f in features)
    sides, counts = {}, {}
    for side, where in (("ref", ref), ("cur", cur)):  # one scan per side: every team, and all teams
        result = con.execute(f"SELECT grouping(team_id), team_id, count(*), {aggs} FROM feature_snapshots "
                             f"WHERE {where} GROUP BY GROUPING SETS ((team_id), ())").fetchall()
        sides[side] = {None if r[0] else r[1]: r[3:] for r in result}
        sizes = {None if r[0] else r[1]: r[2] for r in result}  # the current side's, after the loop
        counts[side] = _bin_counts(con, [binned(f) for f in features], where,
                                   sorted(t for t in sides[side] if t is not None), 2 + max(map(len, edges.values())))

    def compare(team: str | None) -> list[dict]:
        rows = []
        for i, f in enumerate(features):
            (mean_ref, miss_ref), (mean_cur, miss_cur) = (sides[s][team][2 * i: 2 * i + 2] for s in ("ref", "cur"))
            then, now = counts["ref"][team][i], counts["cur"][team][i]
            seen = (then > 0) | (now > 0)  # the bins either side has rows in, in order
            psi = _psi(then[seen].astype(float), now[seen].astype(float))
            rows.append({"feature": f, "description": _description(cat, f), "unit": _unit(cat, f),
                         "psi": round(psi, 4),
                         "level": _level(psi, m), "ref_mean": mean_ref, "cur_mean": mean_cur,
                         "ref_missing": miss_ref, "cur_missing": miss_cur})
        return sorted(rows, key=lambda r: -r["psi"])

    score = _score_drift(con, features, ref, cur, n_ref, n_cur, booster, calibrator, m)
    feeds = feed_months(con, as_of)
    gaps = feed_status(feeds)
    teams = []
    for t in score.pop("teams"):
        if t["team"] in sides["ref"] and t["team"] in sides["cur"]:
            # on the rows scored: at scale both sides are samples, the training dates' a small one
            # (training builds them for the people its fits read), and a few hundred rows a team
            # gave every team of a 5,000,000-person world an "act"
            judged = min(sizes[t["team"]], t.pop("scored"), t.pop("ref_scored")) >= MIN_TEAM_PEOPLE
            t["features"] = [r for r in compare(t["team"]) if r["level"] != "ok"] if judged else []
            t["people"], t["judged"] = sizes[t["team"]], judged
            t["feed_gap"] = gaps.get(t["team"], "none")
            if not judged:
                t["level"] = "ok"
            teams.append(t)
    return {"ref_dates": [d.isoformat() for d in ref_dates], "as_of": as_of.isoformat(),
            "n_ref": int(n_ref), "n_cur": int(n_cur), "features": compare(None), "score": score,
            "teams": teams, "feed_rule": RULE,
            "feed_gaps": [{"team": s["team_id"], "text": gap_sentence(s), "status": gaps.get(s["team_id"], "none")}
                          for s in quiet_spans(feeds)],
            "behind_rule": BEHIND_RULE,
            "feeds_behind": [{"team": f["team_id"], "system": f["source_system"], "last_day": f["last_day"].isoformat(),
                              "text": behind_sentence(f, as_of)} for f in feeds_behind(con, as_of)]}


BINNED_AT_ONCE = 32  # binned columns fetched together: a byte each per row


def _bin_counts(con, binned: list[str], where: str, teams: list[str], bins: int) -> dict[str | None, np.ndarray]:
    """Rows of `feature_snapshots` meeting `where` per team of `teams` (None: all of them) and bin:
    an array (len(binned), bins) per team, for `binned` expressions (SQL, each a UTINYINT below
    `bins`).

    The bins are computed in DuckDB and counted with numpy, a few columns at a time; DuckDB's
    `histogram` keeps a map per team and column and took 53 s for 161 columns of 3.8 million rows."""
    keyed = (f"feature_snapshots JOIN (SELECT unnest({array(teams)}) AS team_id, "
             f"unnest(range({len(teams)}))::INTEGER AS _team) USING (team_id)")
    by_team = np.zeros((len(teams), len(binned), bins), dtype=np.int64)
    for k in range(0, len(binned), BINNED_AT_ONCE):
        chunk = binned[k:k + BINNED_AT_ONCE]
        got = con.execute(f"SELECT _team, {', '.join(f'{b} AS _b{j}' for j, b in enumerate(chunk))} "
                          f"FROM {keyed} WHERE {where}").fetchnumpy()
        cell = got["_team"].astype(np.int64) * bins
        for j in range(len(chunk)):
            by_team[:, k + j] = np.bincount(cell + got[f"_b{j}"], minlength=len(teams) * bins).reshape(len(teams), bins)
    return {None: by_team.sum(axis=0)} | {t: by_team[i] for i, t in enumerate(teams)}


def _unit(cat, feature: str) -> str:
    try:
        return cat.get(feature).unit
    except KeyError:
        return "?"


def _description(cat, feature: str) -> str:
    try:
        return cat.get(feature).description
    except KeyError:
        return feature


def _score_drift(con, features, ref, cur, n_ref, n_cur, booster, calibrator, m) -> dict:
    """PSI of the calibrated risk, overall and per team, on a sample of people from each side."""

    def risks(where: str, n: int) -> pl.DataFrame:
        frame = con.sql(f"SELECT team_id, {', '.join(features)} FROM feature_snapshots "
                        f"WHERE {where} AND {_person_sample(n)} ORDER BY as_of, person_id").pl()
        X = feature_matrix(frame, features)
        return frame.select("team_id").with_columns(pl.Series("risk", calibrator.predict(booster.predict(X))))

    then, now = risks(ref, n_ref), risks(cur, n_cur)
    edges = np.unique(np.quantile(then["risk"].to_numpy(), DECILES))

    def psi_of(a: np.ndarray, b: np.ndarray) -> float:
        k = edges.size + 1
        return _psi(np.bincount(np.searchsorted(edges, a, "left"), minlength=k).astype(float),
                    np.bincount(np.searchsorted(edges, b, "left"), minlength=k).astype(float))

    overall = psi_of(then["risk"].to_numpy(), now["risk"].to_numpy())
    then_by, now_by = ({k[0]: f["risk"].to_numpy() for k, f in side.partition_by("team_id", as_dict=True).items()}
                       for side in (then, now))
    teams = []
    for team in sorted(set(now_by) & set(then_by)):
        a, b = then_by[team], now_by[team]
        p = psi_of(a, b)
        teams.append({"team": team, "psi": round(p, 4), "level": _level(p, m), "ref_mean": float(a.mean()),
                      "cur_mean": float(b.mean()), "scored": int(b.size), "ref_scored": int(a.size)})
    return {"psi": round(overall, 4), "level": _level(overall, m), "ref_mean": float(then["risk"].mean()),
            "cur_mean": float(now["risk"].mean()), "sampled_ref": then.height, "sampled_cur": now.height,
            "teams": teams}


def _one_level_per_signal(drift: dict) -> None:
    """A shift whose cause is known and over is a watch everywhere it shows, never an act in one place and a
    watch in another: inputs that moved in judged teams only where a feed went quiet and has since resumed
    (scores held) are 'watch' in those teams' rows and in the overall table (marked `resumed_gap`)."""
    judged = [t for t in drift["teams"] if t.get("judged")]
    resumed = [t for t in judged if t["level"] == "ok" and t.get("feed_gap") == "resumed"]
    for t in resumed:
        for f in t["features"]:
            f["level"] = "watch" if f["level"] == "act" else f["level"]
    others = [t for t in judged if t not in resumed]
    for f in drift["features"]:
        where = [t for t in judged if any(g["feature"] == f["feature"] for g in t["features"])]
        if f["level"] == "act" and where and all(t in resumed for t in where) \
                and not any(t in others for t in where):
            f["level"], f["resumed_gap"] = "watch", [t["team"] for t in where]


def _drift_findings(drift: dict, m) -> list[Finding]:
    _one_level_per_signal(drift)
    out = []
    s = drift["score"]
    if s["level"] != "ok":
        out.append(Finding(
            s["level"], "drift",
            f"The risk scores have shifted since the training window: PSI {psi_text(s['psi'])} "
            f"(average risk {pct(s['ref_mean'])} then, {pct(s['cur_mean'])} now).",
            "The model now sees a population unlike the one it learned from, so its risks may no longer "
            "be calibrated. Look at the features below to see what moved; ask whether a source changed "
            "(a new system, a coding change, a missing feed) or the population really changed."))
    for t in drift["teams"]:
        levels = [t["level"]] + [f["level"] for f in t["features"]]
        if all(lv == "ok" for lv in levels):
            continue
        moved = "; ".join(_moved(f) for f in t["features"][:3])
        n = len(t["features"])
        head = (f"the risk scores shifted (PSI {psi_text(t['psi'])}, average risk {pct(t['ref_mean'])} then, "
                f"{pct(t['cur_mean'])} now)" if t["level"] != "ok" else
                f"{n} input{'s' if n > 1 else ''} shifted though the risk scores held (PSI {psi_text(t['psi'])})")
        text = f"In team {t['team']}, {head}" + (f"; the inputs that moved most there: {moved}" if moved else "")
        if t["level"] == "ok" and t.get("feed_gap") == "resumed":
            # The scores held and the cause is known and over: its lists already carry the caveat.
            out.append(Finding(
                "watch", "drift",
                text + ". One of the team's data feeds went quiet earlier in the year and has since resumed, "
                "so inputs that look back a year still show the hole.",
                "Its lists already say some contacts may be missing. Ask the source whether it can send the "
                "missing months; the shift fades as the gap leaves the 12-month window."))
            continue
        out.append(Finding(
            "act" if "act" in levels else "watch", "drift", text + ".",
            "A change in one team usually means one of its data feeds changed or stopped, not its people; "
            "check the team's sources before trusting its list."))
    for system in sorted({f["system"] for f in drift.get("feeds_behind", [])}):
        behind = [f for f in drift["feeds_behind"] if f["system"] == system]
        teams = ", ".join(f"{f['team']} (to {f['last_day']})" for f in behind)
        out.append(Finding(
            "watch", "drift",
            f"{upper_first(system_label(system))} records end days before the as-of date, though they usually "
            f"come every week, for team{'s' if len(behind) > 1 else ''} {teams}.",
            "The latest records may not have arrived: an extract that lags or comes in batches. Inputs over the "
            "last weeks read a fall that may not be real, and the lists say so. Ask the source when the rest "
            "will come."))
    for level in ("act", "watch"):
        moved = [f for f in drift["features"] if f["level"] == level]
        if not moved:
            continue
        listed = "; ".join(_moved(f) for f in moved[:5])
        more = f"; and {len(moved) - 5} more" if len(moved) > 5 else ""
        bound = m.psi_act if level == "act" else m.psi_watch
        gap_teams = sorted({t for f in moved for t in f.get("resumed_gap", [])})
        known = (f" Some moved only in team{'s' if len(gap_teams) > 1 else ''} {', '.join(gap_teams)}, whose feed "
                 "went quiet earlier in the year and has since resumed: a watch, not an act." if gap_teams else "")
        out.append(Finding(
            level, "drift",
            f"{len(moved)} model input{'s' if len(moved) > 1 else ''} shifted by a PSI of {bound} or more: "
            f"{listed}{more}.",
            "Inputs that move this much change who reaches the top of the lists. Check whether the change "
            "is real (people's needs) or in the data (recording, coding, late or missing extracts)." + known))
    return out


def _moved(f: dict) -> str:
    u = f.get("unit", "")
    return f"{f['description']} (PSI {psi_text(f['psi'])}: average {avg(f['ref_mean'], u)} → {avg(f['cur_mean'], u)})"


