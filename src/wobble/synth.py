"""The synthetic world: a population whose need rises and falls, and the extracts five systems make of it.

Writes, under `out/`:
- `raw/` — source extracts as five systems would produce them (GP CSV, acute trust Parquet,
  community health CSV, social care Parquet, housing CSV), each with its own columns, codes and
  date formats, and with real defects at small stated rates (see `DEFECT_RATES`), plus lookups
  (LSOA → IMD decile, practice → team).
- `truth/` — what only the simulator knows, for grading models and never for features:
  `crises.parquet` (nhs_number, occurred_at, kind), `risk.parquet` (nhs_number, as_of,
  horizon_days, p_crisis), `persons.parquet` (hidden attributes), `manifest.json` (counts,
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

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from scipy.signal import lfilter

from wobble.identifiers import STRANGER_PREFIX_FROM, check_digit, synthetic_nhs_numbers
from wobble.vocab import CONCERN_TAGS, SERVICES, STRENGTH_TAGS, TAGS

WORLD_START = date(2023, 11, 27)  # a Monday
WORLD_WEEKS = 156  # three years: the last week starts 2026-11-16, the extract date is 2026-11-23
PEOPLE_PER_TEAM = 5_000
PEOPLE_PER_PRACTICE = 2_500
PEOPLE_PER_LSOA = 1_500
CHUNK = 25_000  # people simulated at once; fixed so that output never depends on machine size
HORIZON_DAYS = 90

# Rates at which defects are injected into the extracts (per row written).
DEFECT_RATES: dict[str, float] = {
    "invalid_nhs_number": 0.0005,
    "impossible_date": 0.0002,
    "unknown_code": 0.0005,
    "missing_field": 0.0002,
    "person_not_found": 0.0002,
}
FEED_GAP_MONTHS = ((2026, 8), (2026, 9))  # one team's social care feed is missing for these

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

# Record lag (recorded_at − occurred_at), mean hours, by service.
LAG_HOURS = {
    "gp_appointment": 1.0, "nhs111_call": 20.0, "pharmacy_contact": 30.0,
    "ae_attendance": 4.0, "emergency_admission": 72.0, "outpatient_attendance": 24.0,
    "ambulance_callout": 6.0, "community_nursing": 36.0, "mental_health_contact": 48.0,
    "mental_health_crisis": 12.0, "social_care_contact": 144.0, "social_care_assessment": 240.0,
    "police_welfare_check": 200.0, "voluntary_sector_contact": 160.0, "housing_contact": 96.0,
}
TAG_LAG_HOURS = {"gp": 2.0, "community": 36.0, "social_care": 144.0, "housing": 96.0}


# ---------------------------------------------------------------------------------------------
# The five source systems: which services each records, its codes and formats.
# ---------------------------------------------------------------------------------------------

SERVICE_SYSTEM = {
    "gp_appointment": "gp", "nhs111_call": "gp", "pharmacy_contact": "gp",
    "ae_attendance": "acute", "emergency_admission": "acute", "outpatient_attendance": "acute",
    "ambulance_callout": "acute",
    "community_nursing": "community", "mental_health_contact": "community",
    "mental_health_crisis": "community",
    "social_care_contact": "social_care", "social_care_assessment": "social_care",
    "police_welfare_check": "social_care", "voluntary_sector_contact": "social_care",
    "housing_contact": "housing",
}

# Local codes each system uses for services, statuses, modes and tags (source value → contract).
CODES: dict[str, dict[str, dict[str, str]]] = {
    "gp": {
        "service": {"APPT": "gp_appointment", "111PEM": "nhs111_call", "CPCS": "pharmacy_contact"},
        "status": {"Finished": "attended", "DNA": "did_not_attend", "Cancelled by Patient": "cancelled"},
        "mode": {"Face to face": "face_to_face", "Telephone": "phone", "Video": "video",
                 "Home visit": "home_visit"},
        "tag": {"CARER-STRAIN": "carer_strain", "SOC-ISOL": "social_isolation",
                "HOUSING-RISK": "housing_insecurity", "FIN-HARDSHIP": "financial_hardship",
                "LOW-MOOD": "low_mood", "ANXIETY": "anxiety", "SELF-NEGLECT": "self_neglect",
                "FALL": "fall_or_near_fall", "MEDS-MISSED": "missed_medication",
                "COG-DECLINE": "cognitive_decline", "BEREAVED": "bereavement",
                "SUBSTANCE": "substance_use", "FOOD-INSEC": "food_insecurity",
                "DISENGAGED": "disengagement", "SUPPORT-NETWORK": "support_network",
                "ENGAGED": "engaged_with_plan", "IMPROVING": "improving"},
        "author_role": {"GP": "gp", "Practice Nurse": "practice_nurse",
                        "Social Prescribing Link Worker": "link_worker"},
    },
    "acute": {
        "service": {"AE": "ae_attendance", "NEL": "emergency_admission", "OP": "outpatient_attendance",
                    "AMB": "ambulance_callout"},
        "status": {"5": "attended", "6": "attended", "3": "did_not_attend", "7": "did_not_attend",
                   "2": "cancelled", "4": "cancelled"},
        "mode": {"1": "face_to_face", "2": "phone", "3": "video", "4": "home_visit"},
    },
    "community": {
        "service": {"DN": "community_nursing", "CMHT": "mental_health_contact",
                    "CRHT": "mental_health_crisis"},
        "status": {"Attended": "attended", "DNA": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"F2F": "face_to_face", "Tel": "phone", "Video": "video", "Home": "home_visit"},
        "tag": {"CS": "carer_strain", "SI": "social_isolation", "HI": "housing_insecurity",
                "FH": "financial_hardship", "LM": "low_mood", "AX": "anxiety", "SN": "self_neglect",
                "FA": "fall_or_near_fall", "MM": "missed_medication", "CD": "cognitive_decline",
                "BE": "bereavement", "SU": "substance_use", "FI": "food_insecurity",
                "DE": "disengagement", "SP": "support_network", "EP": "engaged_with_plan",
                "IM": "improving"},
        "author_role": {"District Nurse": "district_nurse",
                        "MH Practitioner": "mental_health_practitioner"},
    },
    "social_care": {
        "service": {"Contact": "social_care_contact", "Assessment": "social_care_assessment",
                    "Police Concern": "police_welfare_check", "VCS Referral": "voluntary_sector_contact"},
        "status": {"Completed": "attended", "No Access": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"In person": "face_to_face", "Phone": "phone", "Video": "video",
                 "Home visit": "home_visit"},
        "tag": {t.replace("_", " "): t for t in TAGS},
        "author_role": {"Social Worker": "social_worker", "Care Coordinator": "care_coordinator"},
    },
    "housing": {
        "service": {"Tenancy support": "housing_contact"},
        "status": {"Seen": "attended", "No answer": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"Office": "face_to_face", "Phone": "phone", "Video": "video", "Home": "home_visit"},
        "tag": {"Insecure tenancy": "housing_insecurity", "Rent arrears": "financial_hardship",
                "Food bank referral": "food_insecurity", "Carer under strain": "carer_strain",
                "Isolated": "social_isolation", "Low mood": "low_mood", "Anxious": "anxiety",
                "Self neglect": "self_neglect", "Fall": "fall_or_near_fall",
                "Missing medication": "missed_medication", "Memory concerns": "cognitive_decline",
                "Bereaved": "bereavement", "Substance misuse": "substance_use",
                "Not engaging": "disengagement", "Family support": "support_network",
                "Engaged with plan": "engaged_with_plan", "Improving": "improving"},
        "author_role": {"Housing Officer": "housing_officer"},
    },
}


def _reverse(system: str, kind: str) -> dict[str, str]:
    """Contract value → the first local code for it (what the synthetic system writes)."""
    out: dict[str, str] = {}
    for local, contract in CODES[system][kind].items():
        out.setdefault(contract, local)
    return out


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


@dataclass
class SynthResult:
    """What `synth` wrote: paths and headline counts, and the world's own calibration."""

    out: Path
    persons: int
    contacts: int
    tags: int
    crises: int
    files: dict[str, list[str]]
    seconds: float
    defects: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "persons": self.persons, "contacts": self.contacts,
            "tags": self.tags, "crises": self.crises, "files": self.files,
            "seconds": round(self.seconds, 2), "defects": self.defects,
        }


