"""The identity vault: who each pseudonym is, encrypted, kept apart from the analytics warehouse.

Ingest writes it (`wobble.ingest.identity`); the review service reads it, only to show a
clinician who is on their own team's list. One SQLite file, one row per person:

- `identities(person_id, sealed)`: `sealed` is a 12-byte random nonce followed by the AES-256-GCM
  encryption of the person's identity (JSON: NHS number, forename, surname, date of birth,
  postcode), with the `person_id` as associated data, so a row moved onto another pseudonym no
  longer opens;
- `meta`: the format, a random HKDF salt, a check value (a known text sealed with the key, so a
  wrong key is told apart from a damaged file) and when and from what it was built.

The AES key is HKDF-SHA256 of the vault key and the vault's salt. The vault key is not the
pseudonym key: it comes from an environment variable (`[vault] key_env`, default
`WOBBLE_VAULT_KEY`) or from a key file only its owner may read (`[vault] key_file`, mode 0600).
Without it the file is pseudonyms and random bytes. Nonces are random, so two builds of the same
register differ byte for byte (deterministic nonces under one key would leak); what they hold
does not.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from wobble.core.config import Config
from wobble.core.errors import ConfigError, WobbleError

FORMAT = "wobble-vault-1"
_CHECK = b"wobble identity vault: key check"
_INFO = b"wobble identity vault v1"
MIN_KEY_CHARS = 32


class VaultError(WobbleError):
    """The vault is missing, damaged, or the key does not open it."""


@dataclass(frozen=True)
class Identity:
    """Who a pseudonym is. Fields the register does not carry are None."""

    nhs_number: str | None = None
    forename: str | None = None
    surname: str | None = None
    birth_date: str | None = None  # ISO date
    postcode: str | None = None

    @property
    def name(self) -> str:
        return " ".join(p for p in (self.forename, self.surname) if p) or "(no name on the register)"

    @property
    def nhs_number_spaced(self) -> str:
        """The NHS number as people read it: 943 476 5919."""
        n = self.nhs_number or ""
        return f"{n[:3]} {n[3:6]} {n[6:]}" if len(n) == 10 else (n or "(none)")

    def to_json(self) -> str:
        """The identity as the vault seals it: a JSON object of `IDENTITY_FIELDS` (ingest builds the
        same object in DuckDB, a whole register file at once)."""
        return json.dumps(asdict(self), separators=(",", ":"))


IDENTITY_FIELDS = tuple(Identity.__dataclass_fields__)


def vault_key(cfg: Config) -> bytes:
    """The vault key from `[vault] key_env`, else `[vault] key_file`; one clear line if neither will do."""
    if cfg.vault is None:
        raise ConfigError("no [vault] block in the config: the identity vault is not configured")
    var = cfg.vault.key_env
    raw = os.environ.get(var, "")
    where = f"environment variable {var}"
    if not raw and cfg.vault.key_file:
        path = cfg.path(cfg.vault.key_file)
        where = f"vault.key_file {path}"
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ConfigError(f"{where}: no such file (create one with `wobble vault keygen {path}`)") from None
        if st.st_mode & 0o077:
            raise ConfigError(f"{where} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                              f"run: chmod 600 {path}")
        raw = path.read_text(encoding="utf-8").strip()
    if not raw:
        raise ConfigError(f"no identity vault key: set {var} or [vault] key_file (a file with mode 0600)")
    if len(raw) < MIN_KEY_CHARS:
        raise ConfigError(f"{where}: the vault key must be at least {MIN_KEY_CHARS} characters")
    pseudonym = os.environ.get(cfg.wobble.pseudonym_key_env, "")
    if pseudonym and secrets.compare_digest(pseudonym.encode(), raw.encode()):
        raise ConfigError(f"{where}: the vault key must differ from the pseudonym key ({cfg.wobble.pseudonym_key_env})")
    return raw.encode("utf-8")


def new_key_file(path: Path) -> Path:
    """Write a new random vault key to `path` (mode 0600, created only if absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secrets.token_urlsafe(48) + "\n")
    return path


def _aead(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(key))


def _seal(aead, plain: bytes, aad: bytes, nonce: bytes | None = None) -> bytes:
    nonce = nonce or os.urandom(12)
    return nonce + aead.encrypt(nonce, plain, aad)


