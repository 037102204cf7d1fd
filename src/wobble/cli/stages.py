"""The stage commands: synth, ingest, features, train, approve, card, publish, run, monitor and demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from wobble.cli.main import (
    ConfigOpt,
    DaskOpt,
    JsonOpt,
    _dask_address,
    _date,
    _finish,
    _list_lines,
    _load,
    _monitor_lines,
    _Progress,
    app,
    features_app,
    friendly,
)
from wobble.core.errors import WobbleError


@app.command()
@friendly
def synth(
    persons: Annotated[int, typer.Option(help="How many people.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 7,
    out: Annotated[Path, typer.Option(help="Folder to write the world into.")] = Path("data/world"),
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic population's source extracts (and its hidden truth) to OUT."""
    from wobble.core.runs import RunSummary
    from wobble.synth import synth as run_synth

    summary = RunSummary("synth")
    with _Progress() as p, summary.stage("synth") as s:
        s.update(run_synth(persons=persons, seed=seed, out=out, progress=p.chunks).to_dict())
    st = summary.data["stages"]["synth"]
    _finish(summary, out, as_json, [
        f"{st['persons']:,} people, {st['contacts']:,} contacts, {st['tags']:,} tags, "
        f"{st['crises']:,} crises in {st['seconds']} s",
        f"extracts: {out / 'raw'}   truth (for grading only): {out / 'truth'}",
    ])


@app.command()
@friendly
def ingest(
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
    wait: Annotated[float | None, typer.Option(
        help="Seconds to wait for a busy warehouse (default: the config's, else 0).")] = None,
    fhir: Annotated[Path | None, typer.Option(
        "--fhir", help="Load this FHIR Bulk Data export folder only (works without a wobble.toml: "
        "warehouse and outputs then go under ./data/).")] = None,
    now: Annotated[str | None, typer.Option(
        "--now", help="A fixed clock (e.g. 2026-03-02T09:00): dates after it are impossible. Default: "
        "the config's [ingest] now, else the wall clock.")] = None,
) -> None:
    """Load the sources named in wobble.toml into the warehouse (quarantining bad rows)."""
    from wobble.core.config import load_config, pseudonym_key, with_fhir_folder
    from wobble.core.runs import RunSummary
    from wobble.ingest import ingest as run_ingest

    only = None
    if fhir is not None:
        base = load_config(config) if config.exists() or config != Path("wobble.toml") else None
        cfg, name = with_fhir_folder(fhir, base)
        only = [name]
    else:
        cfg = load_config(config)
    key = pseudonym_key(cfg)
    summary = RunSummary("ingest")
    with _Progress() as p, summary.stage("ingest") as s:
        result = run_ingest(cfg, key=key, progress=p.say, wait_seconds=wait, only=only, now=_timestamp(now))
        s.update(result.summary())
    summary.output("warehouse", cfg.warehouse)
    if result.report_md:
        summary.output("quality_report", result.report_md)
        summary.output("quality_report_html", result.report_html)
    st = summary.data["stages"]["ingest"]
    lines: list[str | Text] = [f"rows in {st['rows_in']:,} = loaded {st['rows_loaded']:,} + quarantined "
             f"{st['rows_quarantined']:,} + duplicate {st['rows_duplicate']:,}",
             "quarantined by reason: " + (", ".join(f"{k} {v:,}" for k, v in st["quarantine_reasons"].items()
                                                      if k != "duplicate") or "none"),
             f"people with a national data opt-out (excluded): {st['opted_out_persons']:,}",
             f"warehouse: {cfg.warehouse}"]
    if result.report_md:
        lines.append(f"data-quality report: {result.report_md} (and .html)")
    lines += [Text.assemble(("failed: ", "red"), e) for e in st["errors"]]
    _finish(summary, cfg.outputs, as_json, lines)
    if result.failed:
        raise typer.Exit(1)


def _timestamp(text: str | None):
    """`--now`: an ISO date or date-time (a time zone offset allowed), or None."""
    from datetime import datetime

    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise WobbleError(f"--now: {text!r} is not a date-time like 2026-03-02T09:00") from None


