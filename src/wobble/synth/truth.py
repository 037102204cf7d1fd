"""The phase of each person's hidden need, week by week: what a list is graded on, never a feature.

`truth/need.parquet` holds, per person and week present, the simulator's need, the person's usual
need and the phase of that week:

- in_crisis   a crisis event (A&E, ambulance, emergency admission, mental-health crisis) in weeks
              w-3 .. w (the last 28 days);
- rising      need at least θ above the person's usual, and either still climbing (at least θ/2
              above four weeks before) or, with no crisis in weeks w-12 .. w-4, still at least half
              its highest excess of the last 26 weeks (it has not fallen back half way);
- recovering  need at least θ above usual but not rising, or a crisis in weeks w-12 .. w-4;
- steady      otherwise.

Usual need is the median of weeks w-52 .. w-5, so a rise now never lifts its own baseline. θ is a
quarter of the spread (standard deviation) of usual need between adults: the world's own scale,
not a constant tuned to one world. A crisis ends a rising phase unless need climbs again. "Not yet
fallen back half way" is why a wobble that has peaked and has had no crisis still counts: a team
would still want to talk about it. Worked example: θ 0.2 and usual 0.0, need 0.0, 0.1, 0.3, 0.5,
0.6 over five weeks is rising in the last three; 0.45 the week after is still rising (more than
half of 0.6), and 0.25 the week after that (below half of 0.6, and no longer θ/2 above four weeks
before), with no crisis, is recovering.
"""

from __future__ import annotations

import numpy as np

PHASES = ("steady", "rising", "in_crisis", "recovering")
THETA_SD = 0.25  # "above usual": a quarter of the between-adult standard deviation of usual need
USUAL_FROM, USUAL_TO = 52, 5  # usual need: the median of weeks w-52 .. w-5
CLIMB_WEEKS = 4  # climbing: higher than 4 weeks before by at least θ/2
CRISIS_WEEKS = 4  # in crisis: a crisis event in weeks w-3 .. w
AFTER_CRISIS_WEEKS = 13  # recovering after a crisis: one in weeks w-12 .. w-4
PEAK_WEEKS = 26  # fallen back: below half its highest excess over weeks w-25 .. w
FALLEN_BACK = 0.5


def theta(base: np.ndarray, age: np.ndarray) -> float:
    """θ: a quarter of the standard deviation of usual need between adults (everyone, if none)."""
    adults = base[age >= 18]
    return THETA_SD * float(np.std(adults if adults.size else base))


def usual_need(need: np.ndarray, block: int = 4000) -> np.ndarray:
    """(people × weeks) the person's usual need at each week: the median of weeks w-52 .. w-5 (in
    the world's first year, of weeks 0 .. w-5, or week 0). People in blocks to bound memory; the
    first year is a loop over weeks, never over people."""
    n, weeks = need.shape
    out = np.empty_like(need)
    win = USUAL_FROM - USUAL_TO + 1
    for lo in range(0, n, block):
        x = need[lo : lo + block]
        if weeks > USUAL_FROM:
            v = np.lib.stride_tricks.sliding_window_view(x, win, axis=1)
            out[lo : lo + block, USUAL_FROM:] = np.median(v[:, : weeks - USUAL_FROM], axis=2)
        for w in range(min(USUAL_FROM, weeks)):
            out[lo : lo + block, w] = np.median(x[:, : max(1, w - USUAL_TO + 1)], axis=1)
    return out


def _any_in(events: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Whether `events` (people × weeks counts) has any in weeks w-hi .. w-lo, for every week w."""
    c = np.concatenate([np.zeros((events.shape[0], 1), np.int32), np.cumsum(events, axis=1, dtype=np.int32)],
                       axis=1)
    w = np.arange(events.shape[1])
    return (c[:, np.clip(w - lo + 1, 0, None)] - c[:, np.clip(w - hi, 0, None)]) > 0


def need_phases(need: np.ndarray, baseline: np.ndarray, crisis_weeks: np.ndarray, theta: float) -> np.ndarray:
    """(people × weeks) the phase of each week, an index into PHASES, from the need series, the
    usual need and the crisis events (people × weeks counts) alone."""
    excess = need - baseline
    prev = need[:, np.maximum(np.arange(need.shape[1]) - CLIMB_WEEKS, 0)]  # weeks before 0 read as week 0
    peak = excess.copy()
    for k in range(1, PEAK_WEEKS):
        np.maximum(peak[:, k:], excess[:, :-k], out=peak[:, k:])
    elevated = excess >= theta
    after = _any_in(crisis_weeks, CRISIS_WEEKS, AFTER_CRISIS_WEEKS - 1)
    rising = elevated & (((need - prev) >= theta / 2) | (~after & (excess >= FALLEN_BACK * peak)))
    phase = np.zeros(need.shape, np.int8)
    phase[elevated | after] = PHASES.index("recovering")
    phase[rising] = PHASES.index("rising")
    phase[_any_in(crisis_weeks, 0, CRISIS_WEEKS - 1)] = PHASES.index("in_crisis")
    return phase
