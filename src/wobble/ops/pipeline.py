"""The stages in order, with timings and counts recorded in a run summary.

`wobble run`, `wobble demo` and the CLI's single-stage commands call these; Prefect flows in
`flows/` call the stage functions directly, one task each. Nothing here transforms data: each
function calls one stage and records what it returned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from wobble.core.calendar import as_of_for, require_monday
from wobble.core.config import Config, load_config, pseudonym_key
from wobble.core.runs import RunSummary
from wobble.features import build_features
from wobble.ingest import ingest
from wobble.lists.publish import publish
from wobble.models.approve import approve, champion
from wobble.models.card import rerender
from wobble.models.grading import grade_published
from wobble.models.train import train
from wobble.ops.monitor import monitor, monitor_or_flag
from wobble.synth import demo_config, demo_key, synth
from wobble.synth.demo import demo_vault_key

Say = Callable[[str], None]


def stage_ingest(cfg: Config, key: bytes, summary: RunSummary, say: Say) -> dict:
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
    with summary.stage("features") as s:
        say(f"features at {', '.join(d.isoformat() for d in as_ofs)}")
        s.update(build_features(cfg, as_ofs).summary())
    return summary.data["stages"]["features"]


def stage_train(cfg: Config, model: str, key: bytes | None, summary: RunSummary, say: Say,
                max_train_dates: int | None = None, dask: str | None = None):
    with summary.stage("train") as s:
        result = train(cfg, model, key=key, progress=say, max_train_dates=max_train_dates, dask=dask)
        s.update(result.summary())
    summary.output("model_card", result.card_md)
    if result.card_html:
        summary.output("model_card_html", result.card_html)
    return result


def stage_approve(cfg: Config, model: str, version: str, by: str, note: str, demo: bool,
                  summary: RunSummary) -> dict:
    """Record the approval, then re-render the version's card so its status shows it."""
    with summary.stage("approve") as s:
        s.update(approve(cfg, model=model, version=version, by=by, note=note, demo=demo).summary())
        _, md, html = rerender(cfg, model, version)
        s.update({"model_card": str(md), "model_card_html": str(html)})
    summary.output("model_card", md)
    summary.output("model_card_html", html)
    return summary.data["stages"]["approve"]


def stage_publish(cfg: Config, model: str, version: str | None, as_of: date, summary: RunSummary,
                  say: Say, key: bytes | None = None) -> dict:
    """Publish every team's list; on a synthetic world (`key` and a truth), grade it by the truth."""
    with summary.stage("publish") as s:
        version = version or champion(cfg, model)
        say(f"lists from {model} version {version} at {as_of}")
        s.update(publish(cfg, model=model, version=version, as_of=as_of).summary())
        graded = grade_published(cfg, key, model, version, as_of)
        if graded is not None:
            s["graded_by_truth"] = graded
    summary.data["lists"] = summary.data["stages"]["publish"]["lists"]
    summary.data["coverage"] = summary.data["stages"]["publish"]["coverage"]
    return summary.data["stages"]["publish"]


def stage_monitor(cfg: Config, model: str, as_of: date | None, summary: RunSummary, say: Say, *,
                  weekly: bool = False) -> dict:
    """Drift, matured performance and outcomes; the run summary says whether it is flagged. In the
    weekly path (`weekly`) a monitor that cannot run is a flagged result, not an error."""
    with summary.stage("monitor") as s:
        say(f"monitoring {model}")
        if weekly:
            s.update(monitor_or_flag(cfg, model=model, as_of=as_of_for(cfg, as_of)))
        else:
            s.update(monitor(cfg, model=model, as_of=as_of).summary())
    st = summary.data["stages"]["monitor"]
    summary.set("flagged", st["flagged"])
    if st["report_html"]:
        summary.output("monitor_report", st["report_html"])
    return st


def run_weekly(cfg: Config, key: bytes, summary: RunSummary, say: Say, *, as_of: date | None = None,
               model: str | None = None) -> None:
    """ingest → features → score and publish from the champion → monitor. What would stop it after
    the ingest (a given date that is not a Monday, no approved version to publish from) is checked
    first: at five million people the ingest alone takes half an hour."""
    model = model or cfg.wobble.models[0]
    if as_of is not None:
        require_monday(as_of)
    champion(cfg, model)
    stage_ingest(cfg, key, summary, say)
    d = as_of_for(cfg, as_of)
    stage_features(cfg, [d], summary, say)
    stage_publish(cfg, model, None, d, summary, say, key)
    stage_monitor(cfg, model, d, summary, say, weekly=True)
    summary.output("warehouse", cfg.warehouse)
    summary.output("mlflow", cfg.mlflow_dir)


def run_demo(workdir: Path, persons: int, seed: int, summary: RunSummary, say: Say,
             progress_chunks: Callable[[int, int], None] | None = None) -> Config:
    """synth → write wobble.toml → ingest → features → train → demo approval → publish."""
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
    if vault_note := demo_vault_key(workdir, cfg.vault.key_env):
        say(vault_note)
    stage_ingest(cfg, key, summary, say)
    model = cfg.wobble.models[0]
    result = stage_train(cfg, model, key, summary, say)
    stage_approve(cfg, model, result.model_version, "wobble demo", "automatic demo approval: "
                  "synthetic data only", True, summary)
    as_of = as_of_for(cfg, None)
    stage_features(cfg, [as_of], summary, say)
    stage_publish(cfg, model, result.model_version, as_of, summary, say, key)
    summary.output("warehouse", cfg.warehouse)
    summary.output("mlflow", cfg.mlflow_dir)
    return cfg