@features_app.callback(invoke_without_command=True)
@friendly
def features(
    ctx: typer.Context,
    as_of: Annotated[
        list[str] | None, typer.Option("--as-of", help="As-of date (a Monday); repeat for several.")
    ] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Build feature snapshots at one or more as-of dates."""
    if ctx.invoked_subcommand is not None:
        return
    from wobble.core.runs import RunSummary
    from wobble.features import build_features

    if not as_of:
        raise WobbleError("give at least one --as-of YYYY-MM-DD (a Monday)")
    from wobble.core.calendar import as_of_for

    cfg, _ = _load(config)
    dates = [as_of_for(cfg, _date(a)) for a in as_of]  # Mondays no later than the data
    summary = RunSummary("features")
    with _Progress() as p, summary.stage("features") as s:
        p.say("features")
        s.update(build_features(cfg, dates).summary())
    st = summary.data["stages"]["features"]
    _finish(summary, cfg.outputs, as_json,
            [f"{st['rows']:,} snapshot rows × {st['features']} features in {st['seconds']} s"])


@features_app.command("list")
@friendly
def features_list(
    as_json: JsonOpt = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the catalogue as Markdown "
                                           "(docs/features.md).")] = False,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="A wobble.toml whose paths.features to list (default: the packaged catalogue).")] = None,
) -> None:
    """Print the feature catalogue: name, family and the sentence a huddle reads."""
    from rich.table import Table

    from wobble.core.config import PACKAGED_FEATURES, load_config
    from wobble.features import catalogue_markdown, load_catalogue

    cat = load_catalogue(load_config(config).features_dir if config else PACKAGED_FEATURES)
    if markdown:
        sys.stdout.write(catalogue_markdown(cat) + "\n")
        return
    if as_json:
        sys.stdout.write(json.dumps([
            {"name": f.column, "family": f.family, "description": f.description, "unit": f.unit,
             "predictor": f.predictor} for f in cat.features], indent=2) + "\n")
        return
    table = Table(title=f"{len(cat.features)} features")
    for col in ("name", "family", "description"):
        table.add_column(col)
    for f in cat.features:
        table.add_row(f.column, f.family, f.description + ("" if f.predictor else " (not a predictor)"))
    Console().print(table)


@app.command()
@friendly
def train(
    model: Annotated[str | None, typer.Option(
        help="Model spec name under models/ (default: the config's first).")] = None,
    max_train_dates: Annotated[int | None, typer.Option(
        help="Use only the latest N training as-of dates (quicker runs, benchmarks).", min=1)] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
    dask: DaskOpt = None,
) -> None:
    """Train, evaluate and register a model; write its model card (on a Dask cluster with --dask)."""
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import stage_train

    cfg, key_of = _load(config)
    key = key_of(cfg)
    model = model or cfg.wobble.models[0]
    summary = RunSummary("train")
    with _Progress() as p:
        result = stage_train(cfg, model, key, summary, p.say, max_train_dates=max_train_dates,
                             dask=_dask_address(dask, cfg))
    m = result.metrics
    _finish(summary, cfg.outputs, as_json, [
        f"{model} version {result.model_version}: AUROC {m['auroc']:.3f} "
        f"(baseline {m['baseline_auroc']:.3f}"
        + (f", oracle {m['oracle_auroc']:.3f}" if "oracle_auroc" in m else "") + ")",
        *_list_line(m),
        f"model card: {result.card_md}",
        f"approve it with: wobble approve --model {model} --version {result.model_version} "
        "--by \"NAME\" --note \"...\"",
    ])


def _list_line(m: dict) -> list[str]:
    """'its list (test period): 76% rising (best list from the same data 86%), …': the graded list's
    figures in the run's metrics (`train.flat_metrics`), when it was graded."""
    if "list_model_crisis_contact_30d" not in m:
        return []
    parts = []
    if "list_model_rising" in m:
        best = f" (best list from the same data {m['list_best_rising']:.0%})" if "list_best_rising" in m else ""
        parts.append(f"{m['list_model_rising']:.0%} in a rising phase{best}")
    parts.append(f"{m['list_model_crisis_contact_30d']:.0%} with a crisis contact in the 30 days before")
    if "list_model_lead_days" in m:
        parts.append(f"median lead time to a crisis {m['list_model_lead_days']:.0f} days")
    return ["its list (test period): " + ", ".join(parts)]


@app.command()
@friendly
def approve(
    model: Annotated[str, typer.Option(help="Model name.")],
    version: Annotated[str, typer.Option(help="Model version to approve.")],
    by: Annotated[str, typer.Option(help="Who approves (full name and role).")],
    note: Annotated[str, typer.Option(help="What was reviewed, and any conditions.")] = "",
    demo: Annotated[bool, typer.Option(help="Mark as a demo approval (synthetic data only).")] = False,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Approve a model version for publication and make it the champion."""
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import stage_approve

    cfg, _ = _load(config)
    summary = RunSummary("approve")
    st = stage_approve(cfg, model, version, by, note, demo, summary)
    _finish(summary, cfg.outputs, as_json,
            [f"{model} version {version} approved by {st['approved_by']} at {st['approved_at']}; "
             "it is now the champion", f"model card, re-rendered with the approval: {st['model_card']}"])


@app.command()
@friendly
def card(
    model: Annotated[str | None, typer.Option(help="Model name (default: the config's first).")] = None,
    version: Annotated[str | None, typer.Option(help="Version (default: the latest).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Re-render a model version's card (Markdown and HTML) from its MLflow run."""
    from wobble.core.runs import RunSummary
    from wobble.models.card import rerender

    cfg, _ = _load(config)
    model = model or cfg.wobble.models[0]
    summary = RunSummary("card")
    with summary.stage("card") as s:
        v, md, html = rerender(cfg, model, version)
        s.update({"model_name": model, "model_version": v, "model_card": str(md), "model_card_html": str(html)})
    summary.output("model_card", md)
    summary.output("model_card_html", html)
    _finish(summary, cfg.outputs, as_json, [f"model card for {model} version {v}: {md}", f"HTML: {html}"])


@app.command()
@friendly
def publish(
    model: Annotated[str | None, typer.Option(help="Model name (default: the config's first).")] = None,
    version: Annotated[str | None, typer.Option(help="Version (default: the champion).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: latest data).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Score, explain and publish each team's list from an approved model."""
    from wobble.core.calendar import as_of_for
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import stage_publish

    cfg, key_of = _load(config)
    summary = RunSummary("publish")
    d = as_of_for(cfg, _date(as_of) if as_of else None)
    key = key_of(cfg) if cfg.truth else None  # only a synthetic world's truth needs it: to grade the list
    with _Progress() as p:
        st = stage_publish(cfg, model or cfg.wobble.models[0], version, d, summary, p.say, key)
    _finish(summary, cfg.outputs, as_json, _list_lines(st))


@app.command()
@friendly
def monitor(
    model: Annotated[str | None, typer.Option(help="Model name (default: the config's first).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: latest data).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Drift, matured performance and huddle outcomes for the champion; exit 1 when it needs a look."""
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import stage_monitor

    cfg, _ = _load(config)
    summary = RunSummary("monitor")
    with _Progress() as p:
        st = stage_monitor(cfg, model or cfg.wobble.models[0], _date(as_of) if as_of else None, summary, p.say)
    _finish(summary, cfg.outputs, as_json, _monitor_lines(st))
    if st["flagged"]:
        raise typer.Exit(1)



@app.command()
@friendly
def demo(
    persons: Annotated[int, typer.Option(help="How many synthetic people.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    workdir: Annotated[Path, typer.Option(help="Folder for the world, warehouse and outputs.")] = Path("data/demo"),
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline on a synthetic population: synth → … → publish (marked as demo)."""
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import run_demo

    summary = RunSummary("demo")
    with _Progress() as p:
        cfg = run_demo(workdir, persons, seed, summary, p.say, p.chunks)
    tr = summary.data["stages"]["train"]
    m = tr["metrics"]
    lines = [
        f"synthetic world: {workdir / 'world'}",
        f"warehouse: {cfg.warehouse}",
        f"MLflow store: {cfg.mlflow_dir} (mlflow ui --backend-store-uri sqlite:///{cfg.mlflow_dir / 'mlflow.db'})",
        f"model {tr['model_name']} v{tr['model_version']}: AUROC {m['auroc']} (baseline {m['baseline_auroc']}"
        + (f", oracle {m['oracle_auroc']}" if "oracle_auroc" in m else "") + ")",
        *_list_line(m),
        f"model card: {summary.data['outputs']['model_card']}",
        f"data-quality report: {summary.data['outputs'].get('quality_report')}",
        *_list_lines(summary.data["stages"]["publish"]),
    ]
    _finish(summary, cfg.outputs, as_json, lines)