def synth(
    *,
    persons: int,
    seed: int,
    out: Path,
    start: date = WORLD_START,
    weeks: int = WORLD_WEEKS,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> SynthResult:
    """Simulate `persons` people for `weeks` weeks from `start` and write extracts and truth to `out`.

    Deterministic by `seed`: the same arguments write byte-identical files, whatever `workers`
    (processes simulating chunks while this one writes; default: one per core, at most 2).
    """
    if persons < 10:
        raise ValueError("persons must be at least 10")
    if start.weekday() != 0:
        raise ValueError("start must be a Monday")
    if weeks < 30:
        raise ValueError("weeks must be at least 30")
    t0 = time.perf_counter()
    out = Path(out)
    raw, truth = out / "raw", out / "truth"
    for d in (raw / "gp", raw / "acute", raw / "community", raw / "social_care", raw / "housing",
              raw / "lookups", truth):
        d.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    pop_seq, *chunk_seqs = root.spawn(1 + (persons + CHUNK - 1) // CHUNK)
    pop = _population(np.random.default_rng(pop_seq), persons, start, weeks)
    writers = _Writers(raw, truth, start, weeks, pop)
    defects: dict[str, int] = {}
    totals = {"contacts": 0, "tags": 0, "crises": 0}
    n_chunks = len(chunk_seqs)
    tasks = [(seq, c * CHUNK, min(persons, (c + 1) * CHUNK), start, weeks) for c, seq in enumerate(chunk_seqs)]
    for c, (world, rng_state) in enumerate(_simulated(pop, tasks, workers)):
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state  # carry on the chunk's own stream where it stopped
        counts = writers.write_chunk(rng, world, defects)
        for k, v in counts.items():
            totals[k] += v
        if progress:
            progress(c + 1, n_chunks)
    writers.finish(np.random.default_rng(root.spawn(1)[0]), defects)
    manifest = {
        "seed": seed, "persons": persons, "start": start.isoformat(), "weeks": weeks,
        "extract_date": (start + timedelta(weeks=weeks)).isoformat(),
        "horizon_days": HORIZON_DAYS, "contacts": totals["contacts"], "tags": totals["tags"],
        "crises": totals["crises"], "defect_rates": DEFECT_RATES, "defects": defects,
        "feed_gap": writers.feed_gap, "files": writers.files,
    }
    (truth / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return SynthResult(
        out=out, persons=persons, contacts=totals["contacts"], tags=totals["tags"],
        crises=totals["crises"], files=writers.files, seconds=time.perf_counter() - t0,
        defects=defects,
    )


# The population, held by each worker process once (set by the pool's initializer).
_SHARED: dict[str, dict[str, np.ndarray]] = {}


def _init_worker(pop: dict[str, np.ndarray]) -> None:
    _SHARED["pop"] = pop


def _simulate_task(task):
    seq, lo, hi, start, weeks = task
    rng = np.random.default_rng(seq)
    world = _simulate_chunk(rng, _SHARED["pop"], lo, hi, start, weeks)
    return world, rng.bit_generator.state


def _simulated(pop: dict[str, np.ndarray], tasks: list, workers: int | None):
    """Each chunk's world and its generator's state, in chunk order.

    With workers, chunks are simulated in forked processes, at most workers + 1 ahead of the
    writer so memory stays bounded.
    """
    import multiprocessing
    import os

    _SHARED["pop"] = pop
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(tasks) == 1:
        for task in tasks:
            yield _simulate_task(task)
        return
    # forkserver, not fork: this process may already run polars' threads, and forking a
    # threaded process can deadlock the child
    ctx = multiprocessing.get_context("forkserver")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(pop,)) as pool:
        pending = [pool.apply_async(_simulate_task, (t,)) for t in tasks[: workers + 1]]
        for i in range(len(tasks)):
            result = pending[i].get()
            pending[i] = None
            if i + workers + 1 < len(tasks):
                pending.append(pool.apply_async(_simulate_task, (tasks[i + workers + 1],)))
            yield result


# ---------------------------------------------------------------------------------------------
# Population
# ---------------------------------------------------------------------------------------------


def _population(rng: np.random.Generator, n: int, start: date, weeks: int) -> dict[str, np.ndarray]:
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
    continuity = np.clip(practice_continuity[practice] + rng.normal(0, 0.12, n), 0.05, 0.95)
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
        "team": team, "team_imd": team_imd, "lsoa": lsoa, "lsoa_imd": lsoa_imd, "imd": imd,
        "practice": practice, "practice_team": practice_team, "age": age, "female": female,
        "eth": eth, "ltc": ltc, "support": support, "engagement": engagement,
        "continuity": continuity, "base": base, "drift": drift, "shock_rate": shock_rate,
        "resilience": resilience, "arrival": arrival, "registered": registered,
        "opted_out": opted_out, "nhs": nhs,
        "usual_gp": rng.integers(0, 6, n), "usual_nurse": rng.integers(0, 10, n),
        "usual_sw": rng.integers(0, 6, n), "usual_ho": rng.integers(0, 3, n),
        "usual_mh": rng.integers(0, 5, n),
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
class _World:
    lo: int
    hi: int
    contacts: dict[str, np.ndarray]
    tags: dict[str, np.ndarray]
    crises: dict[str, np.ndarray]
    risk: np.ndarray  # (people, as-of weeks) p_crisis, NaN where not alive or not arrived
    died_week: np.ndarray


def softcap(eta, cap):
    """A smooth minimum of eta and cap: eta well below the cap, the cap well above it."""
    return cap - np.logaddexp(0, cap - eta)


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One draw per row of an (events × k) weight matrix."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(weights.shape[0]) * cum[:, -1]
    return (cum < u[:, None]).sum(axis=1)


def _simulate_chunk(
    rng: np.random.Generator, pop: dict[str, np.ndarray], lo: int, hi: int, start: date, weeks: int
) -> _World:
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
    return _World(lo, hi, contacts, tags, crises, risk, died_week)


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


# ---------------------------------------------------------------------------------------------
# Writing the extracts
# ---------------------------------------------------------------------------------------------


def _fmt_nhs(nhs: pl.Expr, system: str) -> pl.Expr:
    s = nhs.cast(pl.String)
    if system == "gp":  # "943 476 5919"
        return pl.concat_str([s.str.slice(0, 3), s.str.slice(3, 3), s.str.slice(6, 4)], separator=" ")
    return s


class _Writers:
    """Appends each chunk's rows to the source files; CSV by appending, Parquet by row groups."""

    def __init__(self, raw: Path, truth: Path, start: date, weeks: int, pop: dict[str, np.ndarray]):
        self.raw, self.truth, self.start, self.weeks, self.pop = raw, truth, start, weeks, pop
        self.files: dict[str, list[str]] = {}
        self._next_id = 1
        self._csv: dict[str, object] = {}
        self._pq: dict[str, pq.ParquetWriter] = {}
        self.start_us = int(datetime(start.year, start.month, start.day).timestamp() * 1e6) - int(
            datetime(1970, 1, 1).timestamp() * 1e6
        )
        self.extract_us = self.start_us + weeks * 7 * 86_400_000_000
        # The team whose social care feed goes missing: the second team if there is one.
        n_teams = int(pop["n_teams"])
        gap_team = 1 if n_teams > 1 else 0
        gap_from = datetime(FEED_GAP_MONTHS[0][0], FEED_GAP_MONTHS[0][1], 1)
        y, m = FEED_GAP_MONTHS[-1]
        gap_to = datetime(y + (m == 12), m % 12 + 1, 1)
        self.gap = (gap_team, self._us(gap_from), self._us(gap_to))
        self.feed_gap = {
            "team_id": _team_code(gap_team), "system": "social_care",
            "from": gap_from.date().isoformat(), "to_exclusive": gap_to.date().isoformat(),
        }
        # GP appointments come in two overlapping extracts; the overlap is four weeks.
        self.gp_split_us = self.start_us + (weeks // 2) * 7 * 86_400_000_000
        self.gp_overlap_us = 4 * 7 * 86_400_000_000

    @staticmethod
    def _us(dt: datetime) -> int:
        return int((dt - datetime(1970, 1, 1)).total_seconds() * 1e6)

    def _register(self, source: str, path: Path) -> None:
        rel = str(path.relative_to(self.raw.parent))
        self.files.setdefault(source, [])
        if rel not in self.files[source]:
            self.files[source].append(rel)

    def _write_csv(self, source: str, path: Path, df: pl.DataFrame, sep: str = ",") -> None:
        key = str(path)
        if key not in self._csv:
            self._csv[key] = open(path, "wb")  # noqa: SIM115 - closed in finish()
            df.write_csv(self._csv[key], separator=sep, include_header=True)
        else:
            df.write_csv(self._csv[key], separator=sep, include_header=False)
        self._register(source, path)

    def _write_parquet(self, source: str, path: Path, df: pl.DataFrame) -> None:
        table = df.to_arrow()
        key = str(path)
        if key not in self._pq:
            self._pq[key] = pq.ParquetWriter(path, table.schema, compression="zstd")
        self._pq[key].write_table(table.cast(self._pq[key].schema))
        self._register(source, path)

    # -- one chunk -----------------------------------------------------------------------------

    def write_chunk(self, rng: np.random.Generator, w: _World, defects: dict[str, int]) -> dict[str, int]:
        ev = {k: np.concatenate([w.contacts[k], w.crises[k]]) for k in w.contacts}
        contacts = self._contact_frame(rng, ev)
        tags = self._tag_frame(rng, w.tags)
        crises = contacts.filter(pl.col("service").is_in(list(CRISIS_KINDS)))
        # The extract was taken on the extract date: records not yet keyed are not in it.
        contacts = contacts.filter(pl.col("rec_us") < self.extract_us)
        tags = tags.filter(pl.col("rec_us") < self.extract_us)
        # Truth first: the simulator knows about every crisis, whatever the extracts say.
        self._write_parquet("truth", self.truth / "crises.parquet", crises.select(
            pl.col("nhs").cast(pl.String).alias("nhs_number"), "occurred_at",
            pl.col("service").alias("kind")).sort("nhs_number", "occurred_at"))
        self._write_risk(w)
        self._write_truth_persons(w)
        # Records from the team with a feed gap never reach the social care extract.
        gap_team, gap_from, gap_to = self.gap
        in_gap = (
            (pl.col("system") == "social_care") & (pl.col("team") == gap_team)
            & (pl.col("occ_us") >= gap_from) & (pl.col("occ_us") < gap_to)
        )
        contacts = contacts.filter(~in_gap)
        tags = tags.filter(~in_gap)
        for system in ("gp", "acute", "community", "social_care", "housing"):
            part = contacts.filter(pl.col("system") == system)
            tpart = tags.filter(pl.col("system") == system)
            part = _inject_defects(rng, part, system, defects, self.pop, kind="contacts")
            tpart = _inject_defects(rng, tpart, system, defects, self.pop, kind="tags")
            getattr(self, f"_contacts_{system}")(part)
            if system != "acute":
                getattr(self, f"_tags_{system}")(tpart)
        return {"contacts": contacts.height, "tags": tags.height, "crises": crises.height}

    def _contact_frame(self, rng, ev) -> pl.DataFrame:
        day_us = 86_400_000_000
        occ = self.start_us + ev["week"] * 7 * day_us + ev["day"] * day_us + ev["minute"] * 60_000_000
        lag_mean = np.array([LAG_HOURS[s] for s in SERVICES])[ev["service"]]
        lag = rng.exponential(lag_mean) * 3_600_000_000
        # a few records are keyed in weeks late, whatever the system
        late = rng.random(lag.size) < 0.01
        lag = np.where(late, lag + rng.exponential(21 * day_us, lag.size), lag)
        rec = occ + lag.astype(np.int64) + 60_000_000
        person = ev["person"]
        df = pl.DataFrame({
            "nhs": self.pop["nhs"][person],
            "team": self.pop["team"][person],
            "service": _labels(ev["service"], SERVICES),
            "system": _labels(ev["service"], [SERVICE_SYSTEM[s] for s in SERVICES]),
            "status": ev["status"],
            "mode": ev["mode"],
            "prof": ev["prof"],
            "occ_us": occ,
            "rec_us": rec,
        })
        # Record ids: unique across the whole extract, in no particular order within a chunk.
        rid = rng.permutation(df.height) + self._next_id
        self._next_id += df.height
        return df.with_columns(
            pl.from_epoch("occ_us", time_unit="us").alias("occurred_at"),
            pl.from_epoch("rec_us", time_unit="us").alias("recorded_at"),
            pl.Series("rid", rid).cast(pl.Int64),
        )

    def _tag_frame(self, rng, tg) -> pl.DataFrame:
        day_us = 86_400_000_000
        occ = (self.start_us + tg["week"] * 7 * day_us + tg["day"] * day_us
               + tg["minute"] * 60_000_000)
        lag = rng.exponential(np.array([TAG_LAG_HOURS[s] for s, _ in TAG_SOURCES])[tg["src"]])
        rec = occ + (lag * 3_600_000_000).astype(np.int64)
        person = tg["person"]
        df = pl.DataFrame({
            "nhs": self.pop["nhs"][person], "team": self.pop["team"][person],
            "tag": _labels(tg["tag"], TAGS),
            "system": _labels(tg["src"], [s for s, _ in TAG_SOURCES]),
            "role": _labels(tg["src"], [r for _, r in TAG_SOURCES]),
            "occ_us": occ, "rec_us": rec,
        })
        rid = rng.permutation(df.height) + self._next_id
        self._next_id += df.height
        return df.with_columns(
            pl.from_epoch("rec_us", time_unit="us").alias("recorded_at"),
            pl.Series("rid", rid).cast(pl.Int64),
        )

    # -- per-system formats ----------------------------------------------------------------------

    def _contacts_gp(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("GP{}", pl.col("rid")).alias("AppointmentID"),
            _fmt_nhs(pl.col("nhs"), "gp").alias("NHSNumber"),
            _to_local("service", "gp", "service").alias("SlotType"),
            pl.col("occurred_at").dt.strftime("%d/%m/%Y %H:%M").alias("AppointmentDate"),
            pl.col("recorded_at").dt.strftime("%d/%m/%Y %H:%M").alias("EnteredDate"),
            _status("gp").alias("Status"),
            _mode("gp").alias("ConsultationMode"),
            pl.when(pl.col("prof") >= 0).then(pl.format("C{}", pl.col("prof"))).alias("ClinicianCode"),
            pl.col("occ_us"), pl.col("_override_date"),
        ).with_columns(_date_override("AppointmentDate"))
        # Two extracts that overlap by four weeks: rows in the overlap appear in both.
        first = out.filter(pl.col("occ_us") < self.gp_split_us + self.gp_overlap_us)
        second = out.filter(pl.col("occ_us") >= self.gp_split_us)
        cols = [c for c in out.columns if c not in ("occ_us", "_override_date")]
        self._write_csv("gp_appointments", self.raw / "gp" / "appointments_part1.csv", first.select(cols))
        self._write_csv("gp_appointments", self.raw / "gp" / "appointments_part2.csv", second.select(cols))

    def _contacts_acute(self, df: pl.DataFrame) -> None:
        status_code = pl.col("status").replace_strict({0: "5", 1: "3", 2: "2"}, return_dtype=pl.String)
        out = df.select(
            pl.format("EP{}", pl.col("rid")).alias("episode_id"),
            pl.col("nhs").alias("nhs_no"),
            _to_local("service", "acute", "service").alias("pod"),
            pl.col("occurred_at").alias("start_ts"),
            pl.col("recorded_at").alias("created_ts"),
            pl.when(pl.col("service") == "outpatient_attendance").then(status_code).alias("attend_status"),
            pl.col("mode").replace_strict({0: "1", 1: "2", 2: "3", 3: "4"}, return_dtype=pl.String)
            .alias("contact_mode"),
            pl.when(pl.col("prof") >= 0).then(pl.format("CONS{}", pl.col("prof") - 6_000_000)).alias("consultant"),
            pl.col("_override_date"),
        )
        # Impossible dates in a typed column: a start before 1900 or after the extract.
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(2099, 1, 1))).otherwise(pl.col("start_ts")).alias("start_ts")
        ).drop("_override_date")
        self._write_parquet("acute_activity", self.raw / "acute" / "activity.parquet", out)

    def _contacts_community(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("CH{}", pl.col("rid")).alias("ContactRef"),
            pl.col("nhs").cast(pl.String).alias("PatientNHS"),
            _to_local("service", "community", "service").alias("ServiceLine"),
            pl.col("occurred_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("ContactDateTime"),
            pl.col("recorded_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("EnteredDateTime"),
            _status("community").alias("Outcome"),
            _mode("community").alias("ContactType"),
            pl.when(pl.col("prof") >= 0).then(pl.format("S{}", pl.col("prof"))).alias("StaffID"),
            pl.col("_override_date"),
        ).with_columns(_date_override("ContactDateTime", iso=True)).drop("_override_date")
        self._write_csv("community_contacts", self.raw / "community" / "contacts.csv", out, sep=";")

    def _contacts_social_care(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("SC{}", pl.col("rid")).alias("event_id"),
            pl.col("nhs").cast(pl.String).alias("person_nhs"),
            _to_local("service", "social_care", "service").alias("event_type"),
            pl.col("occurred_at").alias("event_date"),
            pl.col("recorded_at").alias("input_date"),
            _status("social_care").alias("outcome"),
            _mode("social_care").alias("method"),
            pl.when(pl.col("prof") >= 0).then(pl.format("W{}", pl.col("prof"))).alias("worker_id"),
            pl.col("_override_date"),
        )
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(1850, 1, 1))).otherwise(pl.col("event_date")).alias("event_date")
        ).drop("_override_date")
        self._write_parquet("social_care_events", self.raw / "social_care" / "events.parquet", out)

    def _contacts_housing(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("H{}", pl.col("rid")).alias("ref"),
            pl.col("nhs").cast(pl.String).alias("nhs_number"),
            _to_local("service", "housing", "service").alias("contact_type"),
            pl.col("occurred_at").dt.strftime("%d-%b-%Y").alias("visit_date"),
            pl.col("recorded_at").dt.strftime("%d-%b-%Y").alias("logged"),
            _status("housing").alias("outcome"),
            _mode("housing").alias("channel"),
            pl.when(pl.col("prof") >= 0).then(pl.format("HO{}", pl.col("prof"))).alias("officer"),
            pl.col("_override_date"),
        ).with_columns(
            pl.when(pl.col("_override_date").is_not_null()).then(pl.lit("31-Feb-2026"))
            .otherwise(pl.col("visit_date")).alias("visit_date")
        ).drop("_override_date")
        self._write_csv("housing_contacts", self.raw / "housing" / "contacts.csv", out)

    def _tags_gp(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("GT{}", pl.col("rid")).alias("ConcernID"),
            _fmt_nhs(pl.col("nhs"), "gp").alias("NHSNumber"),
            _to_local("tag", "gp", "tag").alias("Code"),
            pl.col("recorded_at").dt.strftime("%d/%m/%Y %H:%M").alias("EnteredDate"),
            _to_local("role", "gp", "author_role").alias("AuthorRole"),
            pl.col("_override_date"),
        ).with_columns(_date_override("EnteredDate")).drop("_override_date")
        self._write_csv("gp_concerns", self.raw / "gp" / "concerns.csv", out)

    def _tags_community(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("CF{}", pl.col("rid")).alias("FlagRef"),
            pl.col("nhs").cast(pl.String).alias("PatientNHS"),
            _to_local("tag", "community", "tag").alias("FlagCode"),
            pl.col("recorded_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("RaisedOn"),
            _to_local("role", "community", "author_role").alias("RaisedBy"),
            pl.col("_override_date"),
        ).with_columns(_date_override("RaisedOn", iso=True)).drop("_override_date")
        self._write_csv("community_flags", self.raw / "community" / "flags.csv", out, sep=";")

    def _tags_social_care(self, df: pl.DataFrame) -> None:
        # Free text sits beside the coded category, as in real case notes; ingest never reads it.
        out = df.select(
            pl.format("OB{}", pl.col("rid")).alias("obs_id"),
            pl.col("nhs").cast(pl.String).alias("person_nhs"),
            _to_local("tag", "social_care", "tag").alias("category"),
            pl.format("Visited; noted {} (NHS {}).", pl.col("tag"), pl.col("nhs")).alias("note"),
            pl.col("recorded_at").alias("created"),
            _to_local("role", "social_care", "author_role").alias("worker_role"),
            pl.col("_override_date"),
        )
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(2099, 1, 1))).otherwise(pl.col("created")).alias("created")
        ).drop("_override_date")
        self._write_parquet("social_care_observations", self.raw / "social_care" / "observations.parquet", out)

    def _tags_housing(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("HF{}", pl.col("rid")).alias("ref"),
            pl.col("nhs").cast(pl.String).alias("nhs_number"),
            _to_local("tag", "housing", "tag").alias("risk_flag"),
            pl.col("recorded_at").dt.strftime("%d-%b-%Y").alias("logged"),
            _to_local("role", "housing", "author_role").alias("officer_role"),
            pl.col("_override_date"),
        ).with_columns(
            pl.when(pl.col("_override_date").is_not_null()).then(pl.lit("30-Feb-2026"))
            .otherwise(pl.col("logged")).alias("logged")
        ).drop("_override_date")
        self._write_csv("housing_flags", self.raw / "housing" / "flags.csv", out)

    # -- truth ---------------------------------------------------------------------------------

    def _write_risk(self, w: _World) -> None:
        n_asof = w.risk.shape[1]
        nhs = self.pop["nhs"][w.lo : w.hi]
        asof = np.array([self.start + timedelta(weeks=int(k)) for k in range(n_asof)], dtype="datetime64[D]")
        p = w.risk.ravel()
        keep = ~np.isnan(p)
        df = pl.DataFrame({
            "nhs_number": pl.Series(np.repeat(nhs, n_asof)[keep]).cast(pl.String),
            "as_of": np.tile(asof, nhs.size)[keep],
            "horizon_days": np.full(keep.sum(), HORIZON_DAYS, dtype=np.int16),
            "p_crisis": p[keep],
        })
        self._write_parquet("truth", self.truth / "risk.parquet", df)

    def _write_truth_persons(self, w: _World) -> None:
        s = slice(w.lo, w.hi)
        pop = self.pop
        died = np.where(w.died_week >= 0,
                        np.datetime64(self.start) + (w.died_week * 7).astype("timedelta64[D]"),
                        np.datetime64("NaT"))
        df = pl.DataFrame({
            "nhs_number": pl.Series(pop["nhs"][s]).cast(pl.String),
            "age": pop["age"][s], "female": pop["female"][s],
            "ethnicity_group": np.array(list(ETHNICITY_SHARES))[pop["eth"][s]],
            "imd_decile": pop["imd"][s], "team_id": _team_codes(pop["team"][s]),
            "ltc": pop["ltc"][s], "support": pop["support"][s], "engagement": pop["engagement"][s],
            "continuity": pop["continuity"][s], "base_need": pop["base"][s],
            "arrival_week": pop["arrival"][s], "died_on": died, "opted_out": pop["opted_out"][s],
        })
        self._write_parquet("truth", self.truth / "persons.parquet", df)

    # -- at the end: registrations, lookups, corrections, malformed lines ------------------------

    def finish(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        for w in self._pq.values():
            w.close()
        for f in self._csv.values():
            f.close()
        self._write_persons(rng, defects)
        self._write_lookups()
        self._write_corrections(rng, defects)
        self._add_malformed_lines(defects)

    def _write_persons(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        pop = self.pop
        n = int(pop["n"])
        groups = list(ETHNICITY_SHARES)
        eth = pop["eth"]
        sub = (rng.random(n) * np.array([len(ETHNIC_CODES[g]) for g in groups])[eth]).astype(int)
        code_table = np.array([[*ETHNIC_CODES[g], *[""] * (5 - len(ETHNIC_CODES[g]))] for g in groups])
        codes = code_table[eth, sub]
        codes = np.where(rng.random(n) < NOT_STATED_SHARE, "Z", codes)
        birth_year = self.start.year - pop["age"]
        dob_day = rng.integers(0, 365, n)
        jan1 = np.array([np.datetime64(f"{y}-01-01") for y in range(1900, 2030)])  # one per year
        dob = jan1[birth_year - 1900] + dob_day.astype("timedelta64[D]")
        truth_persons = pl.read_parquet(self.truth / "persons.parquet", columns=["died_on"])
        forenames = np.array(["Alex", "Sam", "Jo", "Chris", "Pat", "Robin", "Jamie", "Morgan", "Ali", "Priya"])
        surnames = np.array(["Smith", "Jones", "Taylor", "Brown", "Khan", "Patel", "Evans", "Okafor", "Wilson", "Lee"])
        df = pl.DataFrame({
            "NHSNumber": pop["nhs"],
            "Forename": forenames[rng.integers(0, forenames.size, n)],
            "Surname": surnames[rng.integers(0, surnames.size, n)],
            "DateOfBirth": dob,
            "Gender": np.where(pop["female"], "F", "M"),
            "EthnicCategory": codes,
            "Postcode": np.char.add(np.char.add("ZZ9", (pop["team"] % 10).astype(str)),
                                   np.char.add(" ", np.char.add((pop["team"] % 9 + 1).astype(str), "AB"))),
            "LSOA11": np.char.add("E0199", np.char.zfill(pop["lsoa"].astype(str), 4)),
            "PracticeCode": np.char.add("P8", np.char.zfill(pop["practice"].astype(str), 4)),
            "NationalOptOut": np.where(pop["opted_out"], "Y", "N"),
            "RegistrationDate": np.datetime64("1970-01-01")
            + np.array(pop["registered"] - date(1970, 1, 1).toordinal(), dtype="timedelta64[D]"),
            "DateOfDeath": truth_persons["died_on"].to_numpy(),
        }).with_columns(
            _fmt_nhs(pl.col("NHSNumber"), "gp").alias("NHSNumber"),
            pl.col("DateOfBirth").dt.strftime("%d/%m/%Y"),
            pl.col("RegistrationDate").dt.strftime("%d/%m/%Y"),
            pl.col("DateOfDeath").dt.strftime("%d/%m/%Y"),
        )
        # A few registrations carry an invalid NHS number, like the activity extracts.
        bad = rng.random(n) < DEFECT_RATES["invalid_nhs_number"] * 4
        df = df.with_columns(
            pl.when(pl.Series(bad)).then(pl.col("NHSNumber").str.slice(0, 11) + pl.lit("X"))
            .otherwise(pl.col("NHSNumber")).alias("NHSNumber")
        )
        defects["gp_registrations.invalid_nhs_number"] = int(bad.sum())
        path = self.raw / "gp" / "registrations.csv"
        df.write_csv(path)
        self._register("gp_registrations", path)

    def _write_lookups(self) -> None:
        pop = self.pop
        lsoa = pl.DataFrame({
            "lsoa11cd": np.char.add("E0199", np.char.zfill(np.arange(pop["lsoa_imd"].size).astype(str), 4)),
            "imd_decile": pop["lsoa_imd"].astype(np.int8),
        })
        lsoa.write_csv(self.raw / "lookups" / "lsoa_imd.csv")
        prac = pl.DataFrame({
            "practice_code": np.char.add("P8", np.char.zfill(np.arange(int(pop["n_practices"])).astype(str), 4)),
            "team_id": _team_codes(pop["practice_team"]),
        })
        prac.write_csv(self.raw / "lookups" / "practice_team.csv")

    def _write_corrections(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        """A corrected re-extract of some acute outpatient records: same ids, corrected status."""
        acute = pl.read_parquet(self.raw / "acute" / "activity.parquet")
        op = acute.filter((pl.col("pod") == "OP") & pl.col("attend_status").is_not_null())
        k = min(op.height, max(1, acute.height // 2000))
        idx = rng.choice(op.height, size=k, replace=False) if op.height else np.array([], dtype=int)
        fix = op[np.sort(idx)].with_columns(
            pl.when(pl.col("attend_status") == "5").then(pl.lit("3")).otherwise(pl.lit("5")).alias("attend_status"),
            (pl.col("created_ts") + pl.duration(days=14)).alias("created_ts"),
        )
        path = self.raw / "acute" / "activity_corrections.parquet"
        fix.write_parquet(path, compression="zstd")
        self._register("acute_activity", path)
        defects["acute_activity.corrections"] = fix.height

    def _add_malformed_lines(self, defects: dict[str, int]) -> None:
        """Two broken lines, as from a botched export: too few fields, and too many."""
        path = self.raw / "community" / "contacts.csv"
        with open(path, "ab") as f:
            f.write(b"CH_BROKEN_1;9000000000;DN\n")
            f.write(b"CH_BROKEN_2;9000000001;DN;2025-01-01T10:00:00;2025-01-01T10:00:00;Attended;F2F;S1;x;y\n")
        defects["community_contacts.malformed_line"] = 2


def _labels(codes: np.ndarray, labels: list[str] | tuple[str, ...]) -> pl.Series:
    """A string Series from integer codes into `labels` (faster than numpy string arrays)."""
    return pl.Series(np.asarray(codes, dtype=np.int64)).replace_strict(
        dict(enumerate(labels)), return_dtype=pl.String
    )


def _team_code(t: int) -> str:
    return f"T{int(t) + 1:02d}"


def _team_codes(t: np.ndarray) -> np.ndarray:
    return np.char.add("T", np.char.zfill((np.asarray(t) + 1).astype(str), 2))


def _to_local(column: str, system: str, kind: str) -> pl.Expr:
    """The system's own code for a contract value (unmapped values pass through)."""
    return pl.col(column).replace_strict(_reverse(system, kind), default=pl.col(column))


def _local(col: pl.Expr, system: str, kind: str, contract: tuple[str, ...]) -> pl.Expr:
    rev = _reverse(system, kind)
    mapping = {i: rev[v] for i, v in enumerate(contract) if v in rev}
    return col.replace_strict(mapping, default=None, return_dtype=pl.String)


def _status(system: str) -> pl.Expr:
    return _local(pl.col("status"), system, "status", ("attended", "did_not_attend", "cancelled"))


def _mode(system: str) -> pl.Expr:
    return _local(pl.col("mode"), system, "mode", ("face_to_face", "phone", "video", "home_visit"))


def _date_override(column: str, iso: bool = False) -> pl.Expr:
    bad = "2026-02-30T10:00:00" if iso else "30/02/2026 10:00"
    return (
        pl.when(pl.col("_override_date").is_not_null()).then(pl.lit(bad))
        .otherwise(pl.col(column)).alias(column)
    )


def _inject_defects(
    rng: np.random.Generator, df: pl.DataFrame, system: str, defects: dict[str, int],
    pop: dict[str, np.ndarray], *, kind: str,
) -> pl.DataFrame:
    """Break a small stated share of rows the way real extracts break; count what was broken."""
    n = df.height
    source = _SOURCE_NAMES[(system, kind)]
    u = rng.random(n)
    r = DEFECT_RATES
    edges = np.cumsum([r["invalid_nhs_number"], r["impossible_date"], r["unknown_code"],
                       r["missing_field"], r["person_not_found"]])
    which = np.searchsorted(edges, u, side="right")  # 0..4 a defect, 5 none
    names = ["invalid_nhs_number", "impossible_date", "unknown_code", "missing_field",
             "person_not_found"]
    for i, name in enumerate(names):
        c = int((which == i).sum())
        if c:
            defects[f"{source}.{name}"] = defects.get(f"{source}.{name}", 0) + c
    nhs = df["nhs"].to_numpy().copy()
    # A wrong last digit always breaks the check digit.
    nhs = np.where(which == 0, nhs - nhs % 10 + (nhs % 10 + 1) % 10, nhs)
    # Valid numbers for people not on the register (temporary residents, data errors),
    # from a block the population never draws from.
    nhs = np.where(which == 4, STRANGERS[rng.integers(0, STRANGERS.size, n)], nhs)
    code_col = "service" if kind == "contacts" else "tag"
    return df.with_columns(
        pl.Series("nhs", nhs),
        pl.when(pl.Series(which == 2)).then(pl.lit("UNKNOWN-CODE")).otherwise(pl.col(code_col)).alias(code_col),
        pl.when(pl.Series(which == 1)).then(pl.lit(1)).otherwise(None).alias("_override_date"),
    ).with_columns(
        # Missing field: the record id survives but the date is blank.
        pl.when(pl.Series(which == 3)).then(None).otherwise(pl.col("recorded_at" if kind == "tags" else "occurred_at"))
        .alias("recorded_at" if kind == "tags" else "occurred_at")
    )


def _strangers() -> np.ndarray:
    prefix = np.arange(STRANGER_PREFIX_FROM, STRANGER_PREFIX_FROM + 50, dtype=np.int64)
    check = check_digit(prefix)
    return (prefix * 10 + check)[check != 10]


STRANGERS = _strangers()


_SOURCE_NAMES = {
    ("gp", "contacts"): "gp_appointments", ("acute", "contacts"): "acute_activity",
    ("community", "contacts"): "community_contacts", ("social_care", "contacts"): "social_care_events",
    ("housing", "contacts"): "housing_contacts", ("gp", "tags"): "gp_concerns",
    ("community", "tags"): "community_flags", ("social_care", "tags"): "social_care_observations",
    ("housing", "tags"): "housing_flags", ("acute", "tags"): "acute_tags",
}


# How each extract maps to the contract: (source, table, system, kind, path, formats, columns).
_SOURCES = (
    ("gp_registrations", "persons", "gp", "csv", "gp/registrations.csv",
     {"date_format": "%d/%m/%Y"},
     {"nhs_number": "NHSNumber", "birth_date": "DateOfBirth", "sex": "Gender",
      "ethnicity_group": "EthnicCategory", "lsoa": "LSOA11", "practice_id": "PracticeCode",
      "opted_out": "NationalOptOut", "died_on": "DateOfDeath", "registered_on": "RegistrationDate"}),
    ("gp_appointments", "contacts", "gp", "csv", "gp/appointments_*.csv",
     {"timestamp_format": "%d/%m/%Y %H:%M"},
     {"nhs_number": "NHSNumber", "record_id": "AppointmentID", "occurred_at": "AppointmentDate",
      "recorded_at": "EnteredDate", "service": "SlotType", "status": "Status",
      "mode": "ConsultationMode", "professional": "ClinicianCode"}),
    ("acute_activity", "contacts", "acute", "parquet", "acute/activity*.parquet", {},
     {"nhs_number": "nhs_no", "record_id": "episode_id", "occurred_at": "start_ts",
      "recorded_at": "created_ts", "service": "pod", "status": "attend_status",
      "mode": "contact_mode", "professional": "consultant"}),
    ("community_contacts", "contacts", "community", "csv", "community/contacts.csv",
     {"delimiter": ";", "timestamp_format": "%Y-%m-%dT%H:%M:%S"},
     {"nhs_number": "PatientNHS", "record_id": "ContactRef", "occurred_at": "ContactDateTime",
      "recorded_at": "EnteredDateTime", "service": "ServiceLine", "status": "Outcome",
      "mode": "ContactType", "professional": "StaffID"}),
    ("social_care_events", "contacts", "social_care", "parquet", "social_care/events.parquet", {},
     {"nhs_number": "person_nhs", "record_id": "event_id", "occurred_at": "event_date",
      "recorded_at": "input_date", "service": "event_type", "status": "outcome",
      "mode": "method", "professional": "worker_id"}),
    ("housing_contacts", "contacts", "housing", "csv", "housing/contacts.csv",
     {"timestamp_format": "%d-%b-%Y"},
     {"nhs_number": "nhs_number", "record_id": "ref", "occurred_at": "visit_date",
      "recorded_at": "logged", "service": "contact_type", "status": "outcome", "mode": "channel",
      "professional": "officer"}),
    ("gp_concerns", "tags", "gp", "csv", "gp/concerns.csv",
     {"timestamp_format": "%d/%m/%Y %H:%M"},
     {"nhs_number": "NHSNumber", "record_id": "ConcernID", "recorded_at": "EnteredDate",
      "tag": "Code", "author_role": "AuthorRole"}),
    ("community_flags", "tags", "community", "csv", "community/flags.csv",
     {"delimiter": ";", "timestamp_format": "%Y-%m-%dT%H:%M:%S"},
     {"nhs_number": "PatientNHS", "record_id": "FlagRef", "recorded_at": "RaisedOn",
      "tag": "FlagCode", "author_role": "RaisedBy"}),
    ("social_care_observations", "tags", "social_care", "parquet", "social_care/observations.parquet", {},
     {"nhs_number": "person_nhs", "record_id": "obs_id", "recorded_at": "created",
      "tag": "category", "author_role": "worker_role"}),
    ("housing_flags", "tags", "housing", "csv", "housing/flags.csv",
     {"timestamp_format": "%d-%b-%Y"},
     {"nhs_number": "nhs_number", "record_id": "ref", "recorded_at": "logged", "tag": "risk_flag",
      "author_role": "officer_role"}),
)


def _toml_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def demo_config(world: str = "world", *, seed: int = 7, capacity: int = 20) -> str:
    """The `wobble.toml` text for a synthetic world written under `<config folder>/<world>`."""
    extract = (WORLD_START + timedelta(weeks=WORLD_WEEKS)).isoformat()
    lines = [
        "# wobble configuration for the built-in synthetic world (written by `wobble demo`).",
        "# Paths are relative to this file. See README.md, 'Configuring sources'.",
        "[wobble]",
        'name = "wobble demo (synthetic population)"',
        "demo = true",
        f"seed = {seed}",
        f'as_of = "{extract}"',
        'pseudonym_key_env = "WOBBLE_PSEUDONYM_KEY"',
        "small_number_threshold = 7",
        "",
        "[paths]",
        'warehouse = "warehouse.duckdb"',
        'mlflow = "mlflow"',
        'outputs = "outputs"',
        f'truth = "{world}/truth"  # synthetic worlds only: used to grade models, never to train',
        "",
        "[lookups]",
        f'lsoa_imd = "{world}/raw/lookups/lsoa_imd.csv"',
        f'practice_team = "{world}/raw/lookups/practice_team.csv"',
        "",
        "[teams]",
        f"default_capacity = {capacity}",
        "",
    ]
    eth_values = {code: group for group, codes in ETHNIC_CODES.items() for code in codes}
    eth_values["Z"] = "Not stated"
    for name, table, system, kind, path, formats, columns in _SOURCES:
        lines += [f"[sources.{name}]", f'kind = "{kind}"', f'table = "{table}"',
                  f'system = "{system}"', f'path = "{world}/raw/{path}"']
        lines += [f"{k} = {_toml_str(v)}" for k, v in formats.items()]
        if table == "contacts" and system == "acute":
            lines += ["defaults = { status = \"attended\" }"]
        lines += ["", f"[sources.{name}.columns]"]
        lines += [f"{k} = {_toml_str(v)}" for k, v in columns.items()]
        values: dict[str, dict[str, str]] = {}
        if table == "persons":
            values = {"sex": {"F": "female", "M": "male"}, "ethnicity_group": eth_values,
                      "opted_out": {"Y": "true", "N": "false"}}
        else:
            kinds = ("service", "status", "mode") if table == "contacts" else ("tag", "author_role")
            values = {k: CODES[system][k] for k in kinds if k in CODES[system]}
        for field_name, mapping in values.items():
            lines += ["", f"[sources.{name}.values.{field_name}]"]
            lines += [f"{_toml_str(k)} = {_toml_str(v)}" for k, v in mapping.items()]
        lines.append("")
    return "\n".join(lines)
