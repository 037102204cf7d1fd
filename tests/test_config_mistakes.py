"""An analyst's mistakes in wobble.toml and on the review commands: one line, a non-zero exit.

Each test is a finding of the red team's report (F6, F7, F9, F10, F12, F16, F17, F18, F19): before
the fix, the mistake was silently accepted, reported as a wobble bug, or ended in a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import typer
from conftest import TEST_KEY, run_wobble

from wobble.cli.main import NO_PERMISSION, friendly
from wobble.core.config import load_config, parse_config
from wobble.core.errors import ConfigError, WobbleError
from wobble.core.servicedb import LISTS, ServiceDB
from wobble.core.warehouse import connect
from wobble.lists.score import check_capacity_teams, score
from wobble.models.tracking import setup
from wobble.models.truth import truth_file
from wobble.review.tokens import create_token, db_of, revoke_tokens

ENV = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
CSV = {"kind": "csv", "table": "contacts", "system": "gp", "path": "a.csv",
       "columns": {"nhs_number": "N", "record_id": "I", "occurred_at": "W", "service": "S"}}


def _one_line_error(raw: dict, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as err:
        parse_config(raw, root=tmp_path)
    said = str(err.value)
    assert "\n" not in said
    return said


def _said(proc) -> str:
    """What a command printed on stderr, as one line, after checking it is one line and no traceback."""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


# F7 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("capacity", [0, -5, 501])
def test_a_teams_capacity_is_bounded_like_the_default(capacity, tmp_path):
    said = _one_line_error({"teams": {"capacity": {"T01": 20, "T02": capacity}}}, tmp_path)
    assert said.startswith("config teams.capacity.T02: Input should be")
    assert parse_config({"teams": {"capacity": {"T01": 1, "T02": 500}}}, root=tmp_path).teams.capacity_for("T02") == 500


# F6 ---------------------------------------------------------------------------------------------

def _warehouse_with_team(tmp_path: Path, capacity: dict[str, int]):
    cfg = parse_config({"paths": {"warehouse": "wh.duckdb"}, "teams": {"capacity": capacity}}, root=tmp_path)
    with connect(cfg.warehouse) as con:
        con.execute("INSERT INTO persons (person_id, birth_year, sex, team_id) VALUES ('p1', 1950, 'female', 'T01')")
    return cfg


def test_capacity_for_a_team_not_in_the_warehouse_is_refused_before_scoring(tmp_path):
    cfg = _warehouse_with_team(tmp_path, {"T01": 30, "T1": 40, "T9": 5})
    with pytest.raises(ConfigError) as err:
        score(cfg, model="early_warning_90d", version="1", as_of=date(2026, 11, 23))
    said = str(err.value)
    assert said == ("config teams.capacity: no teams 'T1', 'T9' in the warehouse (its teams: T01, unattached); "
                    "correct the name in wobble.toml, or remove it")


def test_capacity_for_known_teams_and_the_unattached_team_passes_the_check(tmp_path):
    cfg = _warehouse_with_team(tmp_path, {"T01": 30, "unattached": 5})
    with connect(cfg.warehouse, read_only=True) as con:
        check_capacity_teams(cfg, con)


# F12 --------------------------------------------------------------------------------------------

FHIR = {"kind": "fhir", "system": "ehr", "path": "x"}


@pytest.mark.parametrize("source, message", [
    ({**CSV, "values": {"service": {"APPT": "gp_appointments"}}},
     "sources.gp.values.service: code 'APPT' maps to 'gp_appointments', which is not a service of the data "
     "contract (expected one of: gp_appointment, "),
    ({**CSV, "defaults": {"status": "attend"}},
     "sources.gp.defaults.status: 'attend' is not a status of the data contract (expected one of: attended, "
     "did_not_attend, cancelled)"),
    ({**CSV, "table": "persons", "columns": {"nhs_number": "N", "sex": "S"}, "values": {"opted_out": {"Y": "yes"}}},
     "sources.gp.values.opted_out: code 'Y' maps to 'yes', which is not a opted_out of the data contract "
     "(expected one of: true, false"),
    ({**FHIR, "values": {"tag": {"X1": "low mood"}}},
     "sources.gp.values.tag: code 'X1' maps to 'low mood', which is not a tag of the data contract"),
])
def test_a_mapping_or_default_outside_the_contract_names_source_field_and_value(source, message, tmp_path):
    said = _one_line_error({"sources": {"gp": source}}, tmp_path)
    assert said.startswith(message)


def test_contract_values_and_blank_no_value_codes_are_accepted(tmp_path):
    cfg = parse_config({"sources": {"gp": {**CSV, "values": {"service": {"APPT": "gp_appointment", "X": ""}},
                                           "defaults": {"status": "attended", "mode": ""}}}}, root=tmp_path)
    assert cfg.sources["gp"].values["service"]["X"] == ""


def test_ingest_reports_the_mapping_not_a_wobble_bug(tmp_path):
    (tmp_path / "wobble.toml").write_text(
        '[sources.gp]\nkind = "csv"\ntable = "contacts"\nsystem = "gp"\npath = "a.csv"\n'
        '[sources.gp.columns]\nnhs_number = "N"\nrecord_id = "I"\noccurred_at = "W"\nservice = "S"\n'
        '[sources.gp.values.service]\n"APPT" = "gp_appointments"\n')
    proc = run_wobble("ingest", cwd=tmp_path, env=ENV)
    said = _said(proc)
    assert proc.returncode == 2 and "sources.gp.values.service: code 'APPT' maps to 'gp_appointments'" in said
    assert "please report" not in said


# F16 --------------------------------------------------------------------------------------------

GOOD_MEMORY = ["4GB", "4 GiB", "500MB", "500mb", "1.5GB", "4G", "80%", "100 %", "10TB"]


@pytest.mark.parametrize("limit", GOOD_MEMORY)
def test_memory_limits_duckdb_understands_are_accepted(limit, tmp_path):
    assert parse_config({"ingest": {"memory_limit": limit}}, root=tmp_path).ingest.memory_limit == limit
    duckdb.connect().execute(f"SET memory_limit = '{limit}'")  # and DuckDB agrees


@pytest.mark.parametrize("limit, message", [
    ("lots", "config ingest.memory_limit: 'lots' is not a memory size: give a number and a unit, e.g. \"4GB\""),
    ("4", "'4' is not a memory size"),
    ("", "'' is not a memory size"),
    ("4PB", "'4PB' is not a memory size"),
    ("-1", "'-1' is not a memory size"),
    ("150%", "'150%': a share of the machine's memory must be above 0% and at most 100%"),
    ("0%", "'0%': a share"),
    ("4MB", "'4MB' is too little for DuckDB to ingest anything: give at least 100MB"),
])
def test_a_memory_limit_duckdb_cannot_use_is_one_line(limit, message, tmp_path):
    assert message in _one_line_error({"ingest": {"memory_limit": limit}}, tmp_path)


def test_ingest_with_a_bad_memory_limit_is_one_line(tmp_path):
    (tmp_path / "wobble.toml").write_text('[ingest]\nmemory_limit = "lots"\n')
    proc = run_wobble("ingest", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2 and "config ingest.memory_limit: 'lots' is not a memory size" in _said(proc)


# F17 --------------------------------------------------------------------------------------------

def test_a_config_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert str(err.value) == (f"the config {tmp_path} is a folder, not a file: pass the file, e.g. --config "
                              f"{tmp_path / 'wobble.toml'} (there is no wobble.toml in it yet)")
    (tmp_path / "wobble.toml").write_text("")
    proc = run_wobble("ingest", "--config", ".", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2
    assert _said(proc) == f"wobble: the config . is a folder, not a file: pass the file, e.g. --config " \
                          f"{tmp_path / 'wobble.toml'}"


# F18 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("mysql://wobble:s3cret@db/wobble", "config review.database_url: 'mysql' databases are not supported: "
     "wobble's review service uses SQLite (sqlite:///path/to/review.sqlite) or PostgreSQL"),
    ("postgresql+asyncpg://wobble:s3cret@db/wobble",
     "config review.database_url: 'postgresql+asyncpg' databases are not supported"),
    ("review.sqlite", "config review.database_url: 'review.sqlite' is not a database URL: wobble's review service"),
])
def test_a_review_database_wobble_cannot_use_is_refused_in_the_config(url, message, tmp_path):
    said = _one_line_error({"review": {"database_url": url}}, tmp_path)
    assert said.startswith(message) and "s3cret" not in said


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgresql+psycopg://u@h/db", "sqlite:///r.sqlite"])
def test_supported_review_databases_are_accepted(url, tmp_path):
    assert parse_config({"review": {"database_url": url}}, root=tmp_path).review.database_url == url


@pytest.mark.parametrize("url, message", [
    ("mysql://wobble:s3cret@db/wobble", "review database mysql://…: wobble's review service uses SQLite"),
    ("postgresql+psycopg2://wobble:s3cret@db/wobble",
     "review database postgresql+psycopg2://…: cannot use it (No module named 'psycopg2'); wobble's review"),
    ("sqlite:r.sqlite", "review database 'sqlite:r.sqlite': wobble's review service uses SQLite"),
])
def test_the_review_database_itself_refuses_what_it_cannot_open(url, message):
    if "psycopg2" in url and importlib.util.find_spec("psycopg2"):
        pytest.skip("psycopg2 is installed here")
    with pytest.raises(WobbleError) as err:
        ServiceDB(url)
    said = str(err.value)
    assert said.startswith(message) and "s3cret" not in said and "\n" not in said


def test_review_commands_with_a_bad_database_url_are_one_line(tmp_path):
    (tmp_path / "wobble.toml").write_text('[review]\ndatabase_url = "mysql://wobble@db/wobble"\n')
    proc = run_wobble("review", "audit", "verify", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2 and "'mysql' databases are not supported" in _said(proc)


# F19 --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("port", ["99999", "0", "-1"])
def test_review_serve_refuses_a_port_out_of_range(port, tmp_path):
    proc = run_wobble("review", "serve", "--port", port, cwd=tmp_path, env=ENV)
    assert proc.returncode == 2
    assert _said(proc) == f"wobble: --port {port}: a port is a number from 1 to 65535 (default 8765)"


def test_review_serve_on_a_port_in_use_says_so_before_claiming_the_page_is_up(tmp_path):
    (tmp_path / "wobble.toml").write_text(f'[review]\ndatabase_url = "sqlite:///{tmp_path}/review.sqlite"\n')
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        proc = run_wobble("review", "serve", "--port", str(port), cwd=tmp_path, env=ENV)
    assert proc.returncode == 2
    assert _said(proc) == (f"wobble: cannot listen on 127.0.0.1:{port}: address already in use (is a review "
                           "page already running there? stop it, or pass another --port)")


def test_review_serve_on_a_host_not_of_this_machine_is_one_line(tmp_path):
    (tmp_path / "wobble.toml").write_text(f'[review]\ndatabase_url = "sqlite:///{tmp_path}/review.sqlite"\n')
    proc = run_wobble("review", "serve", "--host", "no-such-host.invalid", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2 and _said(proc).startswith("wobble: --host no-such-host.invalid: not an address")


# F9, F10: a review database with one published list (team T01) and nothing else -------------

@pytest.fixture
def review_cfg(tmp_path):
    (tmp_path / "wobble.toml").write_text(f'[review]\ndatabase_url = "sqlite:///{tmp_path}/review.sqlite"\n')
    cfg = load_config(tmp_path / "wobble.toml")
    with db_of(cfg).write() as conn:
        conn.execute(LISTS.insert().values(list_id="T01|2026-11-23|m|1", team_id="T01", as_of="2026-11-23",
                                           model_name="m", model_version="1", published_at="2026-11-23", header="{}"))
    return cfg


def _expiry(tmp_path: Path, token_id: str) -> timedelta:
    with sqlite3.connect(tmp_path / "review.sqlite") as con:
        (expires,), = con.execute("SELECT expires_at FROM service_tokens WHERE token_id = ?", [token_id])
    return datetime.fromisoformat(expires) - datetime.now(UTC)


@pytest.mark.parametrize("days", [0, -1, 367, 10**9])
def test_a_token_lasts_from_a_day_to_a_year(days, review_cfg):
    with pytest.raises(WobbleError) as err:
        create_token(review_cfg, "T01", created_by="test", days=days)
    assert str(err.value) == (f"--days {days}: a token lasts from 1 to 366 days (leave --days out for "
                              "[review] token_days, 180)")
    _, token = create_token(review_cfg, "T01", created_by="test", days=366)
    assert token


@pytest.mark.parametrize("days", [0, 367])
def test_the_configured_token_lifetime_is_bounded_too(days, tmp_path):
    said = _one_line_error({"review": {"token_days": days}}, tmp_path)
    assert said.startswith("config review.token_days: Input should be")


def test_days_left_out_is_the_default_and_one_day_is_one_day(review_cfg, tmp_path):
    default, _ = create_token(review_cfg, "T01", created_by="test")
    short, _ = create_token(review_cfg, "T01", created_by="test", days=1)
    assert timedelta(days=179) < _expiry(tmp_path, default) <= timedelta(days=180)
    assert timedelta(hours=23) < _expiry(tmp_path, short) <= timedelta(days=1)


def test_the_token_command_refuses_zero_days(review_cfg, tmp_path):
    proc = run_wobble("review", "token", "--team", "T01", "--days", "0", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2 and "--days 0: a token lasts from 1 to 366 days" in _said(proc)
    assert proc.stdout == ""  # no token printed


def test_revoking_nothing_says_so_and_revokes_nothing(review_cfg):
    made, _ = create_token(review_cfg, "T01", created_by="test")
    with pytest.raises(WobbleError) as err:
        revoke_tokens(review_cfg, "T01", revoked_by="test", token_id="deadbeef", must_match=True)
    assert str(err.value) == (f"nothing revoked: team T01 has no token 'deadbeef' left to revoke "
                              f"(its tokens not yet revoked: {made})")
    with pytest.raises(WobbleError) as err:
        revoke_tokens(review_cfg, "T1", revoked_by="test", must_match=True)
    assert str(err.value) == "nothing revoked: no team 'T1' has tokens or a published list (teams: T01)"
    assert revoke_tokens(review_cfg, "T01", revoked_by="test", must_match=True) == 1  # the real one still lived
    with pytest.raises(WobbleError, match="team T01 has no tokens left to revoke"):
        revoke_tokens(review_cfg, "T01", revoked_by="test", must_match=True)
    # the review page's own form (must_match off) keeps answering a count
    assert revoke_tokens(review_cfg, "T01", revoked_by="test", token_id=made) == 0


@pytest.mark.parametrize("args, message", [
    (["--team", "T01", "--token-id", "deadbeef"], "nothing revoked: team T01 has no token 'deadbeef'"),
    (["--team", "T1"], "nothing revoked: no team 'T1' has tokens or a published list (teams: T01)"),
])
def test_the_revoke_command_fails_when_nothing_matched(args, message, review_cfg, tmp_path):
    create_token(review_cfg, "T01", created_by="test")
    proc = run_wobble("review", "revoke", *args, cwd=tmp_path, env=ENV)
    assert proc.returncode == 2 and message in _said(proc)


# F8 ---------------------------------------------------------------------------------------------

def test_a_truth_folder_that_does_not_exist_is_refused_not_ignored(tmp_path):
    cfg = parse_config({"paths": {"truth": "world/truht"}}, root=tmp_path)
    with pytest.raises(ConfigError, match=r"paths.truth: .*world/truht is not a folder"):
        truth_file(cfg, "need.parquet")
    (tmp_path / "world" / "truth").mkdir(parents=True)
    cfg = parse_config({"paths": {"truth": "world/truth"}}, root=tmp_path)
    assert truth_file(cfg, "need.parquet") is None  # an older world without that file: not graded
    (tmp_path / "world" / "truth" / "need.parquet").write_bytes(b"")
    assert truth_file(cfg, "need.parquet") == tmp_path / "world" / "truth" / "need.parquet"
    assert truth_file(parse_config({}, root=tmp_path), "need.parquet") is None  # real data: no truth


def test_publish_with_a_misspelt_truth_folder_stops_before_any_work(tmp_path):
    (tmp_path / "wobble.toml").write_text('[paths]\ntruth = "world/truht"\nwarehouse = "wh.duckdb"\n')
    proc = run_wobble("publish", "--as-of", "2026-11-23", cwd=tmp_path, env=ENV)
    assert proc.returncode == 2
    assert _said(proc).startswith("wobble: paths.truth: ") and "world/truht is not a folder" in proc.stderr
    assert not (tmp_path / "wh.duckdb").exists()


# Permissions (probed as a user other than root: a file or folder the user may not read or write)

def test_a_permission_denied_is_one_line_naming_the_path(capsys):
    @friendly
    def reads_a_lookup():
        raise PermissionError(13, "Permission denied", "/srv/extracts/lookups/lsoa_imd.csv")

    with pytest.raises(typer.Exit) as stop:
        reads_a_lookup()
    assert stop.value.exit_code == NO_PERMISSION == 77
    said = capsys.readouterr().err.strip()
    assert "Traceback" not in said and len(said.splitlines()) == 1
    assert said.startswith("wobble: permission denied: /srv/extracts/lookups/lsoa_imd.csv: the user running wobble (")


def test_an_mlflow_store_the_user_cannot_write_is_refused_at_once(tmp_path, monkeypatch):
    """MLflow retries a store it cannot open for about two minutes before a traceback."""
    cfg = parse_config({"paths": {"mlflow": "mlflow"}}, root=tmp_path)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(WobbleError, match=r"cannot open the MLflow store .*mlflow\.db \(permission denied\): the "
                                          "user running wobble must be able to write that folder"):
        setup(cfg)
