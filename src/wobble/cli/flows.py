"""Commands that run Prefect flows: `wobble schedule`, and `wobble run` on a Dask cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
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
    err,
    friendly,
)
from wobble.core.errors import WobbleError


def _run_weekly_flow(config: Path, as_of: str | None, address: str, as_json: bool) -> None:
    """`wobble run` on a Dask cluster: flows/weekly.py's flow, whose summary it prints."""
    from wobble.flows import weekly

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



@app.command()
@friendly
def schedule(config: ConfigOpt = Path("wobble.toml")) -> None:
    """Serve the scheduled flows (weekly lists Mondays 06:00, retrain each quarter) on a Prefect server."""
    import os

    from wobble.core.config import load_config

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
    from wobble.flows import deploy

    err.print(f"serving wobble's schedules on {api} for {config.resolve()}; Ctrl-C stops serving and "
              "pauses the schedules until the next `wobble schedule`", highlight=False, soft_wrap=True)
    deploy.serve_all(str(config.resolve()))


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
    from wobble.core.runs import RunSummary
    from wobble.ops.pipeline import run_weekly

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
    lines: list[str | Text] = [*_list_lines(st["publish"]), *_monitor_lines(st["monitor"])]
    _finish(summary, cfg.outputs, as_json, lines)
    if summary.data["flagged"]:
        raise typer.Exit(1)
