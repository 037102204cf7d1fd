"""The synthetic world: a population whose need rises and falls, and the extracts five systems make of it.

Writes, under `out/`:
- `raw/` — source extracts as five systems would produce them (GP CSV, acute trust Parquet,
  community health CSV, social care Parquet, housing CSV), each with its own columns, codes and
  date formats, and with real defects at small stated rates (see `DEFECT_RATES`), plus lookups
  (LSOA → IMD decile, practice → team).
- `truth/` — what only the simulator knows, for grading models and never for features:
  `crises.parquet` (nhs_number, occurred_at, kind), `risk.parquet` (nhs_number, as_of,
  horizon_days, p_crisis), `need.parquet` (nhs_number, week_start, need, baseline, phase: see
  `wobble.synth.truth`), `persons.parquet` (hidden attributes), `manifest.json` (counts,
  defects injected, the world's calendar).

The hidden process, per person and week (w = 0 … weeks-1):

    need[w] = base + drift·w + Σ_type shock_type[w]

`base` comes from age, long-term conditions (LTCs), deprivation and strengths (support network,
engagement). Shocks (bereavement, carer breakdown, housing loss, a fall, a deteriorating condition)
arrive at person-specific rates; each adds magnitude·kernel(w − w0) where the kernel rises over a few
weeks and decays over months, so need climbs before any crisis. Contacts with each service arrive
at a rate exp(a + b·need + Σ g·shock); crises at a hazard exp(α + β·need). Frontline tags follow the
active shocks. Everything is drawn with numpy over (persons × weeks) arrays a chunk of people at a
time, never a Python loop per person or per week; each chunk has its own seed, so the world is the
same whatever the machine.

`p_crisis` in `risk.parquet` is the probability of at least one crisis in [as_of, as_of + 90 days)
given the person's hidden state at the as-of date: shocks already under way are carried forward,
shocks yet to come are integrated at their expected rate (exactly, through their moment generating
function), and death is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
from scipy.signal import lfilter

from wobble.core.vocab import CONCERN_TAGS, SERVICES, STRENGTH_TAGS, TAGS
from wobble.synth.truth import need_phases, usual_need

WORLD_START = date(2023, 11, 27)  # a Monday
WORLD_WEEKS = 156  # three years: the last week starts 2026-11-16, the extract date is 2026-11-23
PEOPLE_PER_TEAM = 5_000
PEOPLE_PER_PRACTICE = 2_500
PEOPLE_PER_LSOA = 1_500
CHUNK = 25_000  # people simulated at once; fixed so that output never depends on machine size
HORIZON_DAYS = 90

SHOCKS = ("bereavement", "carer_breakdown", "housing_loss", "fall", "deterioration")
# kernel time constants in weeks (rise, decay) and mean magnitude on the need scale
SHOCK_RISE = np.array([2.0, 4.0, 4.0, 1.0, 6.0])
SHOCK_DECAY = np.array([12.0, 16.0, 20.0, 8.0, 20.0])
SHOCK_MAGNITUDE = np.array([0.9, 1.0, 1.1, 1.3, 1.0])
MAGNITUDE_SHAPE = 4.0  # gamma shape: magnitudes vary but have a light tail

# ---------------------------------------------------------------------------------------------
# Services: log weekly rate = a + b·need + Σ g·shock + age terms.
# a was calibrated (scripts in tests/test_synth.py report the realised rates) so that the
# population's annual rates sit near England's.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    a: float
    b: float
    g: tuple[float, float, float, float, float]  # bereavement, carer, housing, fall, deterioration
    scheduled: bool  # can be missed (did not attend) or cancelled
    modes: tuple[float, float, float, float]  # face_to_face, phone, video, home_visit
    staff: str  # gp, acute, community, social, housing, mh or '' (none recorded)
    weekdays: int  # 5: office hours on weekdays; 7: any time


NON_CRISIS: dict[str, ServiceSpec] = {
    "gp_appointment": ServiceSpec(
        -1.48, 0.45, (0.4, 0.2, 0.2, 0.4, 0.5),
        True, (0.60, 0.33, 0.04, 0.03), "gp", 5),
    "outpatient_attendance": ServiceSpec(
        -3.02, 0.40, (0.0, 0.0, 0.0, 0.5, 0.6),
        True, (0.75, 0.20, 0.05, 0.0), "acute", 5),
    "nhs111_call": ServiceSpec(
        -4.48, 0.50, (0.3, 0.3, 0.2, 0.6, 0.4),
        False, (0.0, 1.0, 0.0, 0.0), "", 7),
    "community_nursing": ServiceSpec(
        -2.71, 0.90, (0.0, 0.3, 0.0, 0.9, 0.7),
        True, (0.10, 0.05, 0.0, 0.85), "community", 5),
    "social_care_contact": ServiceSpec(
        -3.46, 0.80, (0.3, 1.3, 0.4, 0.7, 0.3),
        True, (0.20, 0.50, 0.0, 0.30), "social", 5),
    "social_care_assessment": ServiceSpec(
        -5.85, 0.80, (0.2, 1.6, 0.3, 1.0, 0.4),
        True, (0.30, 0.10, 0.0, 0.60), "social", 5),
    "mental_health_contact": ServiceSpec(
        -4.27, 0.40, (1.0, 0.3, 0.6, 0.0, 0.2),
        True, (0.50, 0.35, 0.15, 0.0), "mh", 5),
    "housing_contact": ServiceSpec(
        -4.93, 0.30, (0.1, 0.1, 2.0, 0.0, 0.0),
        True, (0.30, 0.50, 0.0, 0.20), "housing", 5),
    "police_welfare_check": ServiceSpec(
        -6.77, 0.70, (0.4, 0.3, 0.7, 0.3, 0.2),
        False, (0.0, 0.0, 0.0, 1.0), "", 7),
    "pharmacy_contact": ServiceSpec(
        -1.08, 0.35, (0.0, 0.0, 0.0, 0.2, 0.4),
        False, (0.90, 0.10, 0.0, 0.0), "", 6),
    "voluntary_sector_contact": ServiceSpec(
        -4.63, 0.50, (0.6, 0.7, 0.4, 0.2, 0.0),
        False, (0.60, 0.40, 0.0, 0.0), "", 5),
}
NON_CRISIS_NAMES = tuple(NON_CRISIS)
# Most contacts a person can have with each service in a week: rates bend smoothly towards
# this ceiling, so nobody visits A&E daily for a year however high their need.
SERVICE_CAP = np.log(np.array([3.0, 2.0, 2.0, 7.0, 5.0, 1.0, 3.0, 2.0, 1.0, 3.0, 2.0]))
STAFF_KINDS = ("", "gp", "acute", "community", "social", "housing", "mh")

# Crises come as episodes. An acute episode is an ambulance call-out and/or an A&E attendance,
# sometimes followed by an emergency admission, on the same day; a mental-health crisis is its
# own kind. Log weekly hazard = alpha + beta·need + gamma·(bereavement + housing shock) + age terms.
CRISIS_KINDS = ("ae_attendance", "emergency_admission", "ambulance_callout", "mental_health_crisis")
HAZARDS = ("acute_episode", "mental_health_crisis")
HAZARD_ALPHA = np.array([-3.9, -6.9])
HAZARD_BETA = np.array([1.6, 0.8])
HAZARD_GAMMA = np.array([0.2, 0.9])
HAZARD_CAP = np.log(np.array([0.5, 0.3]))  # at most one episode every other week

DEATH_ALPHA = -14.34  # log weekly hazard = DEATH_ALPHA + 0.095·age + 0.35·need

# Frontline tags: concern tags follow active shocks; strengths follow strengths.
TAG_INDEX = {t: i for i, t in enumerate(TAGS)}
SHOCK_TAGS: dict[str, dict[str, float]] = {
    "bereavement": {"bereavement": 0.5, "low_mood": 0.3, "social_isolation": 0.1, "anxiety": 0.1},
    "carer_breakdown": {"carer_strain": 0.6, "self_neglect": 0.15, "anxiety": 0.1, "missed_medication": 0.15},
    "housing_loss": {"housing_insecurity": 0.5, "financial_hardship": 0.25, "food_insecurity": 0.1,
                     "anxiety": 0.1, "substance_use": 0.05},
    "fall": {"fall_or_near_fall": 0.7, "social_isolation": 0.1, "cognitive_decline": 0.1, "self_neglect": 0.1},
    "deterioration": {"missed_medication": 0.35, "cognitive_decline": 0.15, "self_neglect": 0.15,
                      "low_mood": 0.15, "disengagement": 0.2},
}
TAG_PER_SHOCK_WEEK = 0.22  # tags per week per unit of shock contribution
BACKGROUND_CONCERN = 0.0015  # tags per person-week regardless of need (noise)
NEED_CONCERN = 0.004  # extra tags per person-week per unit of need above 1
STRENGTH_RATE = 0.004  # strength tags per person-week, for people with that strength

# Which system and role records each tag (probabilities over TAG_SOURCES).
TAG_SOURCES = (
    ("gp", "gp"), ("gp", "practice_nurse"), ("gp", "link_worker"),
    ("community", "district_nurse"), ("community", "mental_health_practitioner"),
    ("social_care", "social_worker"), ("social_care", "care_coordinator"),
    ("housing", "housing_officer"),
)
_TAG_SOURCE_WEIGHTS: dict[str, tuple[float, ...]] = {
    # gp, pn, lw, dn, mhp, sw, cc, ho
    "housing": (0.05, 0.0, 0.1, 0.0, 0.0, 0.2, 0.05, 0.6),
    "social": (0.1, 0.0, 0.1, 0.1, 0.0, 0.5, 0.2, 0.0),
    "physical": (0.3, 0.2, 0.0, 0.4, 0.0, 0.1, 0.0, 0.0),
    "mood": (0.3, 0.0, 0.2, 0.0, 0.35, 0.1, 0.0, 0.05),
    "strength": (0.1, 0.05, 0.35, 0.15, 0.05, 0.2, 0.05, 0.05),
}
_TAG_KIND = {
    "carer_strain": "social", "social_isolation": "mood", "housing_insecurity": "housing",
    "financial_hardship": "housing", "low_mood": "mood", "anxiety": "mood",
    "self_neglect": "social", "fall_or_near_fall": "physical", "missed_medication": "physical",
    "cognitive_decline": "physical", "bereavement": "mood", "substance_use": "mood",
    "food_insecurity": "housing", "disengagement": "social", "support_network": "strength",
    "engaged_with_plan": "strength", "improving": "strength",
}


# ---------------------------------------------------------------------------------------------
# Simulation of one chunk of people over all weeks
# ---------------------------------------------------------------------------------------------


def _kernel_params() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per shock type: weekly decay factors (rise r, fall d) and the kernel's peak, for normalising."""
    r = np.exp(-1 / SHOCK_RISE)
    d = np.exp(-1 / SHOCK_DECAY)
    j = np.arange(0, 200)[:, None]
    peak = (d**j - r**j).max(axis=0)
    return r, d, peak


