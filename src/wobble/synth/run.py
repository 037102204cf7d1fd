"""`synth`: simulate a world chunk by chunk (in worker processes) and write its extracts and truth."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from wobble.core.calendar import is_monday
from wobble.synth.extracts import Writers
from wobble.synth.population import draw_population
from wobble.synth.sources import DEFECT_RATES
from wobble.synth.world import CHUNK, HORIZON_DAYS, WORLD_START, WORLD_WEEKS, simulate_chunk

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
    if not is_monday(start):
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
    pop = draw_population(np.random.default_rng(pop_seq), persons, start, weeks)
    writers = Writers(raw, truth, start, weeks, pop)
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
    world = simulate_chunk(rng, _SHARED["pop"], lo, hi, start, weeks)
    return world, rng.bit_generator.state


def _simulated(pop: dict[str, np.ndarray], tasks: list, workers: int | None):
    """Each chunk's world and its generator's state, in chunk order.

    With workers, chunks are simulated in forked processes, at most workers + 1 ahead of the
    writer so memory stays bounded.
    """
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


