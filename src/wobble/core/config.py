"""`wobble.toml`: one file that says where data lives, which sources to read and which teams exist.

Paths in the file are relative to the file's own folder. Unknown keys are errors, and every
error names the block and key that is wrong, e.g. ``sources.gp_appointments.columns.occurred_at``.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wobble.core.calendar import is_monday
from wobble.core.errors import ConfigError
from wobble.core.vocab import CONTRACT_VALUES

DEFAULT_CONFIG = "wobble.toml"

# Contract fields each kind of source may map, and those it must map.
SOURCE_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "persons": (
        (
            "nhs_number", "birth_year", "birth_date", "sex", "ethnicity_group", "imd_decile",
            "lsoa", "postcode", "practice_id", "team_id", "opted_out", "died_on", "registered_on",
            "forename", "surname",  # identity only: read into the vault, never the warehouse
        ),
        ("nhs_number", "sex"),
    ),
    "contacts": (
        (
            "nhs_number", "record_id", "occurred_at", "recorded_at", "service", "status",
            "mode", "professional",
        ),
        ("nhs_number", "record_id", "occurred_at", "service"),
    ),
    "tags": (
        ("nhs_number", "record_id", "recorded_at", "tag", "author_role"),
        ("nhs_number", "record_id", "recorded_at", "tag"),
    ),
}

MAX_TOKEN_DAYS = 366  # the longest a review token may last: a lost token is a team's list, so it must lapse


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# The feature families and model specs wobble ships (the project's `features/` and `models/`).
PACKAGED_FEATURES = Path(__file__).resolve().parents[1] / "features" / "families"
PACKAGED_MODELS = Path(__file__).resolve().parents[1] / "models" / "specs"


class Paths(_Strict):
    warehouse: Path = Path("data/warehouse.duckdb")
    mlflow: Path = Path("data/mlflow")
    outputs: Path = Path("data/outputs")
    truth: Path | None = None
    features: Path | None = None  # a folder of feature family YAML; default: the packaged ones
    models: Path | None = None  # a folder of model spec YAML; default: the packaged ones


# Unicode's white space (what Python's str.isspace() matches: all of it below U+3001) and the
# zero-width space and byte-order mark: what spreadsheets and web pages leave around a code ("Seen\u00a0").
CODE_SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\u200b\ufeff"


def code_key(code: str) -> str:
    """A source's code as matched when it is not mapped exactly: without surrounding white space,
    in lower case ("Seen\u00a0" and "seen" are both "seen")."""
    return code.strip(CODE_SPACES).lower()


# Fields a FHIR source may give value mappings for (FHIR code → contract value). Keys are a
# code, or "system|code" to tell apart the same code in two code systems.
FHIR_VALUE_FIELDS = ("service", "status", "mode", "tag", "sex", "ethnicity_group", "author_role")


class Source(_Strict):
    """One extract: a file (or glob of files) from one system, mapped to the contract.

    Tabular sources (csv, parquet) feed one contract table through a column mapping. A FHIR
    source is a Bulk Data `$export` folder of NDJSON files and feeds persons, contacts and tags
    at once; its `values` extend the built-in FHIR code maps (see `wobble/fhir_maps.toml`).
    """

    kind: Literal["csv", "parquet", "fhir"]
    table: Literal["persons", "contacts", "tags"] | None = None
    system: str
    path: str
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    # utf-8, latin-1 (ISO-8859-1), or cp1252 / windows-1252: Windows and Excel's "ANSI" text, with
    # curly quotes and € (bytes 0x80-0x9F), read through a UTF-8 copy made for the run
    encoding: Literal["utf-8", "latin-1", "cp1252", "windows-1252"] = "utf-8"
    timestamp_format: str | None = None
    date_format: str | None = None
    # per-field strptime formats (occurred_at = "%d/%m/%Y %H:%M"); the two above are the defaults
    formats: dict[str, str] = Field(default_factory=dict)
    timezone: str = "Europe/London"
    columns: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    defaults: dict[str, str] = Field(default_factory=dict)
    max_line_bytes: int = Field(default=1 << 20, ge=1024)

    def check(self, name: str) -> None:
        if self.kind == "fhir":
            for key in ("table", "columns", "defaults", "formats"):
                if getattr(self, key):
                    raise ConfigError(f"sources.{name}.{key}: not used by a FHIR source; remove it")
            for field in self.values:
                if field not in FHIR_VALUE_FIELDS:
                    raise ConfigError(
                        f"sources.{name}.values: '{field}' cannot be mapped for FHIR "
                        f"(expected one of: {', '.join(FHIR_VALUE_FIELDS)})"
                    )
            self._check_contract_values(name)
            return
        if self.table is None:
            raise ConfigError(f"sources.{name}.table: missing (persons, contacts or tags)")
        allowed, required = SOURCE_FIELDS[self.table]
        for field in list(self.columns) + list(self.values) + list(self.defaults):
            if field not in allowed:
                raise ConfigError(
                    f"sources.{name}: '{field}' is not a field of the {self.table} contract "
                    f"(expected one of: {', '.join(allowed)})"
                )
        self._check_value_keys(name)
        self._check_contract_values(name)
        for field in self.formats:
            if field not in self.columns:
                raise ConfigError(f"sources.{name}.formats.{field}: not a mapped column of this source "
                                  f"(mapped: {', '.join(self.columns)})")
        for field in required:
            if field not in self.columns and field not in self.defaults:
                raise ConfigError(f"sources.{name}.columns: missing required field '{field}'")
        if "nhs_number" not in self.columns:
            raise ConfigError(f"sources.{name}.columns: nhs_number must name a column (it has no default)")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"sources.{name}.timezone: unknown time zone {self.timezone!r}") from None

    def _check_contract_values(self, name: str) -> None:
        """Every value a code maps to, and every default, of a coded field is one of the contract's:
        found only at ingest, one mapped wrongly would fail every file of the source."""
        def outside(field: str, value: str) -> str | None:
            """The contract's values for `field`, listed, when `value` is not one of them."""
            allowed = CONTRACT_VALUES.get(field)
            return ", ".join(allowed) if allowed is not None and value not in ("", *allowed) else None

        for field, mapping in self.values.items():
            for code, value in mapping.items():
                if expected := outside(field, value):
                    raise ConfigError(f"sources.{name}.values.{field}: code {code!r} maps to {value!r}, which is not "
                                      f"a {field} of the data contract (expected one of: {expected}; or \"\" for "
                                      "no value)")
        for field, value in self.defaults.items():
            if expected := outside(field, value):
                raise ConfigError(f"sources.{name}.defaults.{field}: {value!r} is not a {field} of the data "
                                  f"contract (expected one of: {expected})")

    def _check_value_keys(self, name: str) -> None:
        """Codes match their mapping ignoring case and surrounding white space (`code_key`), so two
        keys that differ only so must mean the same; else which one a third spelling meant is a guess."""
        for field, mapping in self.values.items():
            seen: dict[str, str] = {}
            for code, value in mapping.items():
                other = seen.setdefault(code_key(code), code)
                if mapping[other] != value:
                    raise ConfigError(
                        f"sources.{name}.values.{field}: {other!r} and {code!r} differ only by case or spaces but "
                        f"map to {mapping[other]!r} and {value!r}; codes are matched ignoring both, so give them "
                        "one value or remove one"
                    )


