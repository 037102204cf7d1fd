"""The identity vault's build: the register's identity columns → `wobble.core.vault`, never the warehouse.

Reads every configured register file (a `persons` source, or a FHIR export's Patient file) once
more at the end of each ingest, and keeps, per person registered in the warehouse and not opted
out, the identity fields the source maps: `nhs_number`, `forename`, `surname`, `birth_date`,
`postcode`. The last line for a person wins, as when the register loads. The rows go from DuckDB
straight to Python and into the encrypted vault; they are never written to a warehouse table.
The vault is rebuilt whole when anything it is built from has changed, so a person who opts out,
or leaves the register, is gone from it after the next ingest.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import duckdb

from wobble.core.errors import WobbleError, first_line
from wobble.core.vault import IDENTITY_FIELDS, Vault, VaultError, vault_path, write_vault
from wobble.ingest.plan import display_path, drop_temp, open_input, plan_files
from wobble.ingest.reader import field_text, field_timestamp, fingerprint, known_hash
from wobble.ingest.state import RunState
from wobble.ingest.validate import first_pass, ids_join


def build_vault(run: RunState, vault_key: bytes) -> dict:
    """Rebuild the identity vault from the register files; returns its path, people and sources.

    When a register file cannot be read (ingest reports it as failed), the vault is left as it
    was rather than rebuilt without that file's people, and the result says so. When the vault
    opens with this key and was built from the same inputs (`_inputs`), it is left as it is
    (`unchanged`): at 5,000,000 people a rebuild took about 160 s, most weeks to write the same
    identities again.
    """
    cfg, con = run.cfg, run.con
    people: dict[str, str] = {}
    read: list[str] = []
    path = vault_path(cfg)
    registers = [f for f in plan_files(cfg, list(cfg.sources)) if f.path is not None and
                 (f.source.table == "persons" or (f.source.kind == "fhir" and f.fhir_type == "Patient"))]
    prints = {}  # files read for their hash here, kept for the build below rather than read again
    try:  # an unchanged file's hash is known without reading it again (`known_hash`)
        shas = {}
        for f in registers:
            shas[f.path] = known_hash(con, f.path)
            if shas[f.path] is None:
                prints[f.path] = fingerprint(f.path)
                shas[f.path] = prints[f.path].sha256
    except OSError:
        shas = {}  # the file is named below, where it fails to open
    inputs = _inputs(con, registers, shas) if len(shas) == len(registers) else ""
    built = _built_from(path, vault_key)
    if inputs and built.get("inputs") == inputs:
        return {"path": display_path(cfg, path), "people": int(built["people"]),
                "register_files": int(built["register_files"]), "unchanged": True}
    for f in registers:
        try:
            inp = open_input(con, cfg, f, prints.get(f.path) or fingerprint(f.path))
            if inp.table != "persons" or "nhs_number" not in inp.fields:
                continue
            first_pass(run, inp, [], None)
            people.update(_identities(run, inp))  # later files win, as later lines do
            read.append(f.shown(cfg))
        except (OSError, WobbleError, duckdb.Error) as exc:
            why = first_line(exc) if isinstance(exc, duckdb.Error) else str(exc)
            return {"path": display_path(cfg, path), "people": None, "register_files": len(read),
                    "kept_previous": True, "error": f"{f.shown(cfg)}: {why}"}
        finally:
            drop_temp(con)
    keep = {r[0] for r in con.execute(f"SELECT person_id FROM persons WHERE {_KEPT}").fetchall()}
    n = write_vault(path, vault_key, sorted(kv for kv in people.items() if kv[0] in keep),
                    source=", ".join(read), inputs=inputs, register_files=len(read))
    return {"path": display_path(cfg, path), "people": n, "register_files": len(read)}


_KEPT = "NOT opted_out AND person_id NOT IN (SELECT person_id FROM opt_out_ids)"  # whom the vault holds


def _inputs(con, registers: list, shas: dict) -> str:
    """A digest of everything a build reads: each register file's bytes and its source's settings
    (a changed column mapping changes the identities), who is kept (registered, not opted out:
    their pseudonyms' hashes, summed), the identity fields and this module's code (which lays the
    identities out), so that an upgrade that lays them out anew builds again."""
    h = hashlib.sha256(json.dumps([IDENTITY_FIELDS, version("wobble")]).encode() + Path(__file__).read_bytes())
    for f in registers:
        h.update(f"{shas[f.path]} {f.fhir_type} {f.source.model_dump_json()}".encode())
    # fetchall: DuckDB 2.0 leaves a partly fetched result holding the connection (see `scalar`)
    n, total = con.execute(f"SELECT count(*), coalesce(sum(hash(person_id)::HUGEINT), 0)::VARCHAR "
                           f"FROM persons WHERE {_KEPT}").fetchall()[0]
    h.update(f"{n} {total}".encode())
    return h.hexdigest()


def _built_from(path, key: bytes) -> dict:
    """The vault's record of its build (`inputs`, `people`, `register_files`), or {} when there is
    none, it does not open with `key` (a new key: build again) or it predates the record."""
    try:
        meta = Vault(path, key).meta
    except VaultError:
        return {}
    return meta if {"inputs", "people", "register_files"} <= meta.keys() else {}


def _identities(run: RunState, inp) -> list[tuple[str, str]]:
    """(person_id, identity as JSON) for each valid registered row of the file, the last line per
    person. DuckDB builds the JSON object (`Identity.to_json`'s layout), so no Python runs per row."""
    birth = (f"strftime(({field_timestamp('birth_date', inp, inp.date_format)})::DATE, '%Y-%m-%d')"
             if "birth_date" in inp.fields else "NULL")
    cols = {"nhs_number": "ids.nhs", "forename": field_text("forename", inp), "surname": field_text("surname", inp),
            "birth_date": birth, "postcode": f"upper({field_text('postcode', inp)})"}
    struct = ", ".join(f"'{name}': ({cols[name]})::VARCHAR" for name in IDENTITY_FIELDS)
    return run.con.execute(f"""
        SELECT ids.person_id, to_json({{{struct}}})::VARCHAR FROM {inp.relation} r {ids_join(inp)}
        WHERE ids.status = 0 AND ids.person_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY ids.person_id ORDER BY r._ord DESC) = 1""").fetchall()
