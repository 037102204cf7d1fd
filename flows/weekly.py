"""Weekly lists: ingest → features → publish → monitor, one sub-flow per stage.

    python flows/weekly.py --config wobble.toml [--as-of 2026-11-23] [--dask tcp://HOST:8786]

Without a Prefect server this runs in ephemeral mode; with one (PREFECT_API_URL set) its runs
appear in the UI, and `wobble schedule` runs it every Monday at 06:00 (flows/deploy.py). The run
ends 'Flagged' (a kind of Completed) when monitoring asks for a human look; the lists are out
either way, and nothing is retrained or republished by the monitor.
"""

from __future__ import annotations

import argparse
import os

from prefect import flow

from wobble.flows.stages import features_flow, ingest_flow, monitor_flow, publish_flow
from wobble.flows.tasks import (
    dask_address,
    flagged,
    name_run,
    on,
    resolve_as_of,
    run_name,
    task_runner,
    write_summary,
)


@flow(name="weekly-lists", flow_run_name=run_name("weekly"), task_runner=task_runner())
def weekly(config: str = "wobble.toml", as_of: str = "latest", model: str | None = None, dask: str | None = None):
    """ingest → features → publish → monitor for one as-of date; features and publishing on Dask
    when a scheduler is given (`dask`) or configured (`[dask] address`)."""
    stages = {"ingest": ingest_flow(config)}
    day = resolve_as_of(config, as_of)
    name_run("weekly", day)
    address = dask_address(config, dask)
    stages["features"] = on(features_flow, address)(config, day.isoformat(), address)
    stages["publish"] = on(publish_flow, address)(config, day.isoformat(), model, address)
    stages["monitor"] = monitor_flow(config, day.isoformat(), model)
    stages["summary_path"] = write_summary(config, "weekly-flow", stages)
    return flagged(stages, f"lists published for {day}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="wobble.toml")
    parser.add_argument("--as-of", default="latest")
    parser.add_argument("--dask", default=None, metavar="tcp://HOST:PORT",
                        help="a Dask scheduler to run features and publishing on (default: the config's, if any)")
    args = parser.parse_args()
    from wobble.core.errors import WobbleError

    try:
        result = weekly(config=os.path.abspath(args.config), as_of=args.as_of, dask=args.dask)
    except WobbleError as exc:
        raise SystemExit(f"wobble: {exc}") from None
    print(f"run summary: {result['summary_path']}")
    if result["monitor"]["flagged"]:
        where = result["monitor"]["report_html"] or result["monitor"]["error"]
        raise SystemExit(f"lists published; monitoring asks for a human look: {where}")