class Lookups(_Strict):
    """Optional CSV lookups. The opt-out list holds NHS numbers (a column named nhs_number, else
    the first column) of people with a national data opt-out; it is read on every run."""

    lsoa_imd: str | None = None
    practice_team: str | None = None
    lsoa_team: str | None = None  # LSOA → team, for people whose practice gives no team
    postcode_lsoa: str | None = None
    opt_outs: str | None = None


# DuckDB's memory sizes: a number and a unit (KB, MB, GB, TB: powers of 1000; KiB ... TiB: of
# 1024; K, M, G, T as the first four), any case, spaces allowed; or a share of the machine's memory.
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt])(i?b)?\s*$", re.IGNORECASE)
_MEMORY_SHARE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*$")
MIN_MEMORY = 100 * 1000**2  # bytes: below this DuckDB runs out of memory before ingest starts


def memory_bytes(size: str) -> float | None:
    """The bytes a DuckDB memory size means ("4GB": 4e9, "4 GiB": 4 * 1024**3); None for a share
    ("80%") or a size DuckDB would not understand."""
    m = _MEMORY.match(size)
    if not m:
        return None
    base = 1024 if m.group(3) and m.group(3).lower() == "ib" else 1000
    return float(m.group(1)) * base ** ("kmgt".index(m.group(2).lower()) + 1)


