"""The synthetic population: who lives in the world, before anything happens to them.

ONS mid-2022 England age structure, 2021 census ethnicity, deprivation that differs between teams,
practices and MDT teams; long-term conditions, strengths, registration and opt-outs.
"""

from __future__ import annotations

from datetime import date

import numpy as np

from wobble.ingest.identifiers import synthetic_nhs_numbers
from wobble.synth.truth import theta
from wobble.synth.world import PEOPLE_PER_LSOA, PEOPLE_PER_PRACTICE, PEOPLE_PER_TEAM

# ---------------------------------------------------------------------------------------------
# The population: ONS mid-2022 England age structure, 2021 census ethnicity
# ---------------------------------------------------------------------------------------------

# Five-year bands 0-4 … 85-89, 90+ (share of population, England mid-2022, ONS).
AGE_BAND_SHARES = np.array(
    [5.5, 6.0, 6.2, 5.8, 6.1, 6.6, 6.9, 6.7, 6.4, 6.1, 6.8, 6.7, 5.9, 5.0, 4.8, 3.9, 2.5, 1.5, 0.9]
)
# Share of each band that is female (rises in old age).
FEMALE_SHARE = np.array(
    [0.49, 0.49, 0.49, 0.49, 0.49, 0.50, 0.50, 0.50, 0.50, 0.51, 0.51, 0.51, 0.51, 0.52,
     0.53, 0.54, 0.57, 0.62, 0.70]
)
# 2021 census, England: White 81.0, Asian 9.6, Black 4.2, Mixed 3.0, Other 2.2.
ETHNICITY_SHARES = {"White": 81.0, "Asian": 9.6, "Black": 4.2, "Mixed": 3.0, "Other": 2.2}
# NHS ethnic category codes per ONS group, for the GP extract.
ETHNIC_CODES = {
    "White": ["A", "B", "C"],
    "Mixed": ["D", "E", "F", "G"],
    "Asian": ["H", "J", "K", "L", "R"],
    "Black": ["M", "N", "P"],
    "Other": ["S"],
}
NOT_STATED_SHARE = 0.04  # ethnicity not recorded in the GP record
OPT_OUT_SHARE = 0.054  # national data opt-out, England 2024
MOVER_IN_SHARE = 0.08  # people who register during the world's three years


# ---------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------


