"""The review page and huddle outcomes: `wobble review …` and `wobble outcome …`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from wobble.cli.main import (
    ConfigOpt,
    JsonOpt,
    _date,
    app,
    err,
    friendly,
)

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
    from wobble.core.config import load_config
    from wobble.review.app import serve

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
    from wobble.core.config import load_config
    from wobble.review.tokens import create_token

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
    from wobble.core.config import load_config
    from wobble.review.tokens import revoke_tokens

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
    from wobble.core.config import load_config
    from wobble.core.warehouse import connect
    from wobble.lists.outcomes import record_outcome

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

    from wobble.core.config import load_config
    from wobble.core.vocab import OUTCOME_LABELS
    from wobble.core.warehouse import connect
    from wobble.lists.outcomes import summarise

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


