"""Prefect tasks for every wobble stage, and the artifacts each flow leaves behind.

Each task takes the config path and plain values (dates, strings), calls one `wobble` function and
returns its summary, a dict. No connection, data frame or model ever passes between tasks, so task
inputs hash cleanly (a DuckDB connection is never part of a cache key) and any task could run in
another process. Tasks that touch files or services retry on transient trouble only; building
feature snapshots, the expensive pure step, is cached on its inputs: the config, the as-of date and
a digest of the warehouse's loads, the config file and the feature catalogue.

The task runner every flow uses is chosen here, in `task_runner()`, and nowhere else.
"""

from __future__ import annotations

import hashlib
from contextlib import suppress
from datetime import date, timedelta
from pathlib import Path

from prefect import task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.states import Completed

from wobble.core import warehouse
from wobble.core.calendar import as_of_for
from wobble.core.config import load_config, pseudonym_key
from wobble.core.errors import WarehouseBusy, WobbleError
from wobble.core.runs import RunSummary
from wobble.features import build_features
from wobble.ingest import ingest
from wobble.lists import publish as lists_publish  # the module
from wobble.models.approve import champion
from wobble.models.train import train
from wobble.ops import scale
from wobble.ops.monitor import monitor_or_flag


def task_runner(address: str | None = None):
    """The task runner for every wobble flow: Prefect's thread pool on this machine or, given a Dask
    scheduler's address, prefect-dask's DaskTaskRunner on that cluster (only then is Dask imported)."""
    if not address:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=2)
    from prefect_dask import DaskTaskRunner

    # Workers import these tasks from their own wobble install (the same version: README, Dask).
    return DaskTaskRunner(address=address)


def dask_address(config: str, given: str | None = None) -> str | None:
    """The Dask scheduler to use: the one given (`--dask`), else the config's `[dask] address`, else none."""
    return given or _cfg(config).dask.address


def on(flow, address: str | None):
    """The flow as it runs with `address`'s task runner: unchanged without one."""
    return flow.with_options(task_runner=task_runner(address)) if address else flow


def transient(task, task_run, state) -> bool:
    """Retry I/O trouble, never a data or configuration problem a retry cannot fix."""
    try:
        state.result()
    except WarehouseBusy:
        return True
    except WobbleError:
        return False
    except Exception:  # noqa: BLE001 - anything else may be passing (disk, network share, MLflow store)
        return True
    return False


RETRY = {"retries": 2, "retry_delay_seconds": [30, 120], "retry_condition_fn": transient}


def _cfg(config: str):

    return load_config(config)


def _model(config: str, model: str | None) -> str:
    return model or _cfg(config).wobble.models[0]


def run_name(prefix: str):
    """A flow-run namer: '<prefix>[-<model>]-<as-of>', resolving 'latest' from the warehouse as it stands."""
    def name() -> str:
        from prefect.runtime import flow_run


        params = flow_run.parameters
        as_of = str(params.get("as_of", "latest"))
        if as_of == "latest":
            with suppress(WobbleError):  # no warehouse yet: the flow renames itself once it knows
                as_of = as_of_for(_cfg(params["config"]), None).isoformat()
        return "-".join(p for p in (prefix, params.get("model"), as_of) if p)

    return name


def name_run(prefix: str, day: date) -> None:
    """Rename the running flow run '<prefix>-<as-of>' once the as-of date is known."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=f"{prefix}-{day.isoformat()}")


def flagged(result: dict, what: str) -> dict | Completed:
    """The flow's result, or a Completed state named 'Flagged' when monitoring asks for a human look."""
    monitor = result.get("monitor", result)
    if monitor.get("flagged"):
        where = monitor.get("report_html") or monitor.get("error")
        return Completed(name="Flagged", message=f"{what}; monitoring asks for a human look: {where}", data=result)
    return result


# --- stages -----------------------------------------------------------------------------------


@task(**RETRY)
def ingest_sources(config: str) -> dict:
    """Load new source files into the warehouse; bad rows go to quarantine."""
    cfg = _cfg(config)
    return ingest(cfg, key=pseudonym_key(cfg), wait_seconds=60).summary()


@task(**RETRY)
def resolve_as_of(config: str, as_of: str) -> date:
    """The as-of date: given, else ('latest') the latest the data supports."""
    return as_of_for(_cfg(config), None if as_of == "latest" else date.fromisoformat(as_of))


