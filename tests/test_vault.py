"""The identity vault: encrypted with its own key, built at ingest from the register, without the
people who opted out; unreadable, and telling, without the key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import TEST_KEY, TEST_VAULT_KEY, copy_tree

from wobble.core.config import load_config, parse_config
from wobble.core.errors import ConfigError
from wobble.core.vault import Identity, Vault, VaultError, new_key_file, open_vault, vault_key, write_vault

PEOPLE = [("a1b2c3d4e5f60718", Identity("9434765919", "Morgan", "Okafor", "1942-07-21", "ZZ90 1AB")),
          ("0f1e2d3c4b5a6978", Identity("9000000009", "Priya", "Evans", None, None))]


def _sealable(people: list[tuple[str, Identity]]) -> list[tuple[str, str]]:
    return [(p, i.to_json()) for p, i in people]


def _cfg(tmp_path: Path, **vault) -> object:
    return parse_config({"vault": {"path": "v/identities.vault", **vault}}, root=tmp_path)


def test_round_trip_and_only_who_is_asked_for(tmp_path):
    path = tmp_path / "v.vault"
    assert write_vault(path, TEST_VAULT_KEY.encode(), _sealable(PEOPLE)) == 2
    v = Vault(path, TEST_VAULT_KEY.encode())
    got = v.lookup(["a1b2c3d4e5f60718", "ffffffffffffffff"])
    assert got == {"a1b2c3d4e5f60718": PEOPLE[0][1]}
    assert got["a1b2c3d4e5f60718"].name == "Morgan Okafor"
    assert got["a1b2c3d4e5f60718"].nhs_number_spaced == "943 476 5919"
    assert len(v) == 2
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_the_file_is_unreadable_without_the_key(tmp_path):
    path = tmp_path / "v.vault"
    write_vault(path, TEST_VAULT_KEY.encode(), _sealable(PEOPLE))
    raw = path.read_bytes()
    for secret in (b"9434765919", b"943 476 5919", b"Okafor", b"Morgan", b"ZZ90 1AB", b"1942-07-21", b"nhs_number"):
        assert secret not in raw, secret
    with pytest.raises(VaultError, match="key does not open this vault"):
        Vault(path, b"another-key-of-the-right-length-0123456789")
    # the pseudonym key does not open it either
    with pytest.raises(VaultError, match="key does not open"):
        Vault(path, TEST_KEY.encode())


def test_a_row_moved_onto_another_pseudonym_or_altered_does_not_open(tmp_path):
    path = tmp_path / "v.vault"
    write_vault(path, TEST_VAULT_KEY.encode(), _sealable(PEOPLE))
    with sqlite3.connect(path) as db:
        (sealed,) = db.execute("SELECT sealed FROM identities WHERE person_id = 'a1b2c3d4e5f60718'").fetchone()
        db.execute("UPDATE identities SET sealed = ? WHERE person_id = '0f1e2d3c4b5a6978'", [sealed])
    with pytest.raises(VaultError, match="0f1e2d3c4b5a6978 does not open"):
        Vault(path, TEST_VAULT_KEY.encode()).lookup(["0f1e2d3c4b5a6978"])


def test_a_rebuild_replaces_the_vault_whole(tmp_path):
    path = tmp_path / "v.vault"
    write_vault(path, TEST_VAULT_KEY.encode(), _sealable(PEOPLE))
    write_vault(path, TEST_VAULT_KEY.encode(), _sealable(PEOPLE[1:]))
    assert set(Vault(path, TEST_VAULT_KEY.encode()).lookup([p for p, _ in PEOPLE])) == {"0f1e2d3c4b5a6978"}
    assert [p.name for p in tmp_path.iterdir()] == ["v.vault"]  # no temporary file left


def test_key_from_the_environment_or_an_owner_only_file(tmp_path, monkeypatch):
    monkeypatch.delenv("WOBBLE_VAULT_KEY")
    cfg = _cfg(tmp_path, key_file="vault.key")
    with pytest.raises(ConfigError, match="no such file"):
        vault_key(cfg)
    key_file = new_key_file(tmp_path / "vault.key")
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert vault_key(cfg) == key_file.read_text().strip().encode()
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by group or others \(mode 0644\); run: chmod 600"):
        vault_key(cfg)
    with pytest.raises(ConfigError, match="no identity vault key: set WOBBLE_VAULT_KEY"):
        vault_key(_cfg(tmp_path))
    monkeypatch.setenv("WOBBLE_VAULT_KEY", "short")
    with pytest.raises(ConfigError, match="at least 32 characters"):
        vault_key(cfg)
    monkeypatch.setenv("WOBBLE_VAULT_KEY", "x" * 40)
    monkeypatch.setenv("WOBBLE_PSEUDONYM_KEY", "x" * 40)
    with pytest.raises(ConfigError, match="must differ from the pseudonym key"):
        vault_key(cfg)


def test_the_command_line_says_so_in_one_line(tiny_world, tmp_path):
    from conftest import run_wobble

    work = copy_tree(tiny_world, tmp_path / "w")
    proc = run_wobble("ingest", "--config", str(work / "wobble.toml"),
                      env={"WOBBLE_PSEUDONYM_KEY": TEST_KEY, "WOBBLE_VAULT_KEY": ""})
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wobble:")]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr
    assert ".wobble_vault_key: no such file (create one with `wobble vault keygen" in errors[0]


def _register(world: Path) -> pl.DataFrame:
    return pl.read_csv(world / "raw/gp/registrations.csv", infer_schema=False).with_columns(
        pl.col("NHSNumber").str.replace_all(" ", ""))


def test_ingest_builds_it_from_the_register_without_opted_out_people(tiny_world, tmp_path):
    from wobble.ingest import ingest
    from wobble.ingest.identifiers import pseudonymise

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    vault = open_vault(cfg)
    reg = _register(work / "world")
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        kept = {r[0] for r in con.execute("SELECT person_id FROM persons WHERE NOT opted_out").fetchall()}
        out = {r[0] for r in con.execute("SELECT person_id FROM persons WHERE opted_out").fetchall()}
    assert len(vault) == len(kept) > 2500 and out
    held = vault.lookup(kept | out)
    assert set(held) == kept  # nobody who opted out
    row = reg.filter(pl.col("NationalOptOut") == "N").row(0, named=True)
    who = held[pseudonymise(TEST_KEY.encode(), row["NHSNumber"])]
    assert (who.nhs_number, who.forename, who.surname, who.postcode) == (
        row["NHSNumber"], row["Forename"], row["Surname"], row["Postcode"])
    d, m, y = row["DateOfBirth"].split("/")
    assert who.birth_date == f"{y}-{m}-{d}"
    # every kept person, field by field, against the register's last line for them
    last = reg.filter(pl.col("NationalOptOut") == "N").unique("NHSNumber", keep="last", maintain_order=True)
    expect = {pseudonymise(TEST_KEY.encode(), r["NHSNumber"]): (r["NHSNumber"], r["Forename"], r["Surname"],
                                                                r["Postcode"]) for r in last.iter_rows(named=True)}
    got = {p: (i.nhs_number, i.forename, i.surname, i.postcode) for p, i in held.items()}
    assert got == {p: v for p, v in expect.items() if p in kept}

    # Someone joins the opt-out list: gone from the vault at the next ingest (nothing new to load).
    (work / "opt_outs.csv").write_text(f"nhs_number\n{row['NHSNumber']}\n")
    text = (work / "wobble.toml").read_text().replace("[lookups]", '[lookups]\nopt_outs = "opt_outs.csv"', 1)
    (work / "wobble.toml").write_text(text)
    cfg = load_config(work / "wobble.toml")
    result = ingest(cfg, key=TEST_KEY.encode(), report=False)
    assert result.vault["people"] == len(kept) - 1 and result.summary()["rows_in"] == 0
    assert pseudonymise(TEST_KEY.encode(), row["NHSNumber"]) not in open_vault(cfg).lookup(kept)


def test_a_stolen_warehouse_and_vault_without_the_key_reveal_nothing(tiny_world, tmp_path):
    """Everything an attacker takes from disk (warehouse, vault, config), scanned for every NHS
    number and name on the register: none is there; and the vault will not open without its key."""
    from ingest_kit import scan_for

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    reg = _register(work / "world")
    numbers = set(reg["NHSNumber"].to_list())
    names = tuple(sorted({f"{f} {s}" for f, s in zip(reg["Forename"], reg["Surname"], strict=True)}))
    stolen = [cfg.warehouse, cfg.path(cfg.vault.path), work / "wobble.toml"]
    assert scan_for(stolen, numbers, also=names) == {}
    # the scan can find them: the register itself is full of both
    assert scan_for([work / "world/raw/gp/registrations.csv"], numbers, also=names)
    with pytest.raises(VaultError):
        Vault(cfg.path(cfg.vault.path), b"guess-" * 8)


def test_an_unreadable_register_leaves_the_vault_as_it_was(tiny_world, tmp_path):
    from wobble.ingest import ingest

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    before = cfg.path(cfg.vault.path).read_bytes()
    register = work / "world/raw/gp/registrations.csv"
    register.unlink()  # (the world is linked: replace the link, not the shared file)
    register.write_bytes(b"\x00\x01binary\xff" * 100)
    result = ingest(cfg, key=TEST_KEY.encode(), report=False)
    assert result.summary()["files_failed"] == 1
    assert result.vault["kept_previous"] and "registrations.csv" in result.vault["error"]
    assert cfg.path(cfg.vault.path).read_bytes() == before


def test_an_ingest_with_nothing_new_leaves_the_vault_as_it_is_until_what_it_is_built_from_changes(
        tiny_world, tmp_path, monkeypatch):
    from wobble.ingest import ingest

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    path = cfg.path(cfg.vault.path)

    def again() -> dict:
        result = ingest(cfg, key=TEST_KEY.encode(), report=False)
        assert result.summary()["rows_in"] == 0  # nothing new to load, each time
        return result.vault

    first = again()  # records what it was built from
    built = path.read_bytes()
    second = again()
    assert second == {**first, "unchanged": True} and first["people"] > 2500
    assert path.read_bytes() == built  # not written again

    # someone joins the opt-out list: built again without them
    before = open_vault(cfg).meta
    reg = _register(work / "world").filter(pl.col("NationalOptOut") == "N")
    (work / "opt_outs.csv").write_text(f"nhs_number\n{reg['NHSNumber'][0]}\n")
    text = (work / "wobble.toml").read_text().replace("[lookups]", '[lookups]\nopt_outs = "opt_outs.csv"', 1)
    (work / "wobble.toml").write_text(text)
    cfg = load_config(work / "wobble.toml")
    third = again()
    assert "unchanged" not in third and third["people"] == first["people"] - 1
    assert open_vault(cfg).meta["built_at"] >= before["built_at"] and path.read_bytes() != built

    # a new vault key: built again, and it opens with the new key only
    assert again()["unchanged"]
    monkeypatch.setenv("WOBBLE_VAULT_KEY", "another-vault-key-0123456789abcdef0123456789ab")
    fourth = again()
    assert "unchanged" not in fourth and fourth["people"] == third["people"]
    assert len(open_vault(load_config(work / "wobble.toml"))) == third["people"]
    with pytest.raises(VaultError):
        Vault(path, TEST_VAULT_KEY.encode())
