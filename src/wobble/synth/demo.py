"""The demo: the `wobble.toml` for a synthetic world, and the key it runs with when none is given."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

from wobble.core.vault import new_key_file
from wobble.synth.population import ETHNIC_CODES
from wobble.synth.sources import CODES, SOURCES
from wobble.synth.world import WORLD_START, WORLD_WEEKS


def _toml_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def demo_config(world: str = "world", *, seed: int = 7, capacity: int = 20) -> str:
    """The `wobble.toml` text for a synthetic world written under `<config folder>/<world>`."""
    extract = (WORLD_START + timedelta(weeks=WORLD_WEEKS)).isoformat()
    lines = [
        "# wobble configuration for the built-in synthetic world (written by `wobble demo`).",
        "# Paths are relative to this file. See README.md, 'Configuring sources'.",
        "[wobble]",
        'name = "wobble demo (synthetic population)"',
        "demo = true",
        f"seed = {seed}",
        f'as_of = "{extract}"',
        'pseudonym_key_env = "WOBBLE_PSEUDONYM_KEY"',
        "small_number_threshold = 7",
        "",
        "[paths]",
        'warehouse = "warehouse.duckdb"',
        'mlflow = "mlflow"',
        'outputs = "outputs"',
        f'truth = "{world}/truth"  # synthetic worlds only: used to grade models, never to train',
        "",
        "[lookups]",
        f'lsoa_imd = "{world}/raw/lookups/lsoa_imd.csv"',
        f'practice_team = "{world}/raw/lookups/practice_team.csv"',
        "",
        "[teams]",
        f"default_capacity = {capacity}",
        "",
        "[vault]  # the identity vault: NHS number, name, date of birth, postcode, encrypted",
        'path = "vault/identities.vault"',
        'key_env = "WOBBLE_VAULT_KEY"',
        'key_file = ".wobble_vault_key"  # used when WOBBLE_VAULT_KEY is not set; mode 0600',
        "",
    ]
    eth_values = {code: group for group, codes in ETHNIC_CODES.items() for code in codes}
    eth_values["Z"] = "Not stated"
    for name, table, system, kind, path, formats, columns in SOURCES:
        lines += [f"[sources.{name}]", f'kind = "{kind}"', f'table = "{table}"',
                  f'system = "{system}"', f'path = "{world}/raw/{path}"']
        lines += [f"{k} = {_toml_str(v)}" for k, v in formats.items()]
        if table == "contacts" and system == "acute":
            lines += ["defaults = { status = \"attended\" }"]
        lines += ["", f"[sources.{name}.columns]"]
        lines += [f"{k} = {_toml_str(v)}" for k, v in columns.items()]
        values: dict[str, dict[str, str]] = {}
        if table == "persons":
            values = {"sex": {"F": "female", "M": "male"}, "ethnicity_group": eth_values,
                      "opted_out": {"Y": "true", "N": "false"}}
        else:
            kinds = ("service", "status", "mode") if table == "contacts" else ("tag", "author_role")
            values = {k: CODES[system][k] for k in kinds if k in CODES[system]}
        for field_name, mapping in values.items():
            lines += ["", f"[sources.{name}.values.{field_name}]"]
            lines += [f"{_toml_str(k)} = {_toml_str(v)}" for k, v in mapping.items()]
        lines.append("")
    return "\n".join(lines)


def demo_vault_key(workdir: Path, env_var: str) -> str | None:
    """Make the demo's vault key file (random, mode 0600) unless the key is in the environment or
    the file exists; returns a sentence saying so when it was made."""
    path = workdir / ".wobble_vault_key"
    if os.environ.get(env_var) or path.exists():
        return None
    new_key_file(path)
    return f"{env_var} is not set: made a random identity vault key in {path} (mode 0600)"


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