def kernel(shock: int, lags: np.ndarray) -> np.ndarray:
    """Contribution of a unit shock `lags` weeks after it began (0 at lag 0, peak 1)."""
    r, d, peak = _kernel_params()
    lags = np.asarray(lags)
    return np.where(lags >= 0, (d[shock] ** lags - r[shock] ** lags) / peak[shock], 0.0)


@dataclass
class World:
    lo: int
    hi: int
    contacts: dict[str, np.ndarray]
    tags: dict[str, np.ndarray]
    crises: dict[str, np.ndarray]
    risk: np.ndarray  # (people, as-of weeks) p_crisis, NaN where not alive or not arrived
    died_week: np.ndarray
    need: np.ndarray  # (people, weeks) hidden need
    baseline: np.ndarray  # (people, weeks) the person's usual need (wobble.synth.truth)
    phase: np.ndarray  # (people, weeks) index into truth.PHASES; -1 where not present


def softcap(eta, cap):
    """A smooth minimum of eta and cap: eta well below the cap, the cap well above it."""
    return cap - np.logaddexp(0, cap - eta)


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of an (events × k) weight matrix."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(weights.shape[0]) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1)


def simulate_chunk(
    rng: np.random.Generator, pop: dict[str, np.ndarray], lo: int, hi: int, start: date, weeks: int
) -> World:
    n = hi - lo
    sl = slice(lo, hi)
    age = pop["age"][sl].astype(np.float64)
    wk = np.arange(weeks)

    # Shocks: impulses at their start weeks, magnitudes gamma-distributed, filtered into
    # contributions that rise then decay (two first-order filters per type).
    r, d, peak = _kernel_params()
    shock_rate = pop["shock_rate"][sl]
    f32 = np.float32
    contrib = np.empty((len(SHOCKS), n, weeks), dtype=f32)
    # keep the filter states at every week for the oracle
    state_d = np.empty_like(contrib)
    state_r = np.empty_like(contrib)
    for t in range(len(SHOCKS)):
        starts = rng.random((n, weeks), dtype=f32) < shock_rate[:, t : t + 1]
        rows, cols = np.nonzero(starts)
        mag = rng.gamma(MAGNITUDE_SHAPE, SHOCK_MAGNITUDE[t] / MAGNITUDE_SHAPE, size=rows.size)
        impulse = np.zeros((n, weeks), dtype=f32)
        impulse[rows, cols] = mag * pop["resilience"][sl][rows]
        state_d[t] = lfilter(np.ones(1, f32), np.array([1.0, -d[t]], f32), impulse, axis=1)
        state_r[t] = lfilter(np.ones(1, f32), np.array([1.0, -r[t]], f32), impulse, axis=1)
        np.subtract(state_d[t], state_r[t], out=contrib[t])
        contrib[t] *= f32(1 / peak[t])
    need = contrib.sum(axis=0)
    need += (pop["base"][sl][:, None] + pop["drift"][sl][:, None] * wk[None, :]).astype(f32)

    alive = wk[None, :] >= pop["arrival"][sl][:, None]
    # Death: first week where cumulative hazard passes an exponential draw.
    death_h = np.exp(DEATH_ALPHA + 0.095 * age[:, None] + 0.35 * need) * alive
    cum = np.cumsum(death_h, axis=1)
    e = rng.exponential(size=n)
    dead = cum > e[:, None]
    died_week = np.where(dead.any(axis=1), dead.argmax(axis=1), -1)
    alive &= ~dead

    contacts = _draw_contacts(rng, pop, sl, need, contrib, alive, age)
    crises, _ = _draw_crises(rng, pop, sl, need, contrib, alive, age)
    tags = _draw_tags(rng, pop, sl, need, contrib, alive)
    risk = _oracle(pop, sl, need, contrib, state_d, state_r, alive, age, weeks)
    crisis_weeks = np.zeros((n, weeks), np.int32)
    np.add.at(crisis_weeks, (crises["person"] - lo, crises["week"]), 1)
    baseline = usual_need(need)
    phase = need_phases(need, baseline, crisis_weeks, float(pop["need_theta"]))
    phase[~alive] = -1
    return World(lo, hi, contacts, tags, crises, risk, died_week, need, baseline, phase)