class Ingest(_Strict):
    """How hard ingest may work: DuckDB's memory limit and threads (default: all cores)."""

    memory_limit: str = "4GB"
    threads: int | None = Field(default=None, ge=1)
    wait_seconds: float = Field(default=0.0, ge=0)
    # a fixed clock ("2026-03-02T09:00"): dates after it are impossible; default the wall clock
    now: datetime | None = None

    @field_validator("memory_limit")
    @classmethod
    def _memory(cls, v: str) -> str:
        # checked here: DuckDB's own error would come as a traceback, after ingest has started
        share = _MEMORY_SHARE.match(v)
        if share:
            if not 0 < float(share.group(1)) <= 100:
                raise ValueError(f"{v!r}: a share of the machine's memory must be above 0% and at most 100%")
            return v
        size = memory_bytes(v)
        if size is None:
            raise ValueError(f"{v!r} is not a memory size: give a number and a unit, e.g. \"4GB\", \"500MB\", "
                             "\"4 GiB\", or a share of the machine's memory, e.g. \"80%\"")
        if size < MIN_MEMORY:
            raise ValueError(f"{v!r} is too little for DuckDB to ingest anything: give at least 100MB (default 4GB)")
        return v


class Teams(_Strict):
    default_capacity: int = Field(default=25, ge=1, le=500)
    # per team, bounded as the default is; a team must exist in the data (`lists.score.check_capacity_teams`:
    # the config cannot know the teams, which come from the register and the practice lookup)
    capacity: dict[str, Annotated[int, Field(ge=1, le=500)]] = Field(default_factory=dict)
    # people whose team cannot be found (no practice, a practice in no team, no LSOA rule) are kept
    # in this team, whose list goes to `unattached_owner`
    unattached: str = Field(default="unattached", min_length=1)
    unattached_owner: str | None = None

    def capacity_for(self, team_id: str) -> int:
        return self.capacity.get(team_id, self.default_capacity)


class Settings(_Strict):
    name: str = "wobble"
    pseudonym_key_env: str = "WOBBLE_PSEUDONYM_KEY"
    small_number_threshold: int = Field(default=7, ge=1)
    seed: int = 7
    as_of: date | None = None
    demo: bool = False
    # the models lists come from, first is the default: early warning (rising need before crisis);
    # crisis_90d, today's crisis-now ranking, stays available to train and compare
    models: list[str] = Field(default_factory=lambda: ["early_warning_90d"])

    @field_validator("as_of")
    @classmethod
    def _monday(cls, v: date | None) -> date | None:
        if v is not None and not is_monday(v):
            raise ValueError(f"{v} is not a Monday; as-of dates are Mondays")
        return v


class Monitor(_Strict):
    """When `wobble monitor` asks for a human look: 'watch' is reported, 'act' also fails the run."""

    psi_watch: float = Field(default=0.1, gt=0)    # population stability index: a shift to watch
    psi_act: float = Field(default=0.25, gt=0)     # ... a shift to act on
    auroc_drop: float = Field(default=0.05, gt=0, lt=0.5)  # matured AUROC this far below the card's, beyond chance
    calibration_slope: tuple[float, float] = (0.8, 1.25)   # matured slope outside this range
    min_crises: int = Field(default=20, ge=1)      # fewer matured crises: reported, not judged
    fail_on: Literal["act", "watch"] = "act"       # the level that makes `wobble monitor` exit 1

    @model_validator(mode="after")
    def _ordered(self) -> Monitor:
        if self.psi_watch >= self.psi_act:
            raise ValueError(f"psi_watch ({self.psi_watch}) must be below psi_act ({self.psi_act})")
        lo, hi = self.calibration_slope
        if not 0 < lo < 1 < hi:
            raise ValueError("calibration_slope must be [low, high] with 0 < low < 1 < high")
        return self


class Dask(_Strict):
    """Scale-out (README, "Scaling out on Dask"): a Dask scheduler every flow may send work to.

    Without an address everything runs on this machine and nothing of Dask is imported.
    `partitions` must be a folder every worker can read and write (shared storage).
    """

    address: str | None = None  # e.g. "tcp://10.0.0.5:8786"
    partitions: Path = Path("data/partitions")
    buckets: int = Field(default=16, ge=1, le=4096)  # person buckets: one feature task each

    @field_validator("address")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(tcp|tls|inproc|ucx)://\S+$", v):
            raise ValueError(f"{v!r} is not a Dask scheduler address (e.g. tcp://10.0.0.5:8786)")
        return v or None


class VaultSettings(_Strict):
    """The identity vault (`wobble.core.vault`): where it lives and where its key comes from.

    The key is an environment variable, else a key file with mode 0600; never in this file.
    """

    path: Path = Path("data/vault/identities.vault")
    key_env: str = "WOBBLE_VAULT_KEY"
    key_file: Path | None = None


ROLES = ("team_member", "clinician", "team_lead", "auditor", "analyst")


