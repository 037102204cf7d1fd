"""The `wobble` command line: one command per stage, `wobble run` for the weekly path, `wobble demo`.

Progress and messages go to stderr; `--json` prints the run summary on stdout. Input and
configuration problems print one line and exit non-zero; heavy libraries are imported inside
the commands that need them, so `wobble --help` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wobble.errors import WobbleError

app = typer.Typer(
    name="wobble",
    help="Early warning for health and social care: short, explained lists for MDT discussion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(help="Build feature snapshots, or list the feature catalogue.")
app.add_typer(features_app, name="features")
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Path to wobble.toml.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the run summary as JSON on stdout.")]
DaskOpt = Annotated[str | None, typer.Option(
    "--dask", metavar="tcp://HOST:PORT",
    help="A Dask scheduler to scale out on (default: dask.address in the config, if any).")]


def _date(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise WobbleError(f"{value!r} is not a date; write YYYY-MM-DD") from None


def friendly(fn):
    """Turn WobbleError into one line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WobbleError as exc:
            err.print(f"[bold red]wobble:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("wobble: interrupted")
            raise typer.Exit(130) from None
        except Exception as exc:
            # Out of memory is the machine, not a bug: say so in one line. (By name, so that
            # `wobble --help` need not import DuckDB.)
            if type(exc).__name__ != "OutOfMemoryException" or not type(exc).__module__.endswith("duckdb"):
                raise
            from rich.markup import escape  # DuckDB's text and "[ingest]" are not markup

            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
            err.print(f"[bold red]wobble:[/] DuckDB ran out of memory ({escape(first)}). Give it more room "
                      f"(stop other jobs on this machine; for ingest, raise memory_limit under {escape('[ingest]')} "
                      "in wobble.toml) and run it again.", highlight=False, soft_wrap=True)
            raise typer.Exit(OUT_OF_MEMORY) from None

    return wrapper


OUT_OF_MEMORY = 71  # EX_OSERR: the machine, not the input


def _finish(summary, outputs_dir: Path, as_json: bool, lines: list[str]) -> None:
    path = summary.write(outputs_dir)
    if as_json:
        sys.stdout.write(json.dumps(summary.data, indent=2, default=str) + "\n")
    for line in lines:
        err.print(line, highlight=False, soft_wrap=True)
    err.print(f"run summary: {path}", highlight=False, soft_wrap=True)


class _Progress:
    """A Rich progress display with one line per stage message."""

    def __init__(self):
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TimeElapsedColumn(), console=err, transient=False)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc):
        self.progress.update(self.task, description="done", completed=1, total=1)
        return self.progress.__exit__(*exc)

    def say(self, message: str) -> None:
        self.progress.update(self.task, description=message, total=None)

    def chunks(self, done: int, total: int) -> None:
        self.progress.update(self.task, description="synthetic world", completed=done, total=total)


def _load(config: Path):
    from wobble.config import load_config, pseudonym_key

    cfg = load_config(config)
    return cfg, pseudonym_key


# ---------------------------------------------------------------------------------------------


