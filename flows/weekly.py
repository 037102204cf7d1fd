"""Weekly lists: ingest → features → score and publish, one Prefect task per stage.

    python flows/weekly.py --config wobble.toml [--as-of 2026-11-23]

Without a Prefect server this runs in ephemeral mode; with one (PREFECT_API_URL set) its runs
appear in the UI. Each task calls one `wobble` stage function; no data work happens here.
"""

from __future__ import annotations

import argparse
import os
from datetime import date

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402


def transient(task, task_run, state) -> bool:
    """Retry I/O trouble, never a data or configuration problem a retry cannot fix."""
    from wobble.errors import WarehouseBusy, WobbleError

    try:
        state.result()
    except WarehouseBusy:
        return True
    except WobbleError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be passing (disk, network share)
        return True
    return False


@task(retries=2, retry_delay_seconds=60, retry_condition_fn=transient)
def ingest_sources(config: str) -> dict:
    """Load new source files into the warehouse; bad rows go to quarantine."""
    from wobble.config import load_config, pseudonym_key
    from wobble.ingest import ingest

    cfg = load_config(config)
    return ingest(cfg, key=pseudonym_key(cfg)).summary()


@task
def resolve_as_of(config: str, as_of: str) -> date:
    """The as-of date: given, else ('latest') the latest the data supports."""
    from wobble.config import load_config
    from wobble.pipeline import as_of_for

    return as_of_for(load_config(config), None if as_of == "latest" else date.fromisoformat(as_of))


@task
def build_snapshots(config: str, as_of: date) -> dict:
    """Point-in-time features for everyone in the cohort at the as-of date."""
    from wobble.config import load_config
    from wobble.features import build_features

    return build_features(load_config(config), [as_of]).summary()


@task
def publish_lists(config: str, as_of: date) -> dict:
    """Score with the champion, explain the listed people, write each team's list."""
    from wobble.approve import champion
    from wobble.config import load_config
    from wobble.publish import publish

    cfg = load_config(config)
    model = cfg.wobble.models[0]
    return publish(cfg, model=model, version=champion(cfg, model), as_of=as_of).summary()


@task
def write_summary(config: str, stages: dict) -> str:
    """The run summary JSON, as the CLI writes it."""
    from wobble.config import load_config
    from wobble.runs import RunSummary

    cfg = load_config(config)
    summary = RunSummary("weekly-flow")
    summary.data["stages"] = stages
    summary.data["lists"] = stages["publish"]["lists"]
    summary.output("warehouse", cfg.warehouse)
    return str(summary.write(cfg.outputs))


@flow(name="weekly-lists", flow_run_name="weekly-{as_of}")
def weekly(config: str = "wobble.toml", as_of: str = "latest") -> dict:
    """ingest → features → publish for one as-of date."""
    stages = {"ingest": ingest_sources(config)}
    day = resolve_as_of(config, as_of)
    stages["features"] = build_snapshots(config, day)
    stages["publish"] = publish_lists(config, day)
    stages["summary_path"] = write_summary(config, stages)
    return stages


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="wobble.toml")
    parser.add_argument("--as-of", default="latest")
    args = parser.parse_args()
    from wobble.errors import WobbleError

    try:
        weekly(config=os.path.abspath(args.config), as_of=args.as_of)
    except WobbleError as exc:
        raise SystemExit(f"wobble: {exc}") from None