def _age_terms_services(age: np.ndarray) -> np.ndarray:
    """Extra log-rate by age for each non-crisis service (services × people)."""
    child = (age < 5).astype(float)
    old = np.clip(age - 65, 0, None)
    working = ((age >= 18) & (age < 65)).astype(float)
    terms = {
        "gp_appointment": 0.6 * child,
        "outpatient_attendance": 0.01 * old,
        "nhs111_call": 0.8 * child,
        "community_nursing": 0.05 * old - 1.5 * (age < 50),
        "social_care_contact": 0.03 * old - 1.0 * (age < 18),
        "social_care_assessment": 0.03 * old - 1.0 * (age < 18),
        "mental_health_contact": 0.5 * working - 1.0 * (age < 12),
        "housing_contact": 0.3 * working - 2.0 * (age < 16),
        "police_welfare_check": -2.0 * (age < 16),
        "pharmacy_contact": 0.02 * old - 0.5 * (age < 18),
        "voluntary_sector_contact": 0.01 * old,
    }
    return np.stack([terms[s] for s in NON_CRISIS_NAMES])


def _draw_contacts(rng, pop, sl, need, contrib, alive, age) -> dict[str, np.ndarray]:
    n, weeks = need.shape
    age_terms = _age_terms_services(age)
    a = np.array([NON_CRISIS[s].a for s in NON_CRISIS_NAMES])
    b = np.array([NON_CRISIS[s].b for s in NON_CRISIS_NAMES])
    g = np.array([NON_CRISIS[s].g for s in NON_CRISIS_NAMES])  # services × shocks
    # Total rate per cell, then the service of each event in proportion to its rate.
    total = np.zeros((n, weeks), dtype=np.float32)
    for i in range(len(NON_CRISIS_NAMES)):
        eta = np.float32(b[i]) * need
        eta += (a[i] + age_terms[i])[:, None].astype(np.float32)
        for t in range(len(SHOCKS)):
            if g[i, t]:
                eta += np.float32(g[i, t]) * contrib[t]
        total += np.exp(softcap(eta, SERVICE_CAP[i]), out=eta)
    total *= alive
    count = rng.poisson(total)
    cell = np.repeat(np.arange(count.size), count.ravel())
    person, week = np.divmod(cell, weeks)
    ev_need = need[person, week]
    ev_contrib = contrib[:, person, week]  # shocks × events
    eta = (ev_need[:, None] * b[None, :].astype(np.float32) + age_terms.T[person].astype(np.float32)
           + ev_contrib.T @ g.T.astype(np.float32) + a[None, :].astype(np.float32))
    service_local = _categorical(rng, np.exp(softcap(eta, SERVICE_CAP[None, :].astype(np.float32)), out=eta))
    service = np.array([SERVICES.index(s) for s in NON_CRISIS_NAMES])[service_local]

    scheduled = np.array([NON_CRISIS[s].scheduled for s in NON_CRISIS_NAMES])[service_local]
    eng = pop["engagement"][sl][person]
    imd = pop["imd"][sl][person]
    # Missed appointments rise with need, disengagement, deprivation and housing trouble.
    p_dna = 1 / (1 + np.exp(-(-3.3 + 0.35 * np.clip(ev_need, -2, 4) + 3.0 * (0.67 - eng)
                              + 0.08 * (5.5 - imd) + 0.8 * ev_contrib[2] + 0.5 * ev_contrib[4])))
    u = rng.random(cell.size)
    status = np.where(scheduled & (u < p_dna), 1, np.where(scheduled & (u < p_dna + 0.04), 2, 0))

    modes = np.array([NON_CRISIS[s].modes for s in NON_CRISIS_NAMES])[service_local]
    mode = _categorical(rng, modes)
    staff = np.array([STAFF_KINDS.index(NON_CRISIS[s].staff) for s in NON_CRISIS_NAMES])[service_local]
    prof = _professionals(rng, pop, sl, person, staff)
    days = np.array([NON_CRISIS[s].weekdays for s in NON_CRISIS_NAMES])[service_local]
    day = (rng.random(cell.size) * days).astype(np.int64)
    minute = 8 * 60 + (rng.random(cell.size) * 10 * 12).astype(np.int64) * 5
    return {
        "person": person + sl.start, "week": week, "service": service, "status": status,
        "mode": mode, "prof": prof, "day": day, "minute": minute,
    }