@app.command()
@friendly
def synth(
    persons: Annotated[int, typer.Option(help="How many people.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same world.")] = 7,
    out: Annotated[Path, typer.Option(help="Folder to write the world into.")] = Path("data/world"),
    as_json: JsonOpt = False,
) -> None:
    """Write a synthetic population's source extracts (and its hidden truth) to OUT."""
    from wobble.runs import RunSummary
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
) -> None:
    """Load the sources named in wobble.toml into the warehouse (quarantining bad rows)."""
    from wobble.config import load_config, pseudonym_key, with_fhir_folder
    from wobble.ingest import ingest as run_ingest
    from wobble.runs import RunSummary

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
        result = run_ingest(cfg, key=key, progress=p.say, wait_seconds=wait, only=only)
        s.update(result.summary())
    summary.output("warehouse", cfg.warehouse)
    if result.report_md:
        summary.output("quality_report", result.report_md)
        summary.output("quality_report_html", result.report_html)
    st = summary.data["stages"]["ingest"]
    lines = [f"rows in {st['rows_in']:,} = loaded {st['rows_loaded']:,} + quarantined "
             f"{st['rows_quarantined']:,} + duplicate {st['rows_duplicate']:,}",
             "quarantined by reason: " + (", ".join(f"{k} {v:,}" for k, v in st["quarantine_reasons"].items()
                                                      if k != "duplicate") or "none"),
             f"people with a national data opt-out (excluded): {st['opted_out_persons']:,}",
             f"warehouse: {cfg.warehouse}"]
    if result.report_md:
        lines.append(f"data-quality report: {result.report_md} (and .html)")
    lines += [f"[red]failed:[/] {e}" for e in st["errors"]]
    _finish(summary, cfg.outputs, as_json, lines)
    if result.failed:
        raise typer.Exit(1)


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
    from wobble.features import build_features
    from wobble.runs import RunSummary

    if not as_of:
        raise WobbleError("give at least one --as-of YYYY-MM-DD (a Monday)")
    dates = [_date(a) for a in as_of]
    bad = [d for d in dates if d.weekday() != 0]
    if bad:
        raise WobbleError(f"{bad[0]} is not a Monday; as-of dates are Mondays")
    cfg, _ = _load(config)
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
) -> None:
    """Print the feature catalogue: name, family and the sentence a huddle reads."""
    from rich.table import Table

    from wobble.config import project_dir
    from wobble.features import catalogue_markdown, load_catalogue

    cat = load_catalogue(project_dir() / "features")
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
    model: Annotated[str, typer.Option(help="Model spec name under models/.")] = "crisis_90d",
    max_train_dates: Annotated[int | None, typer.Option(
        help="Use only the latest N training as-of dates (quicker runs, benchmarks).", min=1)] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
    dask: DaskOpt = None,
) -> None:
    """Train, evaluate and register a model; write its model card (on a Dask cluster with --dask)."""
    from wobble.pipeline import stage_train
    from wobble.runs import RunSummary

    cfg, key_of = _load(config)
    key = key_of(cfg)
    summary = RunSummary("train")
    with _Progress() as p:
        result = stage_train(cfg, model, key, summary, p.say, max_train_dates=max_train_dates,
                             dask=_dask_address(dask, cfg))
    m = result.metrics
    _finish(summary, cfg.outputs, as_json, [
        f"{model} version {result.model_version}: AUROC {m['auroc']:.3f} "
        f"(baseline {m['baseline_auroc']:.3f}"
        + (f", oracle {m['oracle_auroc']:.3f}" if "oracle_auroc" in m else "") + ")",
        f"model card: {result.card_md}",
        f"approve it with: wobble approve --model {model} --version {result.model_version} "
        "--by \"NAME\" --note \"...\"",
    ])


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
    from wobble.pipeline import stage_approve
    from wobble.runs import RunSummary

    cfg, _ = _load(config)
    summary = RunSummary("approve")
    st = stage_approve(cfg, model, version, by, note, demo, summary)
    _finish(summary, cfg.outputs, as_json,
            [f"{model} version {version} approved by {st['approved_by']} at {st['approved_at']}; "
             "it is now the champion"])