class LocalUser(_Strict):
    """A user's wobble role and teams, kept here rather than in the identity provider's claims."""

    role: Literal["team_member", "clinician", "team_lead", "auditor", "analyst"]
    teams: list[str] = Field(default_factory=list)
    name: str | None = None


class SignIn(_Strict):
    """Individual sign-in with OpenID Connect (NHS CIS2, Entra ID, Keycloak): README, "Sign-in".

    The client secret comes from the environment variable `client_secret_env`, never this file.
    Role and teams come from `users` (by the ID token's `sub`) when the user is listed there, else
    from the claims `role_claim` and `team_claim` (a dotted path; lists are flattened), their
    values translated by `role_map` and `team_map` (values not in a map are used as they are).
    """

    issuer: str
    client_id: str
    client_secret_env: str = "WOBBLE_OIDC_CLIENT_SECRET"
    redirect_url: str
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile"])
    token_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "PS256", "ES256"])
    name_claim: str = "name"
    role_claim: str | None = None
    team_claim: str | None = None
    role_map: dict[str, str] = Field(default_factory=dict)
    team_map: dict[str, str] = Field(default_factory=dict)
    users: dict[str, LocalUser] = Field(default_factory=dict)
    leeway_seconds: int = Field(default=60, ge=0, le=300)

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://\S+$", v):
            raise ValueError(f"{v!r} is not a URL")
        return v

    @field_validator("role_map")
    @classmethod
    def _roles(cls, v: dict[str, str]) -> dict[str, str]:
        for claim, role in v.items():
            if role not in ROLES:
                raise ValueError(f"role_map.{claim}: {role!r} is not a wobble role ({', '.join(ROLES)})")
        return v


# the engines and drivers `core.servicedb` is written for (psycopg's libpq options, SQLite's pragmas)
DATABASE_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")
DATABASE_URLS = ("wobble's review service uses SQLite (sqlite:///path/to/review.sqlite) or PostgreSQL "
                 "(postgresql+psycopg://user@host/db)")