def _professionals(rng, pop, sl, person, staff) -> np.ndarray:
    """Staff code per event (-1 where none is recorded); continuity follows the person's propensity."""
    p = person + sl.start
    cont = pop["continuity"][p]
    usual = rng.random(person.size) < cont
    team = pop["team"][p]
    practice = pop["practice"][p]
    out = np.full(person.size, -1, dtype=np.int64)
    pools = {  # (pool owner, usual index, pool size, code offset)
        "gp": (practice, pop["usual_gp"][p], 6, 1_000_000),
        "community": (team, pop["usual_nurse"][p], 10, 2_000_000),
        "social": (team, pop["usual_sw"][p], 6, 3_000_000),
        "housing": (team, pop["usual_ho"][p], 3, 4_000_000),
        "mh": (team, pop["usual_mh"][p], 5, 5_000_000),
    }
    for kind, (owner, usual_idx, size, offset) in pools.items():
        m = staff == STAFF_KINDS.index(kind)
        pick = np.where(usual[m], usual_idx[m], rng.integers(0, size, m.sum()))
        out[m] = offset + owner[m] * 100 + pick
    m = staff == STAFF_KINDS.index("acute")
    out[m] = 6_000_000 + rng.integers(0, 80, m.sum())
    return out


def _hazard_age_terms(age: np.ndarray) -> np.ndarray:
    """Extra log-hazard by age for each hazard (hazards × people × 1)."""
    young = (age < 5) * 1.2 + ((age >= 5) & (age < 15)) * 0.4 + ((age >= 15) & (age < 25)) * 0.4
    mh = np.where((age >= 16) & (age < 65), 0.0, -1.5)
    return np.stack([young, mh])[:, :, None]


