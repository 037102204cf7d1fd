"""Report a synthetic world's realised rates, to tune synth's constants against England's.

    python scripts/calibrate_synth.py [PERSONS]

Prints contacts per person-year by service (overall and for people aged 75+), deaths, and the
adult 90-day crisis prevalence with the oracle's AUROC. Nothing is written.
"""

import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from wobble.core.vocab import SERVICES
from wobble.synth import world as S

n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
pop = S._population(np.random.default_rng(1), n, S.WORLD_START, S.WORLD_WEEKS)
years = S.WORLD_WEEKS / 52.18
counts = np.zeros(len(SERVICES))
old_counts = np.zeros(len(SERVICES))
deaths = 0
ys, ps = [], []
for lo in range(0, n, S.CHUNK):
    hi = min(n, lo + S.CHUNK)
    w = S._simulate_chunk(np.random.default_rng(lo), pop, lo, hi, S.WORLD_START, S.WORLD_WEEKS)
    for ev in (w.contacts, w.crises):
        counts += np.bincount(ev["service"], minlength=len(SERVICES))
        old = pop["age"][ev["person"]] >= 75
        old_counts += np.bincount(ev["service"][old], minlength=len(SERVICES))
    deaths += int((w.died_week >= 0).sum())
    person = w.crises["person"] - lo
    day = w.crises["week"] * 7 + w.crises["day"]
    adult = pop["age"][lo:hi] >= 18
    for T in range(52, S.WORLD_WEEKS - 13, 8):
        y = np.zeros(hi - lo, dtype=bool)
        y[person[(day >= T * 7) & (day < T * 7 + 90)]] = True
        p = w.risk[:, T]
        ok = ~np.isnan(p) & adult
        ys.append(y[ok])
        ps.append(p[ok])
n_old = int((pop["age"] >= 75).sum())
print(f"{'service':28s} {'all':>8s} {'75+':>8s}   (per person-year)")
for s, r, r_old in zip(SERVICES, counts / n / years, old_counts / n_old / years, strict=True):
    print(f"{s:28s} {r:8.3f} {r_old:8.3f}")
print(f"contacts per person over the world: {counts.sum() / n:.1f}")
print(f"deaths per person-year: {deaths / n / years:.4f}")
y, p = np.concatenate(ys), np.concatenate(ps)
print(f"adult 90-day prevalence {y.mean():.4f}, mean p_crisis {p.mean():.4f}, oracle AUROC {roc_auc_score(y, p):.4f}")