@app.command()
@friendly
def card(
    model: Annotated[str, typer.Option(help="Model name.")] = "crisis_90d",
    version: Annotated[str | None, typer.Option(help="Version (default: the latest).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Re-render a model version's card (Markdown and HTML) from its MLflow run."""
    from wobble.card import rerender
    from wobble.runs import RunSummary

    cfg, _ = _load(config)
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
    from wobble.pipeline import as_of_for, stage_publish
    from wobble.runs import RunSummary

    cfg, _ = _load(config)
    summary = RunSummary("publish")
    d = as_of_for(cfg, _date(as_of) if as_of else None)
    with _Progress() as p:
        st = stage_publish(cfg, model or cfg.wobble.models[0], version, d, summary, p.say)
    _finish(summary, cfg.outputs, as_json, _list_lines(st))


def _list_lines(st: dict) -> list[str]:
    lines = [f"{len(st['lists'])} team lists at {st['as_of']}" + (" (DEMO)" if st.get("demo") else "")]
    lines += [f"  {t['team']}: {t['rows']} people  {t['html']}" for t in st["lists"][:10]]
    if len(st["lists"]) > 10:
        lines.append(f"  … and {len(st['lists']) - 10} more in {Path(st['lists'][0]['html']).parent}")
    return lines


@app.command()
@friendly
def run(
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: latest data).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
    dask: DaskOpt = None,
) -> None:
    """The weekly path: ingest → features → score → publish from the champion → monitor (exit 1 if flagged).

    With a Dask scheduler (--dask, or the config's) it runs as the weekly Prefect flow on that cluster."""
    from wobble.pipeline import run_weekly
    from wobble.runs import RunSummary

    cfg, key_of = _load(config)
    key = key_of(cfg)
    address = _dask_address(dask, cfg)
    if address:
        _run_weekly_flow(config, as_of, address, as_json)
        return
    summary = RunSummary("run")
    with _Progress() as p:
        run_weekly(cfg, key, summary, p.say, as_of=_date(as_of) if as_of else None)
    st = summary.data["stages"]
    lines = _list_lines(st["publish"])
    lines += _monitor_lines(st["monitor"]) if "monitor" in st else [
        f"[bold red]monitoring could not run:[/] {summary.data['monitor_error']}"]
    _finish(summary, cfg.outputs, as_json, lines)
    if summary.data["flagged"]:
        raise typer.Exit(1)


@app.command()
@friendly
def monitor(
    model: Annotated[str | None, typer.Option(help="Model name (default: the config's first).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of date (default: latest data).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Drift, matured performance and huddle outcomes for the champion; exit 1 when it needs a look."""
    from wobble.pipeline import stage_monitor
    from wobble.runs import RunSummary

    cfg, _ = _load(config)
    summary = RunSummary("monitor")
    with _Progress() as p:
        st = stage_monitor(cfg, model or cfg.wobble.models[0], _date(as_of) if as_of else None, summary, p.say)
    _finish(summary, cfg.outputs, as_json, _monitor_lines(st))
    if st["flagged"]:
        raise typer.Exit(1)


def _dask_address(given: str | None, cfg) -> str | None:
    """--dask, checked as the config's address is, else the config's `[dask] address`."""
    if given:
        from wobble.config import Dask

        try:
            return Dask(address=given).address
        except ValueError:
            raise WobbleError(f"--dask {given}: not a Dask scheduler address (e.g. tcp://10.0.0.5:8786)") from None
    return cfg.dask.address


def _reachable(address: str) -> None:
    """A one-line error, before any flow starts, when nothing listens at the scheduler's address."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(address)
    if where.scheme in ("tcp", "tls"):
        try:
            socket.create_connection((where.hostname, where.port or 8786), timeout=10).close()
        except OSError as exc:
            raise WobbleError(f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc}); "
                              "is `dask scheduler` running there?") from None


def _run_weekly_flow(config: Path, as_of: str | None, address: str, as_json: bool) -> None:
    """`wobble run` on a Dask cluster: flows/weekly.py's flow, whose summary it prints."""
    import importlib.util

    from wobble.config import project_dir

    _reachable(address)
    path = project_dir() / "flows" / "weekly.py"
    spec = importlib.util.spec_from_file_location("weekly", path)
    weekly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weekly)
    try:
        result = weekly.weekly(config=str(config.resolve()), as_of=as_of or "latest", dask=address,
                               return_state=True).result()
    except OSError as exc:  # the scheduler is unreachable, or went away
        raise WobbleError(f"Dask scheduler at {address}: {exc}; is `dask scheduler` running there?") from None
    summary = json.loads(Path(result["summary_path"]).read_text(encoding="utf-8"))
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    for line in [*_list_lines(result["publish"]), *_monitor_lines(result["monitor"]),
                 f"run summary: {result['summary_path']}"]:
        err.print(line, highlight=False, soft_wrap=True)
    if result["monitor"]["flagged"]:
        raise typer.Exit(1)


def _monitor_lines(st: dict) -> list[str]:
    head = {"act": "[bold red]needs a human look[/]", "watch": "[yellow]items to watch[/]",
            "ok": "[green]nothing crossed a threshold[/]"}[st["level"]]
    lines = [f"monitoring {st['model_name']} v{st['model_version']} at {st['as_of']}: {head}"]
    lines += [f"  {f['level']}: {f['what']}" for f in st["findings"]]
    lines.append(f"report: {st['report_html']}")
    return lines


@app.command()
@friendly
def schedule(config: ConfigOpt = Path("wobble.toml")) -> None:
    """Serve the scheduled flows (weekly lists Mondays 06:00, retrain each quarter) on a Prefect server."""
    import importlib.util
    import os

    from wobble.config import load_config, project_dir

    load_config(config)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        raise WobbleError("no Prefect server: start one with `prefect server start`, then set "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api and run `wobble schedule` again")
    import httpx

    try:
        httpx.get(f"{api.rstrip('/')}/health", timeout=10).raise_for_status()
    except httpx.HTTPError:
        raise WobbleError(f"cannot reach the Prefect server at {api}: is `prefect server start` running?") from None
    path = project_dir() / "flows" / "deploy.py"
    spec = importlib.util.spec_from_file_location("wobble_deploy", path)
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    err.print(f"serving wobble's schedules on {api} for {config.resolve()}; Ctrl-C stops serving and "
              "pauses the schedules until the next `wobble schedule`", highlight=False, soft_wrap=True)
    deploy.serve_all(str(config.resolve()))


@app.command()
@friendly
def demo(
    persons: Annotated[int, typer.Option(help="How many synthetic people.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    workdir: Annotated[Path, typer.Option(help="Folder for the world, warehouse and outputs.")] = Path("data/demo"),
    as_json: JsonOpt = False,
) -> None:
    """The whole pipeline on a synthetic population: synth → … → publish (marked as demo)."""
    from wobble.pipeline import run_demo
    from wobble.runs import RunSummary

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
        f"model card: {summary.data['outputs']['model_card']}",
        f"data-quality report: {summary.data['outputs'].get('quality_report')}",
        *_list_lines(summary.data["stages"]["publish"]),
    ]
    _finish(summary, cfg.outputs, as_json, lines)


# -- review page and huddle outcomes ----------------------------------------------------------

review_app = typer.Typer(help="The review page: serve it, and manage each team's access token.")
outcome_app = typer.Typer(help="Huddle outcomes: record a decision, or summarise them.")
app.add_typer(review_app, name="review")
app.add_typer(outcome_app, name="outcome")
ByOpt = Annotated[str, typer.Option("--by", help="Who does this, for the audit log (name and role).")]


@review_app.command("serve")
@friendly
def review_serve(
    host: Annotated[str, typer.Option(help="Address to listen on (keep 127.0.0.1 behind a TLS proxy).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    config: ConfigOpt = Path("wobble.toml"),
) -> None:
    """Serve the review page: teams read their list and record outcomes."""
    from wobble.config import load_config
    from wobble.review import serve

    cfg = load_config(config)
    err.print(f"review page on http://{host}:{port}/ (Ctrl+C to stop)", highlight=False, soft_wrap=True)
    serve(cfg, host=host, port=port)


@review_app.command("token")
@friendly
def review_token(
    team: Annotated[str, typer.Option(help="The team the token opens.")],
    by: ByOpt = "data team",
    config: ConfigOpt = Path("wobble.toml"),
) -> None:
    """Create an access token for one team; it is shown once and stored only as a hash."""
    from wobble.config import load_config
    from wobble.review import create_token

    token_id, token = create_token(load_config(config), team, created_by=by)
    sys.stdout.write(token + "\n")
    err.print(f"token {token_id} for team {team}: give it to the team privately; it is not shown again. "
              f"Revoke with `wobble review revoke --team {team}`.", highlight=False, soft_wrap=True)


@review_app.command("revoke")
@friendly
def review_revoke(
    team: Annotated[str, typer.Option(help="The team whose tokens to revoke.")],
    token_id: Annotated[str | None, typer.Option(help="Only this token (its id, as printed when made).")] = None,
    by: ByOpt = "data team",
    config: ConfigOpt = Path("wobble.toml"),
) -> None:
    """Revoke a team's access tokens (all of them, or one)."""
    from wobble.config import load_config
    from wobble.review import revoke_tokens

    n = revoke_tokens(load_config(config), team, revoked_by=by, token_id=token_id)
    err.print(f"revoked {n} token(s) for team {team}", highlight=False)


@outcome_app.command("record")
@friendly
def outcome_record(
    team: Annotated[str, typer.Option(help="The team whose list the person is on.")],
    person: Annotated[str, typer.Option(help="The person's pseudonym, as on the list.")],
    outcome: Annotated[str, typer.Option(help="discussed_no_action, already_supported, outreach_agreed, "
                                              "referred_on, not_a_concern, data_problem or deferred.")],
    by: Annotated[str, typer.Option(help="Who records it (name or role).")],
    note: Annotated[str, typer.Option(help="Optional short note; no NHS or phone numbers.")] = "",
    as_of: Annotated[str | None, typer.Option("--as-of", help="The list's date (default: the latest).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Record what the huddle decided for one person on a team's list."""
    from wobble.config import load_config
    from wobble.outcomes import record_outcome
    from wobble.warehouse import connect

    cfg = load_config(config)
    with connect(cfg.warehouse, wait_seconds=10) as con:
        result = record_outcome(con, team_id=team, person_id=person, outcome=outcome, note=note,
                                recorded_by=by, actor=f"{by.strip()} (command line)",
                                as_of=_date(as_of) if as_of else None)
    if as_json:
        sys.stdout.write(json.dumps(result.summary(), indent=2) + "\n")
    err.print(f"recorded: {outcome} for {person} on team {team}'s list of {result.as_of}", highlight=False,
              soft_wrap=True)


@outcome_app.command("summary")
@friendly
def outcome_summary(
    team: Annotated[str | None, typer.Option(help="One team (default: all).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="One list's date (default: all).")] = None,
    config: ConfigOpt = Path("wobble.toml"),
    as_json: JsonOpt = False,
) -> None:
    """Per list: people listed, how many were discussed, and the decisions by kind."""
    from rich.table import Table

    from wobble.config import load_config
    from wobble.outcomes import summarise
    from wobble.vocab import OUTCOME_LABELS
    from wobble.warehouse import connect

    cfg = load_config(config)
    with connect(cfg.warehouse, read_only=True) as con:
        rows = summarise(con, team_id=team, as_of=_date(as_of) if as_of else None)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title="Huddle outcomes per list")
    for col in ("team", "list of", "listed", "discussed", "share", "decisions"):
        table.add_column(col)
    for r in rows:
        share = "" if r["share_discussed"] is None else f"{100 * r['share_discussed']:.0f}%"
        kinds = ", ".join(f"{OUTCOME_LABELS[k]} {n}" for k, n in r["by_kind"].items())
        table.add_row(r["team_id"], r["as_of"], str(r["listed"]), str(r["discussed"]), share, kinds)
    Console().print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