def _hazard_eta(need, contrib, age):
    """Log weekly hazard of each kind of crisis episode (hazards × people × weeks)."""
    bh = contrib[0] + contrib[2]
    out = (HAZARD_ALPHA[:, None, None] + HAZARD_BETA[:, None, None] * need[None]
           + HAZARD_GAMMA[:, None, None] * bh[None])
    return out + _hazard_age_terms(age)


def _draw_crises(rng, pop, sl, need, contrib, alive, age):
    n, weeks = need.shape
    haz = np.exp(softcap(_hazard_eta(need, contrib, age), HAZARD_CAP[:, None, None])) * alive[None]
    count = rng.poisson(haz.sum(axis=0))
    cell = np.repeat(np.arange(count.size), count.ravel())
    person, week = np.divmod(cell, weeks)
    hazard = _categorical(rng, haz[:, person, week].T)
    e_need = np.clip(need[person, week], -3, 5)
    e_age = age[person]
    acute = hazard == 0
    # The older and the more in need arrive by ambulance and are admitted more often.
    p_amb = 1 / (1 + np.exp(-(-1.3 + 0.035 * (e_age - 50) + 0.3 * e_need)))
    p_adm = 1 / (1 + np.exp(-(-1.7 + 0.035 * (e_age - 50) + 0.4 * e_need)))
    amb = acute & (rng.random(cell.size) < p_amb)
    ae = acute & (~amb | (rng.random(cell.size) < 0.8))
    adm = acute & (rng.random(cell.size) < p_adm)
    mh = ~acute
    day = rng.integers(0, 7, cell.size)
    minute = rng.integers(0, 20 * 60, cell.size)
    p = person + sl.start
    parts = []
    for mask, service, offset, mode in (
        (amb, "ambulance_callout", 0, 3), (ae, "ae_attendance", 40, 0),
        (adm, "emergency_admission", 240, 0), (mh, "mental_health_crisis", 0, 0),
    ):
        k = int(mask.sum())
        if service in ("ae_attendance", "emergency_admission"):
            prof = 6_000_000 + rng.integers(0, 80, k)
        elif service == "mental_health_crisis":
            prof = 5_000_000 + pop["team"][p[mask]] * 100 + rng.integers(0, 5, k)
        else:
            prof = np.full(k, -1)
        parts.append({
            "person": p[mask], "week": week[mask], "service": np.full(k, SERVICES.index(service)),
            "status": np.zeros(k, np.int64), "mode": np.full(k, mode), "prof": prof,
            "day": day[mask], "minute": minute[mask] + offset,
        })
    return {key: np.concatenate([q[key] for q in parts]) for key in parts[0]}, haz


