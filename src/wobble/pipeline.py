"""The stages in order, with timings and counts recorded in a run summary.

`wobble run`, `wobble demo` and the CLI's single-stage commands call these; Prefect flows in
`flows/` call the stage functions directly, one task each. Nothing here transforms data: each
function calls one stage and records what it returned.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

from wobble.config import Config, load_config, pseudonym_key
from wobble.errors import WobbleError
from wobble.runs import RunSummary

Say = Callable[[str], None]


def demo_key(workdir: Path, env_var: str, seed: int) -> tuple[bytes, str | None]:
    """The key from the environment, else the demo key for `seed`, kept in the demo's workdir.

    The demo key is derived from the seed so that a demo is the same run to run, pseudonyms and
    the hash-chosen test people included (the data are synthetic; the key protects nothing real).
    Returns the key and, when it is the demo key, a sentence saying so.
    """
    if os.environ.get(env_var):
        return os.environ[env_var].encode(), None
    path = workdir / ".wobble_key"
    workdir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"wobble demo key, seed {seed}".encode()).hexdigest()
    path.write_text(key)
    path.chmod(0o600)
    os.environ[env_var] = key
    return key.encode(), (
        f"{env_var} is not set: using the demo key for seed {seed}, kept in {path} "
        "(synthetic data only: never use a demo key for real data)"
    )


def stage_ingest(cfg: Config, key: bytes, summary: RunSummary, say: Say) -> dict:
    from wobble.ingest import ingest

    with summary.stage("ingest") as s:
        result = ingest(cfg, key=key, progress=say)
        s.update(result.summary())
    if result.report_md:
        summary.output("quality_report", result.report_md)
        summary.output("quality_report_html", result.report_html)
    if result.failed:
        for f in result.failed:
            say(f"could not load {f.file}: {f.error}")
    return summary.data["stages"]["ingest"]


def stage_features(cfg: Config, as_ofs: list[date], summary: RunSummary, say: Say) -> dict:
    from wobble.features import build_features

    with summary.stage("features") as s:
        say(f"features at {', '.join(d.isoformat() for d in as_ofs)}")
        s.update(build_features(cfg, as_ofs).summary())
    return summary.data["stages"]["features"]


def stage_train(cfg: Config, model: str, key: bytes | None, summary: RunSummary, say: Say,
                max_train_dates: int | None = None, dask: str | None = None):
    from wobble.train import train

    with summary.stage("train") as s:
        result = train(cfg, model, key=key, progress=say, max_train_dates=max_train_dates, dask=dask)
        s.update(result.summary())
    summary.output("model_card", result.card_md)
    if result.card_html:
        summary.output("model_card_html", result.card_html)
    return result


def stage_approve(cfg: Config, model: str, version: str, by: str, note: str, demo: bool,
                  summary: RunSummary) -> dict:
    from wobble.approve import approve

    with summary.stage("approve") as s:
        s.update(approve(cfg, model=model, version=version, by=by, note=note, demo=demo).summary())
    return summary.data["stages"]["approve"]


def stage_publish(cfg: Config, model: str, version: str | None, as_of: date, summary: RunSummary,
                  say: Say) -> dict:
    from wobble.approve import champion
    from wobble.publish import publish

    with summary.stage("publish") as s:
        version = version or champion(cfg, model)
        say(f"lists from {model} version {version} at {as_of}")
        s.update(publish(cfg, model=model, version=version, as_of=as_of).summary())
    summary.data["lists"] = summary.data["stages"]["publish"]["lists"]
    return summary.data["stages"]["publish"]


def stage_monitor(cfg: Config, model: str, as_of: date | None, summary: RunSummary, say: Say) -> dict:
    """Drift, matured performance and outcomes; the run summary says whether it is flagged."""
    from wobble.monitor import monitor

    with summary.stage("monitor") as s:
        say(f"monitoring {model}")
        s.update(monitor(cfg, model=model, as_of=as_of).summary())
    st = summary.data["stages"]["monitor"]
    summary.set("flagged", st["flagged"])
    summary.output("monitor_report", st["report_html"])
    return st


def as_of_for(cfg: Config, given: date | None) -> date:
    """The as-of date: given, else the config's, else the Monday after the last record."""
    if given:
        if given.weekday() != 0:
            raise WobbleError(f"{given} is not a Monday; as-of dates are Mondays")
        return given
    from wobble.train import data_end
    from wobble.warehouse import connect

    with connect(cfg.warehouse, read_only=True) as con:
        return data_end(con, cfg)


def run_weekly(cfg: Config, key: bytes, summary: RunSummary, say: Say, *, as_of: date | None = None,
               model: str | None = None) -> None:
    """ingest → features → score and publish from the champion → monitor."""
    model = model or cfg.wobble.models[0]
    stage_ingest(cfg, key, summary, say)
    d = as_of_for(cfg, as_of)
    stage_features(cfg, [d], summary, say)
    stage_publish(cfg, model, None, d, summary, say)
    try:
        stage_monitor(cfg, model, d, summary, say)
    except WobbleError as exc:  # the lists are out; a monitor that cannot run needs a human look
        summary.set("flagged", True)
        summary.set("monitor_error", str(exc))
    summary.output("warehouse", cfg.warehouse)
    summary.output("mlflow", cfg.mlflow_dir)


def run_demo(workdir: Path, persons: int, seed: int, summary: RunSummary, say: Say,
             progress_chunks: Callable[[int, int], None] | None = None) -> Config:
    """synth → write wobble.toml → ingest → features → train → demo approval → publish."""
    from wobble.synth import demo_config, synth

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with summary.stage("synth") as s:
        say(f"synthetic world: {persons:,} people, seed {seed}")
        s.update(synth(persons=persons, seed=seed, out=workdir / "world", progress=progress_chunks).to_dict())
    config_path = workdir / "wobble.toml"
    config_path.write_text(demo_config("world", seed=seed), encoding="utf-8")
    summary.output("config", config_path)
    cfg = load_config(config_path)
    key, note = demo_key(workdir, cfg.wobble.pseudonym_key_env, cfg.wobble.seed)
    if note:
        say(note)
        summary.set("key_note", note)
    key = pseudonym_key(cfg)
    stage_ingest(cfg, key, summary, say)
    model = cfg.wobble.models[0]
    result = stage_train(cfg, model, key, summary, say)
    stage_approve(cfg, model, result.model_version, "wobble demo", "automatic demo approval: "
                  "synthetic data only", True, summary)
    as_of = as_of_for(cfg, None)
    stage_features(cfg, [as_of], summary, say)
    stage_publish(cfg, model, result.model_version, as_of, summary, say)
    summary.output("warehouse", cfg.warehouse)
    summary.output("mlflow", cfg.mlflow_dir)
    return cfg
