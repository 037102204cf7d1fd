"""Retrain: ingest → train a new model version with its card. Approval stays with people.

    python flows/retrain.py --config wobble.toml [--model crisis_90d] [--dask tcp://HOST:8786]

`wobble schedule` runs it on the first day of each quarter (flows/deploy.py). The new version is
registered in MLflow and its card written, but it is not approved: lists keep coming from the
champion until a governance board reads the card and runs `wobble approve`.
"""

from __future__ import annotations

import argparse
import os

from prefect import flow

from wobble.flows.stages import ingest_flow, train_flow
from wobble.flows.tasks import name_run, resolve_as_of, run_name, task_runner, write_summary


@flow(name="retrain", flow_run_name=run_name("retrain"), task_runner=task_runner())
def retrain(config: str = "wobble.toml", model: str | None = None, dask: str | None = None) -> dict:
    """ingest → train; the new version awaits governance approval. `dask`: a scheduler to fit on."""
    stages = {"ingest": ingest_flow(config)}
    name_run("-".join(p for p in ("retrain", model) if p), resolve_as_of(config, "latest"))
    stages["train"] = train_flow(config, model, dask)
    stages["summary_path"] = write_summary(config, "retrain-flow", stages)
    return stages


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="wobble.toml")
    parser.add_argument("--model", default=None)
    parser.add_argument("--dask", default=None, metavar="tcp://HOST:PORT",
                        help="a Dask scheduler to fit LightGBM on (default: the config's, if any)")
    args = parser.parse_args()
    from wobble.core.errors import WobbleError

    try:
        result = retrain(config=os.path.abspath(args.config), model=args.model, dask=args.dask)
    except WobbleError as exc:
        raise SystemExit(f"wobble: {exc}") from None
    t = result["train"]
    print(f"{t['model_name']} version {t['model_version']} registered; card: {t['model_card']}; "
          f"approve it with: wobble approve --model {t['model_name']} --version {t['model_version']} "
          "--by \"NAME\" --note \"...\"")