def _draw_tags(rng, pop, sl, need, contrib, alive) -> dict[str, np.ndarray]:
    n, weeks = need.shape
    # Weight of each concern tag per shock type, and a background over all concerns.
    shock_w = np.zeros((len(SHOCKS), len(TAGS)))
    for s, mix in SHOCK_TAGS.items():
        for t, w in mix.items():
            shock_w[SHOCKS.index(s), TAG_INDEX[t]] = w
    background = np.zeros(len(TAGS))
    background[: len(CONCERN_TAGS)] = 1 / len(CONCERN_TAGS)
    support = pop["support"][sl]
    engaged = pop["engagement"][sl] > 0.75
    # Improving: need fell over the last four weeks.
    falling = np.zeros_like(need)
    falling[:, 4:] = np.clip(need[:, :-4] - need[:, 4:] - 0.2, 0, None)

    rate_shock = TAG_PER_SHOCK_WEEK * np.clip(contrib, 0, None)  # shocks × n × weeks
    rate_bg = BACKGROUND_CONCERN + NEED_CONCERN * np.clip(need - 1, 0, None)
    rate_strength = STRENGTH_RATE * (support[:, None] + engaged[:, None]) + 0.05 * falling
    total = (rate_shock.sum(axis=0) + rate_bg + rate_strength) * alive
    count = rng.poisson(total)
    cell = np.repeat(np.arange(count.size), count.ravel())
    person, week = np.divmod(cell, weeks)
    # Choose the tag: components are the five shocks, background concern, and strengths.
    comp_w = np.concatenate(
        [rate_shock[:, person, week], rate_bg[person, week][None],
         rate_strength[person, week][None]]
    ).T
    comp = _categorical(rng, comp_w)
    strength_w = np.zeros((person.size, len(TAGS)))
    si = [TAG_INDEX[t] for t in STRENGTH_TAGS]
    strength_w[:, si[0]] = support[person] * STRENGTH_RATE
    strength_w[:, si[1]] = engaged[person] * STRENGTH_RATE
    strength_w[:, si[2]] = 0.05 * falling[person, week]
    tag_w = np.where(
        (comp < len(SHOCKS))[:, None], shock_w[np.minimum(comp, len(SHOCKS) - 1)],
        np.where((comp == len(SHOCKS))[:, None], background[None, :], strength_w),
    )
    tag = _categorical(rng, tag_w + 1e-12)
    src_table = np.array([_TAG_SOURCE_WEIGHTS[_TAG_KIND[t]] for t in TAGS])  # tags × sources
    src = _categorical(rng, src_table[tag])
    day = rng.integers(0, 5, cell.size)
    minute = 8 * 60 + rng.integers(0, 10 * 12, cell.size) * 5
    return {"person": person + sl.start, "week": week, "tag": tag, "src": src, "day": day,
            "minute": minute}