class Review(_Strict):
    """The review service (README, "Deploying the review service"): its own database, and its limits.

    `database_url`: SQLAlchemy URL; default a SQLite file beside the warehouse (`review.sqlite`, WAL);
    a trust's deployment uses PostgreSQL (`postgresql+psycopg://user@host/db`). `public_origin`: the
    scheme, host and port browsers use (`https://huddle.example.nhs.uk`), for the Origin check behind
    a proxy that rewrites Host.
    """

    database_url: str | None = None
    public_origin: str | None = None
    max_body_bytes: int = Field(default=16_384, ge=1024, le=10_000_000)
    session_idle_minutes: int = Field(default=30, ge=1)
    session_hours: int = Field(default=12, ge=1)         # absolute: a session ends this long after sign-in
    token_days: int = Field(default=180, ge=1, le=MAX_TOKEN_DAYS)  # a team or machine token expires after this
    requests_per_minute: int = Field(default=300, ge=1)  # per source address
    sign_in_failures: int = Field(default=5, ge=1)       # this many failures from one address ...
    lockout_minutes: int = Field(default=15, ge=1)       # ... lock sign-in from it this long
    busy_seconds: float = Field(default=2.0, gt=0, le=30)  # wait this long for a write, then answer 503

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: str | None) -> str | None:
        if v is None:
            return v
        m = re.match(r"^([A-Za-z][\w+.-]*)://", v)
        if not m:  # not a URL (a bare path, most likely): shown, as it holds no password
            raise ValueError(f"{v!r} is not a database URL: {DATABASE_URLS}")
        if m.group(1) not in DATABASE_SCHEMES:
            # only the scheme is shown: the rest may hold a password
            raise ValueError(f"{m.group(1)!r} databases are not supported: {DATABASE_URLS}")
        return v

    @field_validator("public_origin")
    @classmethod
    def _origin(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+$", v):
            raise ValueError(f"{v!r} is not an origin (scheme://host[:port], no path), e.g. https://huddle.example")
        return v


class Config(_Strict):
    """The parsed `wobble.toml`, with paths made absolute against `root`."""

    root: Path
    wobble: Settings = Settings()
    paths: Paths = Paths()
    sources: dict[str, Source] = Field(default_factory=dict)
    lookups: Lookups = Lookups()
    ingest: Ingest = Ingest()
    teams: Teams = Teams()
    monitor: Monitor = Monitor()
    dask: Dask = Dask()
    vault: VaultSettings | None = None  # no [vault] block: no identities are kept at all
    sign_in: SignIn | None = None  # no [sign_in] block: team tokens only, nobody can reveal identities
    review: Review = Review()

    def path(self, p: Path | str) -> Path:
        p = Path(p)
        return p if p.is_absolute() else (self.root / p)

    @property
    def warehouse(self) -> Path:
        return self.path(self.paths.warehouse)

    @property
    def review_database(self) -> str:
        """The review service's database URL: `[review] database_url`, else SQLite beside the warehouse."""
        return self.review.database_url or f"sqlite:///{self.warehouse.parent / 'review.sqlite'}"

    @property
    def mlflow_dir(self) -> Path:
        return self.path(self.paths.mlflow)

    @property
    def outputs(self) -> Path:
        return self.path(self.paths.outputs)

    @property
    def truth(self) -> Path | None:
        return self.path(self.paths.truth) if self.paths.truth else None

    def check_truth(self) -> None:
        """Refuse a `paths.truth` naming no folder (misspelt, or the world moved): its lists would
        otherwise go out silently ungraded, as on real data, which has no truth."""
        if self.truth and not self.truth.is_dir():
            raise ConfigError(f"paths.truth: {self.truth} is not a folder; give the synthetic world's truth "
                              "folder (written by `wobble synth`), or leave paths.truth out for real data")

    @property
    def partitions_dir(self) -> Path:
        return self.path(self.dask.partitions)

    @property
    def features_dir(self) -> Path:
        """The feature families to build: `paths.features`, else the packaged catalogue."""
        return self.path(self.paths.features) if self.paths.features else PACKAGED_FEATURES

    @property
    def models_dir(self) -> Path:
        """The model specs: `paths.models`, else the packaged ones."""
        return self.path(self.paths.models) if self.paths.models else PACKAGED_MODELS


def _loc(err: dict[str, Any]) -> str:
    return ".".join(str(p) for p in err["loc"])


def load_config(path: Path | str = DEFAULT_CONFIG) -> Config:
    """Read and validate `wobble.toml`; raise ConfigError naming the block and key at fault."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"no config file at {path}: pass --config, or run `wobble demo` to create one"
        )
    if path.is_dir():
        inside = path.resolve() / DEFAULT_CONFIG
        raise ConfigError(f"the config {path} is a folder, not a file: pass the file, e.g. --config {inside}"
                          + ("" if inside.is_file() else f" (there is no {DEFAULT_CONFIG} in it yet)"))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    except OSError as exc:  # unreadable (permissions), or gone since the check above
        raise ConfigError(f"cannot read the config {path}: {exc.strerror or exc}") from None
    return parse_config(raw, root=path.resolve().parent)


def parse_config(raw: dict[str, Any], *, root: Path) -> Config:
    """Validate a config mapping (as read from TOML) against the schema."""
    try:
        cfg = Config(root=root, **raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _loc(first)
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        elif first["type"] == "value_error":  # our own validators' words, without pydantic's "Value error, "
            msg = str(first["ctx"]["error"])
        raise ConfigError(f"config {where}: {msg}") from None
    for name, source in cfg.sources.items():
        source.check(name)
    return cfg


def with_fhir_folder(folder: Path | str, base: Config | None = None) -> tuple[Config, str]:
    """The config for `wobble ingest --fhir DIR`, and the name of its one FHIR source.

    With a config, the folder becomes (or replaces) its FHIR source and keeps that source's
    system and code maps; without one, everything is a default and the warehouse and outputs
    go under ./data/ (relative to the working folder).
    """
    folder = Path(folder).resolve()
    if not (glob.glob(str(folder)) if glob.has_magic(str(folder)) else folder.exists()):
        raise ConfigError(f"--fhir: no folder or file at {folder}")
    cfg = base or Config(root=Path.cwd().resolve())
    name, template = next(((n, s) for n, s in cfg.sources.items() if s.kind == "fhir"), ("fhir", None))
    source = Source(kind="fhir", system=template.system if template else "fhir", path=str(folder),
                    values=template.values if template else {})
    return cfg.model_copy(update={"sources": {**cfg.sources, name: source}}), name


def pseudonym_key(cfg: Config) -> bytes:
    """The HMAC key from the environment; refuses to go on without one."""
    var = cfg.wobble.pseudonym_key_env
    key = os.environ.get(var, "")
    if len(key) < 16:
        raise ConfigError(
            f"environment variable {var} must hold the pseudonymisation key (at least 16 "
            "characters); it is not set or too short. Ask your data controller for the key."
        )
    return key.encode("utf-8")