def write_vault(path: Path, key: bytes, people: Iterable[tuple[str, str]], *, source: str = "",
                inputs: str = "", register_files: int = 0) -> int:
    """Build the vault at `path` from (person_id, identity as JSON: `Identity.to_json`) pairs:
    written beside it, then renamed over it, so a reader sees the old vault or the new one, never
    half of one. `source` (the files), `inputs` (a digest of what it was built from) and
    `register_files` are recorded with it. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    salt = os.urandom(16)
    aead = _aead(key, salt)
    n = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # owner-only from the start
    os.close(fd)
    try:
        con = sqlite3.connect(tmp)
        try:
            con.execute("PRAGMA journal_mode = OFF")
            con.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB)")
            con.execute("CREATE TABLE identities (person_id TEXT PRIMARY KEY, sealed BLOB NOT NULL) WITHOUT ROWID")
            for batch in _batches(iter(people), 10_000):
                nonces = os.urandom(12 * len(batch))  # one system call per batch, not per person
                con.executemany("INSERT INTO identities VALUES (?, ?)", [
                    (pid, _seal(aead, text.encode(), pid.encode(), nonces[12 * i:12 * i + 12]))
                    for i, (pid, text) in enumerate(batch)])
                n += len(batch)
            meta = {"format": FORMAT.encode(), "salt": salt, "check": _seal(aead, _CHECK, b"check"),
                    "built_at": datetime.now(UTC).isoformat(timespec="seconds").encode(),
                    "source": source.encode(), "people": str(n).encode(), "inputs": inputs.encode(),
                    "register_files": str(register_files).encode()}
            con.executemany("INSERT INTO meta VALUES (?, ?)", list(meta.items()))
            con.commit()
        finally:
            con.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def _batches(rows: Iterator, size: int) -> Iterator[list]:
    batch = []
    for r in rows:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Vault:
    """An opened vault: `lookup` decrypts only the people asked for."""

    def __init__(self, path: Path, key: bytes):
        self.path = Path(path)
        if not self.path.exists():
            raise VaultError(f"no identity vault at {self.path}: run `wobble ingest` with a [vault] block")
        try:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            meta = dict(con.execute("SELECT k, v FROM meta").fetchall())
            con.close()
        except sqlite3.Error:
            raise VaultError(f"{self.path} is not an identity vault (or it is damaged)") from None
        if meta.get("format") != FORMAT.encode():
            raise VaultError(f"{self.path} is not a {FORMAT} identity vault")
        self._aead = _aead(key, meta["salt"])
        self.meta = {k: v.decode() for k, v in meta.items()
                     if k in ("built_at", "source", "people", "inputs", "register_files")}
        check = meta["check"]
        try:
            ok = self._aead.decrypt(check[:12], check[12:], b"check") == _CHECK
        except InvalidTag:
            ok = False
        if not ok:
            raise VaultError("the identity vault key does not open this vault (wrong WOBBLE_VAULT_KEY or key file?)")

    def lookup(self, person_ids: Iterable[str]) -> dict[str, Identity]:
        """Identity for each pseudonym held; pseudonyms not in the vault (opted out, unknown) are absent."""
        ids = list(dict.fromkeys(person_ids))
        out: dict[str, Identity] = {}
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for pid, sealed in con.execute(
                        f"SELECT person_id, sealed FROM identities WHERE person_id IN ({marks})", chunk):
                    try:
                        plain = self._aead.decrypt(sealed[:12], sealed[12:], pid.encode())
                    except InvalidTag:
                        raise VaultError(f"the vault row for {pid} does not open: it was altered") from None
                    out[pid] = Identity(**json.loads(plain))
        finally:
            con.close()
        return out

    def __len__(self) -> int:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT count(*) FROM identities").fetchone()[0])
        finally:
            con.close()


def vault_path(cfg: Config) -> Path:
    if cfg.vault is None:
        raise ConfigError("no [vault] block in the config: the identity vault is not configured")
    return cfg.path(cfg.vault.path)


def open_vault(cfg: Config) -> Vault:
    """The configured vault, opened with its key (read-only)."""
    return Vault(vault_path(cfg), vault_key(cfg))
