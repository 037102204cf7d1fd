"""The identity vault: `wobble vault keygen` makes a key file, `wobble vault check` opens the vault."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from wobble.cli.main import ConfigOpt, app, err, friendly

vault_app = typer.Typer(help="The identity vault: make its key, check that it opens.")
app.add_typer(vault_app, name="vault")


@vault_app.command("keygen")
@friendly
def vault_keygen(path: Annotated[Path, typer.Argument(help="Where to write the new key (must not exist).")]) -> None:
    """Write a new random vault key to a file only its owner may read (mode 0600)."""
    from wobble.core.errors import WobbleError
    from wobble.core.vault import new_key_file

    try:
        new_key_file(path)
    except FileExistsError:
        raise WobbleError(f"{path} exists: a vault key is never overwritten (move it away first)") from None
    err.print(f"vault key written to {path} (mode 0600); set [vault] key_file to it, and keep a copy "
              "where the data controller keeps keys", highlight=False, soft_wrap=True)


@vault_app.command("check")
@friendly
def vault_check(config: ConfigOpt = Path("wobble.toml")) -> None:
    """Open the vault with its key and say how many people it holds and when it was built (no identities)."""
    from wobble.core.config import load_config
    from wobble.core.vault import open_vault

    vault = open_vault(load_config(config))
    sys.stdout.write(json.dumps({"path": str(vault.path), **vault.meta, "people": len(vault)}) + "\n")