def draw_population(rng: np.random.Generator, n: int, start: date, weeks: int) -> dict[str, np.ndarray]:
    """Everyone in the world and their hidden attributes, as arrays over people (and a few over
    teams, LSOAs and practices); drawn from `rng` in a fixed order, so the same seed gives the same people."""
    pl_ = _places(rng, n)
    team, team_imd, imd, practice = pl_["team"], pl_["team_imd"], pl_["imd"], pl_["practice"]
    n_teams, n_practices = pl_["n_teams"], pl_["n_practices"]

    shares = AGE_BAND_SHARES / AGE_BAND_SHARES.sum()
    band = rng.choice(shares.size, size=n, p=shares)
    width = np.where(band == shares.size - 1, 11, 5)
    age = (band * 5 + (rng.random(n) * width).astype(int)).astype(np.int16)
    female = rng.random(n) < FEMALE_SHARE[band]

    # Ethnicity: more diverse teams are, on average, the more deprived ones.
    groups = list(ETHNICITY_SHARES)
    nonwhite = np.array([ETHNICITY_SHARES[g] for g in groups[1:]])
    white_share = np.clip(0.81 + 0.035 * (team_imd - 5.5) + rng.normal(0, 0.04, n_teams), 0.45, 0.97)
    u = rng.random(n)
    ws = white_share[team]
    cum_nonwhite = np.cumsum(nonwhite / nonwhite.sum())
    eth = np.where(u < ws, 0, 1 + np.searchsorted(cum_nonwhite, (u - ws) / (1 - ws)))
    eth = np.minimum(eth, len(groups) - 1).astype(np.int8)

    ltc = np.minimum(8, rng.poisson(np.exp(-2.5 + 0.045 * age) * (1 + 0.06 * (5.5 - imd)))).astype(np.int8)
    support = rng.random(n) < np.clip(0.78 - 0.18 * (age >= 75) - 0.02 * (5.5 - imd), 0.2, 0.95)
    engagement = rng.beta(4 + 0.2 * (imd - 5.5), 2)
    # Person-level propensity to see the same clinician (relational continuity).
    continuity = np.clip(pl_["practice_continuity"][practice] + rng.normal(0, 0.12, n), 0.05, 0.95)
    base = (
        -1.35 + 0.010 * (age - 40) + 0.20 * ltc + 0.07 * (5.5 - imd)
        - 0.30 * support - 0.60 * (engagement - 0.67) - 0.5 * (continuity - 0.55)
        + rng.normal(0, 0.6, n)
    )
    drift = np.where((ltc >= 2) & (age >= 60), 0.12, 0.0) / 52 + rng.normal(0, 0.04, n) / 52

    # Shock rates per week for each person (columns follow SHOCKS).
    sig = 1 / (1 + np.exp(-(age - 78) / 6))
    shock_rate = np.stack(
        [
            0.01 + 0.0006 * age,
            0.015 * np.where((ltc >= 2) & (age >= 70), 3.0, 1.0),
            0.02 * np.clip(1 + 0.25 * (5.5 - imd), 0.2, None)
            * np.where((age >= 18) & (age < 65), 1.5, np.where(age >= 75, 0.3, 0.6)),
            0.005 + 0.15 * sig,
            0.03 * ltc,
        ],
        axis=1,
    ) / 52
    resilience = 1 - 0.35 * support  # support network softens every shock

    arrival = np.where(rng.random(n) < MOVER_IN_SHARE, rng.integers(1, weeks, n), 0).astype(np.int32)
    # Registered with the practice: years before the world for most, on arrival for movers-in.
    reg_days_before = (rng.random(n) * 365 * np.minimum(age, 30) + 30).astype(int)
    start_ord = start.toordinal()
    registered = np.where(arrival > 0, start_ord + 7 * arrival + rng.integers(0, 7, n),
                          start_ord - reg_days_before)
    opted_out = rng.random(n) < OPT_OUT_SHARE
    nhs = synthetic_nhs_numbers(rng, n)
    # Usual clinicians: GP within practice, others within team.
    return {
        "n": np.array(n), "n_teams": np.array(n_teams), "n_practices": np.array(n_practices),
        "team": team, "team_imd": team_imd, "lsoa": pl_["lsoa"], "lsoa_imd": pl_["lsoa_imd"], "imd": imd,
        "practice": practice, "practice_team": pl_["practice_team"], "age": age, "female": female,
        "eth": eth, "ltc": ltc, "support": support, "engagement": engagement,
        "continuity": continuity, "base": base, "drift": drift, "shock_rate": shock_rate,
        "resilience": resilience, "arrival": arrival, "registered": registered,
        "opted_out": opted_out, "nhs": nhs,
        "need_theta": np.array(theta(base, age)),  # the phase rule's scale (wobble.synth.truth)
        "usual_gp": rng.integers(0, 6, n), "usual_nurse": rng.integers(0, 10, n),
        "usual_sw": rng.integers(0, 6, n), "usual_ho": rng.integers(0, 3, n),
        "usual_mh": rng.integers(0, 5, n),
    }


def _places(rng: np.random.Generator, n: int) -> dict:
    """Teams, their LSOAs (each with an IMD decile around the team's mean) and practices, and who
    lives where."""
    n_teams = max(1, round(n / PEOPLE_PER_TEAM))
    team = np.sort(rng.integers(0, n_teams, size=n))
    team_sizes = np.bincount(team, minlength=n_teams)
    # Teams differ in deprivation: mean deciles spread from 2 to 9.
    team_imd = rng.permutation(np.linspace(2.5, 8.5, n_teams)) if n_teams > 1 else np.array([5.5])

    # LSOAs within teams, each with its own IMD decile around the team's mean.
    lsoa_per_team = np.maximum(1, np.round(team_sizes / PEOPLE_PER_LSOA).astype(int))
    lsoa_team = np.repeat(np.arange(n_teams), lsoa_per_team)
    lsoa_imd = np.clip(np.round(team_imd[lsoa_team] + rng.normal(0, 1.6, lsoa_team.size)), 1, 10)
    lsoa_first = np.concatenate([[0], np.cumsum(lsoa_per_team)[:-1]])
    lsoa = lsoa_first[team] + (rng.random(n) * lsoa_per_team[team]).astype(int)
    imd = lsoa_imd[lsoa].astype(np.int8)

    # Practices within teams.
    prac_per_team = np.maximum(1, np.round(team_sizes / PEOPLE_PER_PRACTICE).astype(int))
    prac_first = np.concatenate([[0], np.cumsum(prac_per_team)[:-1]])
    practice = prac_first[team] + (rng.random(n) * prac_per_team[team]).astype(int)
    n_practices = int(prac_per_team.sum())
    practice_team = np.repeat(np.arange(n_teams), prac_per_team)
    practice_continuity = rng.uniform(0.35, 0.8, n_practices)

    return {"n_teams": n_teams, "team": team, "team_imd": team_imd, "lsoa": lsoa, "lsoa_imd": lsoa_imd, "imd": imd,
            "practice": practice, "n_practices": n_practices, "practice_team": practice_team,
            "practice_continuity": practice_continuity}
