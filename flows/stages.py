"""One Prefect flow per stage: ingest, features, train, publish, monitor.

Each is a few tasks from `wobble_tasks` and the artifact its users read; the weekly and retrain
flows compose them. Run names carry the as-of date ('publish-2026-11-23').
"""

from __future__ import annotations

from datetime import date

from prefect import flow

from wobble.flows.tasks import (
    build_snapshots,
    dask_address,
    data_version,
    flagged,
    ingest_sources,
    lists_on_dask,
    monitor_model,
    publish_lists,
    report_data_quality,
    report_lists,
    report_model,
    report_monitoring,
    resolve_as_of,
    run_name,
    snapshots_on_dask,
    task_runner,
    train_model,
)


def _today() -> str:
    return f"ingest-{date.today().isoformat()}"


@flow(name="ingest", flow_run_name=_today, task_runner=task_runner())
def ingest_flow(config: str = "wobble.toml") -> dict:
    """Load new source files; leave a data-quality artifact."""
    summary = ingest_sources(config)
    report_data_quality(summary)
    return summary


@flow(name="features", flow_run_name=run_name("features"), task_runner=task_runner())
def features_flow(config: str = "wobble.toml", as_of: str = "latest", dask: str | None = None) -> dict:
    """Feature snapshots at the as-of date; a second run on unchanged data is served from cache.

    With a Dask scheduler (`dask`, or the config's; run the flow `on` it), one task per person bucket.
    """
    day = resolve_as_of(config, str(as_of))
    if dask_address(config, dask):
        return snapshots_on_dask(config, day)
    return build_snapshots(config, day, data_version(config))


@flow(name="train", flow_run_name=run_name("train"), task_runner=task_runner())
def train_flow(config: str = "wobble.toml", model: str | None = None, dask: str | None = None) -> dict:
    """Train a new model version and its card; leave a model summary for the governance board.

    With a Dask scheduler (`dask`, or the config's), LightGBM fits with its Dask estimator there."""
    summary = train_model(config, model, dask_address(config, dask))
    report_model(summary)
    return summary


@flow(name="publish", flow_run_name=run_name("publish"), task_runner=task_runner())
def publish_flow(config: str = "wobble.toml", as_of: str = "latest", model: str | None = None,
                 dask: str | None = None) -> dict:
    """Each team's list from the approved champion; leave a per-team list summary.

    With a Dask scheduler (`dask`, or the config's; run the flow `on` it), scoring and explaining,
    and writing the pages, are one task per team.
    """
    day = resolve_as_of(config, str(as_of))
    summary = lists_on_dask(config, day, model) if dask_address(config, dask) else publish_lists(config, day, model)
    report_lists(summary)
    return summary


@flow(name="monitor", flow_run_name=run_name("monitor"), task_runner=task_runner())
def monitor_flow(config: str = "wobble.toml", as_of: str = "latest", model: str | None = None):
    """Drift, matured performance and outcomes; the run ends 'Flagged' when it needs a human look."""
    day = resolve_as_of(config, str(as_of))
    summary = monitor_model(config, day, model)
    report_monitoring(summary)
    return flagged(summary, "monitoring report written")
