"""Scheduled deployments: weekly lists every Monday 06:00 and a retrain each quarter, London time.

    prefect server start                      # in one terminal (or a service)
    wobble schedule --config wobble.toml      # in another: registers these and runs them when due

`wobble schedule` calls `serve_all`; `deployments` alone builds them (the schedule test registers
them with `.apply()`). Runs execute one at a time (`limit=1`), so the quarterly retrain (02:00) and
a Monday's weekly lists (06:00) never write to the warehouse together.
"""

from __future__ import annotations

from pathlib import Path

from prefect import serve
from prefect.schedules import Cron

from wobble.flows.retrain import retrain
from wobble.flows.weekly import weekly

TIMEZONE = "Europe/London"
WEEKLY_CRON = "0 6 * * 1"  # Mondays 06:00
RETRAIN_CRON = "0 2 1 1,4,7,10 *"  # 1 January, April, July, October, 02:00


def deployments(config: str) -> list:
    """The weekly-lists and retrain deployments for one wobble.toml (an absolute path)."""
    return [
        weekly.to_deployment(
            name="weekly", schedule=Cron(WEEKLY_CRON, timezone=TIMEZONE), parameters={"config": config},
            description="Team lists every Monday at 06:00 (London): ingest, features, publish, monitor.",
            tags=["wobble"]),
        retrain.to_deployment(
            name="quarterly", schedule=Cron(RETRAIN_CRON, timezone=TIMEZONE), parameters={"config": config},
            description="A new model version each quarter; it waits for governance approval.",
            tags=["wobble"]),
    ]


def serve_all(config: str) -> None:
    """Register the deployments and run them when due, one at a time, until interrupted."""
    serve(*deployments(config), limit=1)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="wobble.toml")
    serve_all(str(Path(parser.parse_args().config).resolve()))