@task(**RETRY)
def data_version(config: str) -> str:
    """A digest of everything feature snapshots depend on: warehouse loads, config, catalogue."""
    cfg = _cfg(config)
    digest = hashlib.sha256(warehouse.data_version(cfg.warehouse).encode())
    for path in [Path(config), *sorted(cfg.features_dir.glob("*.yml"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@task(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(days=30), persist_result=True,
      **RETRY)
def build_snapshots(config: str, as_of: date, version: str) -> dict:
    """Point-in-time features for everyone in the cohort at the as-of date (cached on `version`)."""
    return build_features(_cfg(config), [as_of], wait_seconds=60).summary()


# --- the same stages, partitioned for a Dask cluster (wobble.ops.scale) -------------------------------
# Export and load steps run in the flow's own process (the warehouse has one writer); the steps
# between are mapped over buckets or teams and run on the Dask workers. No caching: inputs are
# Parquet folders and models, not worth hashing.


@task(cache_policy=NO_CACHE, **RETRY)
def export_person_buckets(config: str, as_of: date):
    """Persons, contacts and tags as Parquet, bucketed by person (and the cross-person tables)."""
    return scale.export_persons(_cfg(config), [as_of])


@task(cache_policy=NO_CACHE, **RETRY)
def bucket_snapshots(config: str, parts, bucket: int) -> Path:
    """One bucket's feature snapshots, on a Dask worker."""
    return scale.bucket_snapshots(_cfg(config), parts, bucket)


@task(cache_policy=NO_CACHE, **RETRY)
def load_bucket_snapshots(config: str, parts, files: list[Path]) -> dict:
    """Every bucket's snapshots into the warehouse, in one transaction."""
    return scale.load_snapshots(_cfg(config), parts, files).summary()


def snapshots_on_dask(config: str, as_of: date) -> dict:
    """Feature snapshots at `as_of`, one task per person bucket; called inside a flow run on Dask."""
    parts = export_person_buckets(config, as_of)
    files = bucket_snapshots.map(config, unmapped(parts), list(parts.buckets))
    return load_bucket_snapshots(config, parts, files)


@task(cache_policy=NO_CACHE, **RETRY)
def champion_model(config: str, model: str | None):
    """The approved champion of the model, loaded once for every team's task."""
    cfg, name = _cfg(config), _model(config, model)
    return scale.load_model(cfg, name, champion(cfg, name))


@task(cache_policy=NO_CACHE, **RETRY)
def export_team_rows(config: str, scoring, as_of: date):
    """Each team's scoring rows at the as-of date, as Parquet."""
    return scale.export_teams(_cfg(config), scoring, as_of)


@task(cache_policy=NO_CACHE, **RETRY)
def score_team(config: str, parts, team: str, scoring) -> Path:
    """Score one team and explain its listed people, on a Dask worker."""
    return scale.score_team(_cfg(config), parts, team, scoring)


@task(cache_policy=NO_CACHE, **RETRY)
def load_team_scores(config: str, parts, scoring, folders: list[Path]):
    """Every team's scores and explanations into the warehouse, in one transaction."""
    return scale.load_scores(_cfg(config), parts, scoring, folders)


@task(cache_policy=NO_CACHE, **RETRY)
def prepare_team_lists(config: str, as_of: date, scored):
    """Reasons, caveats and each team's list rows from the scores, written to the warehouse."""
    return lists_publish.prepare_lists(_cfg(config), model=scored.model_name, version=scored.model_version, as_of=as_of,
                         scored=scored)


@task(cache_policy=NO_CACHE, **RETRY)
def write_team_page(page):
    """One team's list page and CSV, on a Dask worker."""
    return lists_publish.write_team_page(page)


@task(cache_policy=NO_CACHE, **RETRY)
def finish_team_lists(lists, written) -> dict:
    """The publish summary once every team's page is written (and its artifacts)."""
    return lists_publish.finish_lists(lists, written).summary()


def lists_on_dask(config: str, as_of: date, model: str | None) -> dict:
    """Score, explain and publish at `as_of`, one task per team for scoring and for pages;
    called inside a flow run on Dask."""
    scoring = champion_model(config, model)
    parts = export_team_rows(config, scoring, as_of)
    folders = score_team.map(config, unmapped(parts), list(parts.teams), unmapped(scoring))
    scored = load_team_scores(config, parts, scoring, folders)
    lists = prepare_team_lists(config, as_of, scored)
    return finish_team_lists(lists, write_team_page.map(lists.pages))


@task(**RETRY)
def train_model(config: str, model: str | None, dask: str | None = None) -> dict:
    """Train, evaluate and register a new model version with its card; never approve it.

    `dask`: a scheduler's address, to fit with LightGBM's Dask estimator on that cluster."""

    cfg = _cfg(config)
    return train(cfg, _model(config, model), key=pseudonym_key(cfg), dask=dask).summary()


@task(**RETRY)
def publish_lists(config: str, as_of: date, model: str | None) -> dict:
    """Score with the champion, explain the listed people, write each team's list."""
    cfg, name = _cfg(config), _model(config, model)
    return lists_publish.publish(cfg, model=name, version=champion(cfg, name), as_of=as_of).summary()


@task(**RETRY)
def monitor_model(config: str, as_of: date, model: str | None) -> dict:
    """Drift, matured performance and huddle outcomes for the champion (flagged, not failed, when it
    cannot run: the lists are out); never retrains or republishes."""
    return monitor_or_flag(_cfg(config), model=_model(config, model), as_of=as_of)


@task(**RETRY)
def write_summary(config: str, command: str, stages: dict) -> str:
    """The run summary JSON, as the CLI writes it."""
    cfg = _cfg(config)
    summary = RunSummary(command)
    summary.data["stages"] = {k: v for k, v in stages.items() if isinstance(v, dict)}
    if "publish" in stages:
        summary.set("lists", stages["publish"]["lists"])
    if "monitor" in stages:
        summary.set("flagged", stages["monitor"]["flagged"])
        summary.output("monitor_report", stages["monitor"]["report_html"])
    summary.output("warehouse", cfg.warehouse)
    return str(summary.write(cfg.outputs))


# --- artifacts --------------------------------------------------------------------------------


def _richer(summary: dict, *keys: str) -> str | None:
    """The Markdown of a fuller report a stage wrote, if its summary names one that exists."""
    for key in keys:
        value = summary.get(key)
        if isinstance(value, str) and value.endswith(".md") and Path(value).is_file():
            return Path(value).read_text(encoding="utf-8")
    return None


def _key(*parts: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return "-".join("".join(c if c.isalnum() else "-" for c in p.lower()) for p in parts)


def quality_markdown(s: dict) -> str:
    lines = ["# Data quality: this ingest", "",
             f"Rows in {s['rows_in']:,} = loaded {s['rows_loaded']:,} + quarantined {s['rows_quarantined']:,} "
             f"+ duplicate {s['rows_duplicate']:,}.",
             f"Files loaded {s['files_loaded']}, already loaded (skipped) {s['files_skipped']}, "
             f"failed {s['files_failed']}. People with a national data opt-out, excluded: "
             f"{s['opted_out_persons']:,}.", ""]
    if s["quarantine_reasons"]:
        lines += ["| quarantine reason | rows |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {v:,} |" for k, v in s["quarantine_reasons"].items()]
    if s["errors"]:
        lines += ["", "**Files that could not be loaded:**", *[f"- {e}" for e in s["errors"]]]
    richer = _richer(s, "quality_report_md", "quality_report", "report_md")
    return "\n".join(lines) + ("\n\n---\n\n" + richer if richer else "")


def model_markdown(s: dict) -> str:
    m = s["metrics"]
    rows = [(k, m[k]) for k in ("auroc", "baseline_auroc", "auprc", "brier", "calibration_slope",
                                "precision_at_capacity", "oracle_auroc", "skill_ratio") if k in m]
    lines = [f"# Model {s['model_name']} version {s['model_version']}: awaiting governance approval", "",
             f"Trained on {len(s['train_as_ofs'])} as-of dates ({s['train_as_ofs'][0]} to {s['train_as_ofs'][-1]}), "
             f"tested on {len(s['test_as_ofs'])} later dates for different people ({s['rows_test']:,} person-dates).",
             "", "| metric | value |", "|---|---|", *[f"| {k.replace('_', ' ')} | {v:.3f} |" for k, v in rows], "",
             "No list uses this version until a governance board approves it, after reading its card: "
             f"`wobble approve --model {s['model_name']} --version {s['model_version']} --by \"NAME\" --note \"...\"`",
             f"Model card: {s['model_card']}"]
    richer = _richer(s, "model_card")
    return "\n".join(lines) + ("\n\n---\n\n" + richer if richer else "")


def lists_table(s: dict) -> list[dict]:
    return [{"team": t["team"], "people listed": t["rows"], "page": t["html"], "csv": t["csv"]} for t in s["lists"]]


@task(**RETRY)
def report_data_quality(summary: dict) -> None:
    """Artifact: what the ingest loaded, quarantined (and why) and could not read."""
    create_markdown_artifact(markdown=quality_markdown(summary), key="data-quality",
                             description="Rows loaded and quarantined, by reason")


@task(**RETRY)
def report_model(summary: dict) -> None:
    """Artifact: the new model version's figures and card, for the governance board."""
    create_markdown_artifact(markdown=model_markdown(summary), key=_key("model-summary", summary["model_name"]),
                             description=f"{summary['model_name']} v{summary['model_version']}: awaiting approval")


@task(**RETRY)
def report_lists(summary: dict) -> None:
    """Artifact: one row per team list, with where its page is."""
    create_table_artifact(table=lists_table(summary), key="team-lists",
                          description=f"Team lists at {summary['as_of']} from {summary['model_name']} "
                                      f"v{summary['model_version']}" + (" (DEMO)" if summary.get("demo") else ""))
    richer = _richer(summary, "summary_md", "report_md")
    if richer:
        create_markdown_artifact(markdown=richer, key="team-lists-summary",
                                 description=f"Team lists at {summary['as_of']}")


@task(**RETRY)
def report_monitoring(summary: dict) -> None:
    """Artifact: the monitoring report, saying what needs a human look and why."""
    text = (Path(summary["report_md"]).read_text(encoding="utf-8") if summary["report_md"]
            else "\n".join(f"- **{f['level']}**: {f['what']} {f['why']}" for f in summary["findings"]))
    create_markdown_artifact(
        markdown=text,
        key=_key("monitoring-report", summary["model_name"]),
        description=f"{summary['model_name']} v{summary['model_version'] or '?'} at {summary['as_of']}: "
                    + ("FLAGGED, needs a human look" if summary["flagged"] else summary["level"]))