def _oracle(pop, sl, need, contrib, state_d, state_r, alive, age, weeks) -> np.ndarray:
    """p_crisis at each as-of week T (0 … weeks − 13) for each person; NaN if not present at T."""
    r, d, peak = _kernel_params()
    n = need.shape[0]
    n_asof = weeks - 12
    base = pop["base"][sl][:, None]
    drift = pop["drift"][sl][:, None]
    shock_rate = pop["shock_rate"][sl]
    res = pop["resilience"][sl]
    # States just before T (shocks that began at T-1 or earlier): column T-1; zero at T=0.
    zeros = np.zeros((len(SHOCKS), n, 1), dtype=np.float32)
    sd = np.concatenate([zeros, state_d[:, :, : n_asof - 1]], axis=2)
    sr = np.concatenate([zeros, state_r[:, :, : n_asof - 1]], axis=2)
    T = np.arange(n_asof)[None, :]
    age_terms = _hazard_age_terms(age)
    cum_h = np.zeros((n, n_asof), dtype=np.float32)
    kern_tab = np.stack([kernel(t, np.arange(13)) for t in range(len(SHOCKS))])  # shocks × 13
    # Shocks that start at T+j (j ≤ k) add X = m·kernel(k − j) at week T+k; with m ~ Gamma(shape,
    # scale), E[exp(s·X)] = (1 − s·scale·kernel)^−shape, and Poisson starts make the log of the
    # expectation a sum over j of rate·(MGF − 1). That depends on k but not on T.
    log_mgf = np.zeros((len(HAZARDS), 13, n))
    for h in range(len(HAZARDS)):
        for t in range(len(SHOCKS)):
            s = HAZARD_BETA[h] + (HAZARD_GAMMA[h] if t in (0, 2) else 0.0)
            scale = SHOCK_MAGNITUDE[t] / MAGNITUDE_SHAPE * res
            mgf = (1 - s * scale[:, None] * kern_tab[t][None, :]) ** (-MAGNITUDE_SHAPE)  # n × 13
            # sum over j = 0 … k of (mgf[k − j] − 1) = cumulative sum over lags
            log_mgf[h] += (shock_rate[:, t : t + 1] * np.cumsum(mgf - 1, axis=1)).T
    # Existing shocks carried forward: at week T+k the state is d^(k+1)·state_d(T−1), so
    # multiply the running states by d (and r) once per week ahead.
    f32 = np.float32
    run_d = [(sd[t] / peak[t]).astype(f32) for t in range(len(SHOCKS))]
    run_r = [(sr[t] / peak[t]).astype(f32) for t in range(len(SHOCKS))]
    base_T = (base + drift * T).astype(f32)
    for k in range(13):  # week T+k; the 13th week counts for 6 of its 7 days (90 days)
        nf = base_T + f32(k) * drift.astype(f32)
        bh = np.zeros_like(nf)
        for t in range(len(SHOCKS)):
            run_d[t] *= f32(d[t])
            run_r[t] *= f32(r[t])
            c = run_d[t] - run_r[t]
            nf += c
            if t in (0, 2):
                bh += c
        wt = 6 / 7 if k == 12 else 1.0
        for h in range(len(HAZARDS)):
            eta = f32(HAZARD_BETA[h]) * nf
            eta += f32(HAZARD_GAMMA[h]) * bh
            eta += (HAZARD_ALPHA[h] + age_terms[h]).astype(f32)
            # Near the cap, a new shock raises the hazard less: scale its log-MGF by the cap's
            # slope there (a first-order approximation; exact away from the cap).
            slope = 1 / (1 + np.exp(eta - f32(HAZARD_CAP[h])))
            eta = softcap(eta, f32(HAZARD_CAP[h])) + slope * log_mgf[h, k][:, None].astype(f32)
            cum_h += f32(wt) * np.exp(eta)
    p = 1 - np.exp(-cum_h)
    present = alive[:, :n_asof]
    return np.where(present, p, np.nan).astype(np.float32)


