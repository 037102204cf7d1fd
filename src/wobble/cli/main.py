"""The `wobble` command line: one command per stage, `wobble run` for the weekly path, `wobble demo`.

Progress and messages go to stderr; `--json` prints the run summary on stdout. Input and
configuration problems print one line and exit non-zero; heavy libraries are imported inside
the commands that need them, so `wobble --help` stays fast.
"""

from __future__ import annotations

import functools
import getpass
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from wobble.core.errors import WobbleError, first_line

app = typer.Typer(
    name="wobble",
    help="Early warning for health and social care: short, explained lists for MDT discussion.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(help="Build feature snapshots, or list the feature catalogue.")
app.add_typer(features_app, name="features")
# Nothing wobble prints is Rich markup: a path, a setting such as [vault] or a value from the data
# prints as written (with markup, Rich took "[vault]" for a style and dropped it); colour comes from
# `Text` styles.
err = Console(stderr=True, markup=False)

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
            err.print(Text.assemble(("wobble: ", "bold red"), str(exc)), highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("wobble: interrupted")
            raise typer.Exit(130) from None
        except PermissionError as exc:  # the machine's set-up, not the input or a bug
            err.print(Text.assemble(("wobble: ", "bold red"), f"permission denied: {exc.filename or first_line(exc)}: "
                                    f"the user running wobble ({getpass.getuser()}) must be able to read the sources "
                                    "and lookups, and to write the warehouse, outputs and MLflow folders"),
                      highlight=False, soft_wrap=True)
            raise typer.Exit(NO_PERMISSION) from None
        except Exception as exc:
            # Out of memory is the machine, not a bug: say so in one line. (By name, so that
            # `wobble --help` need not import DuckDB.)
            if type(exc).__name__ != "OutOfMemoryException" or not type(exc).__module__.endswith("duckdb"):
                raise
            err.print(Text.assemble(("wobble: ", "bold red"), f"DuckDB ran out of memory ({first_line(exc)}). Give it "
                                    "more room (stop other jobs on this machine; for ingest, raise memory_limit under "
                                    "[ingest] in wobble.toml) and run it again."), highlight=False, soft_wrap=True)
            raise typer.Exit(OUT_OF_MEMORY) from None

    return wrapper


OUT_OF_MEMORY = 71  # EX_OSERR: the machine, not the input
NO_PERMISSION = 77  # EX_NOPERM


def _finish(summary, outputs_dir: Path, as_json: bool, lines: list[str | Text]) -> None:
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
    from wobble.core.config import load_config, pseudonym_key

    cfg = load_config(config)
    cfg.check_truth()  # before any work: a publish would otherwise go out ungraded, then fail
    return cfg, pseudonym_key




def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _list_lines(st: dict) -> list[str]:
    lines = [f"{len(st['lists'])} team lists at {st['as_of']}" + (" (DEMO)" if st.get("demo") else "")]
    lines += [f"  {t['team']}: {t['rows']} people" + (f" + {t['recent_crisis']} recently in crisis"
                                                       if t.get("recent_crisis") else "") + f"  {t['html']}"
              for t in st["lists"][:10]]
    if g := st.get("graded_by_truth"):
        c, t = g.get("capacity", {}), g["truth_ranked"]
        lines.append(f"graded by the synthetic truth: {_pct(c.get('rising'))} of the capacity part rising "
                     f"(truth-ranked list: {_pct(t['rising'])}), {_pct(c.get('in_crisis'))} in crisis, "
                     f"{_pct(c.get('crisis_contact_30d'))} with a crisis contact in the last 30 days")
    if (cov := st.get("coverage")) and cov.get("registered_adults"):
        lines.append(f"coverage: {cov['scored']:,} of {cov['registered_adults']:,} registered adults without an "
                     f"opt-out scored ({100 * cov['scored_share']:.1f}%), unaccounted {cov['unaccounted']:,}; "
                     f"not ranked by the model's cohort rules: {cov['not_ranked'].get('recent_crisis', 0):,} "
                     f"with a recent crisis (the lists' other part), {cov['not_ranked'].get('short_history', 0):,} "
                     f"registered under a year")
    if len(st["lists"]) > 10:
        lines.append(f"  … and {len(st['lists']) - 10} more in {Path(st['lists'][0]['html']).parent}")
    return lines


def _monitor_lines(st: dict) -> list[str | Text]:
    head = {"act": ("needs a human look", "bold red"), "watch": ("items to watch", "yellow"),
            "ok": ("nothing crossed a threshold", "green")}[st["level"]]
    version = f" v{st['model_version']}" if st.get("model_version") else ""
    lines: list[str | Text] = [Text.assemble(f"monitoring {st['model_name']}{version} at {st['as_of']}: ", head)]
    lines += [f"  {f['level']}: {f['what']}" for f in st["findings"]]
    if st.get("lists_in_period") == 0:  # the report says so too; without it, silence read as "all well"
        lines.append(f"  no list of this model was published since {st['lists_since']}: huddle outcomes "
                     "wait for one (wobble publish)")
    if st.get("report_html"):
        lines.append(f"report: {st['report_html']}")
    return lines


def _dask_address(given: str | None, cfg) -> str | None:
    """--dask, checked as the config's address is, else the config's `[dask] address`; either
    reachable (`_reachable`), so that a command fails at once rather than after its first stages."""
    address = cfg.dask.address
    if given:
        from wobble.core.config import Dask

        try:
            address = Dask(address=given).address
        except ValueError:
            raise WobbleError(f"--dask {given}: not a Dask scheduler address (e.g. tcp://10.0.0.5:8786)") from None
    if address:
        _reachable(address)
    return address


def _reachable(address: str) -> None:
    """A one-line error when nothing listens at the scheduler's address."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(address)
    if where.scheme in ("tcp", "tls"):
        try:
            socket.create_connection((where.hostname, where.port or 8786), timeout=10).close()
        except OSError as exc:
            raise WobbleError(f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc}); "
                              "is `dask scheduler` running there?") from None


def main() -> None:  # pragma: no cover - console entry point
    app()
