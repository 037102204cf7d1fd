"""The demo on a synthetic world with other dynamics: is the early-warning list still good on a world
it was not designed on?

Changes some of the simulator's constants (`wobble.synth.world`) in this process, runs `wobble
demo` there, and prints what the lists held on the test period (the card's "What the lists hold"):
for this model, today's crisis-now ranking, the best list the observable data allows and the
truth-ranked list, the share in a rising phase (and as a share of the best list's), the share in
crisis and the median lead time. With `--models DIR`, the model is then trained again from the
specs in DIR on the same world, and its figures printed beside the first.

    python scripts/dynamics.py --variant quiet --workdir /tmp/quiet [--models /tmp/specs]

Variants (one world each, changed from the demo's):
- `demo`: none;
- `fast`: shocks rise within a week or two and fade sooner; crises follow need more sharply;
- `slow`: shocks rise over months and fade later;
- `quiet`: services see less of need (its weight in every service's rate × 0.6) and staff note
  fewer concerns (× 0.4);
- `noisy`: a busier baseline of contacts, and six times the background concerns;
- `tagnoise`: concerns mostly noise: eight times the background, a third as many from shocks.

At most 25,000 people: the simulator's worker processes would not see the changed constants.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import wobble.synth.world as W
from wobble.synth.world import CHUNK

VARIANTS = ("demo", "fast", "slow", "quiet", "noisy", "tagnoise")
LISTS = ("model", "crisis_now", "best", "truth")


def change_world(variant: str) -> None:
    """Set the simulator's constants for `variant` (see the module docstring)."""
    if variant == "fast":
        W.SHOCK_RISE, W.SHOCK_DECAY, W.HAZARD_BETA = W.SHOCK_RISE * 0.4, W.SHOCK_DECAY * 0.6, W.HAZARD_BETA * 1.2
    elif variant == "slow":
        W.SHOCK_RISE, W.SHOCK_DECAY = W.SHOCK_RISE * 2.5, W.SHOCK_DECAY * 1.5
    elif variant == "quiet":
        W.NON_CRISIS = {k: replace(v, b=v.b * 0.6, g=tuple(x * 0.6 for x in v.g)) for k, v in W.NON_CRISIS.items()}
        W.TAG_PER_SHOCK_WEEK *= 0.4
        W.NEED_CONCERN *= 0.4
    elif variant == "noisy":
        W.BACKGROUND_CONCERN *= 6
        W.NON_CRISIS = {k: replace(v, a=v.a + 0.4) for k, v in W.NON_CRISIS.items()}
    elif variant == "tagnoise":
        W.BACKGROUND_CONCERN *= 8
        W.TAG_PER_SHOCK_WEEK *= 0.3


def list_lines(metrics: dict) -> list[str]:
    """One line per graded list from a run summary's metrics (`list_<list>_<figure>`)."""
    best = metrics.get("list_best_rising")
    out = []
    for name in LISTS:
        if f"list_{name}_rising" not in metrics:
            continue
        rising = metrics[f"list_{name}_rising"]
        of_best = f" ({rising / best:.0%} of the best list's)" if best else ""
        lead = metrics.get(f"list_{name}_lead_days")
        out.append(f"  {name:10s} rising {rising:.1%}{of_best}, in crisis {metrics[f'list_{name}_in_crisis']:.1%}, "
                   f"median lead {'-' if lead is None else f'{lead:.0f} days'} "
                   f"over {metrics.get(f'list_{name}_lead_days_people', 0):.0f} people")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--models", type=Path, help="train again from the specs in this folder")
    args = ap.parse_args()
    if args.persons > CHUNK:
        raise SystemExit(f"dynamics: at most {CHUNK:,} people (one simulator chunk, in this process)")
    change_world(args.variant)
    from wobble.cli.main import app

    def run(*argv: str) -> dict:
        try:
            app(list(argv), standalone_mode=False)
        except SystemExit as e:
            if e.code:
                raise
        runs = sorted((args.workdir / "outputs" / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
        data = json.loads(runs[-1].read_text())
        return data["stages"]["train"]["metrics"]

    shipped = run("demo", "--persons", str(args.persons), "--seed", str(args.seed), "--workdir", str(args.workdir))
    print(f"{args.variant} world, {args.persons:,} people, seed {args.seed}; the shipped specs:")
    print("\n".join(list_lines(shipped)))
    if args.models:
        toml = args.workdir / "wobble.toml"
        other = args.workdir / "wobble.other-specs.toml"
        other.write_text(toml.read_text().replace("[paths]\n", f'[paths]\nmodels = "{args.models.resolve()}"\n', 1))
        again = run("train", "--config", str(other))
        print(f"the specs in {args.models}:")
        print("\n".join(list_lines(again)))


if __name__ == "__main__":
    main()
