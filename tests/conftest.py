"""Shared fixtures: synthetic worlds built once per session, and a pseudonymisation key."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "test-key-0123456789abcdef"
TEST_VAULT_KEY = "test-vault-key-0123456789abcdef-not-the-pseudonym-key"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
# the identity vault's key (the demo config has a [vault] block); session fixtures ingest too
os.environ.setdefault("WOBBLE_VAULT_KEY", TEST_VAULT_KEY)


# Tests that need one of these worlds (a 10,000- or 20,000-person demo, a Prefect server) are `slow`: `make
# test-fast` (-m "not slow") leaves them out; `make test` and CI run everything.
SLOW_FIXTURES = {"world20k", "ingested", "demo_run", "monitor_world", "drifted_world", "published_copy", "monitored",
                 "prefect_harness", "harness", "prefect_server", "twice"}
# ... and these, each over 15 s on two cores (`--durations`): many generated worlds, several trainings, worker pools.
SLOW_TESTS = {"test_compiled_sql_matches_the_slow_reference",
              "test_records_known_only_after_the_as_of_date_change_nothing",
              "test_snapshots_for_many_dates_equal_snapshots_one_date_at_a_time",
              "test_worker_processes_do_not_change_the_world",
              "test_buckets_rebuild_the_single_machine_snapshots_and_a_missing_bucket_is_an_error",
              "test_escalation_trains_evaluates_and_gets_a_card_through_the_same_code",
              "test_dates_parse_as_python_reads_them_or_are_quarantined",
              "test_any_file_fails_in_one_line_or_reconciles",
              "test_where_services_see_less_of_need_the_list_still_holds_people_whose_need_is_rising",
              "test_a_world_on_other_dates_trains_with_the_shipped_specs"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("WOBBLE_PSEUDONYM_KEY", TEST_KEY)


@pytest.fixture(scope="session")
def world20k(tmp_path_factory) -> Path:
    """A 20,000-person world (four teams): big enough for the calibration checks."""
    from wobble.synth import synth

    out = tmp_path_factory.mktemp("world20k")
    synth(persons=20_000, seed=7, out=out)
    return out


@pytest.fixture(scope="session")
def world2k(tmp_path_factory) -> Path:
    """A 2,000-person world (one team): quick to make, for tests that need a whole world."""
    from wobble.synth import synth

    out = tmp_path_factory.mktemp("world2k")
    synth(persons=2000, seed=3, out=out)
    return out


@pytest.fixture(scope="session")
def fhir2k(world2k, tmp_path_factory) -> tuple[Path, dict]:
    """`world2k` written as a FHIR Bulk Data export (read only): (folder, counts per file)."""
    from wobble.synth.fhir import write_fhir_export

    out = tmp_path_factory.mktemp("fhir2k")
    return out, write_fhir_export(world2k, out)


@pytest.fixture(scope="session")
def ingested(tmp_path_factory, world20k):
    """The 20k world with its demo config, ingested once: (config, ingest result)."""
    from wobble.core.config import load_config
    from wobble.ingest import ingest
    from wobble.synth import demo_config

    work = tmp_path_factory.mktemp("ingested")
    (work / "world").symlink_to(world20k)
    (work / "wobble.toml").write_text(demo_config("world"))
    cfg = load_config(work / "wobble.toml")
    result = ingest(cfg, key=TEST_KEY.encode())
    return cfg, result


def run_wobble(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    e = {**os.environ, **(env or {})}
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "wobble", *args], capture_output=True, text=True,
                          env=e, cwd=cwd or ROOT, timeout=900)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`wobble demo` at a small size (two teams), run once: (workdir, completed process)."""
    work = tmp_path_factory.mktemp("demo")
    env = {"WOBBLE_PSEUDONYM_KEY": TEST_KEY}
    proc = run_wobble("demo", "--persons", "10000", "--seed", "11", "--workdir", str(work), "--json",
                      env=env)
    return work, proc


SQLITE_SIDE_FILES = ("*.sqlite-wal", "*.sqlite-shm", "*.sqlite-journal", "*.db-wal", "*.db-shm", "*.db-journal")


def copy_tree(src: Path, dst: Path) -> Path:
    """A copy of the folder `src` at `dst`. SQLite databases (the review store, MLflow's) are copied through
    SQLite's backup, so a copy is whole even while a process of an earlier test still has one open
    (file by file, a write-ahead log could change or vanish between reading it and the database)."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(*SQLITE_SIDE_FILES))
    for db in (*src.rglob("*.sqlite"), *src.rglob("*.db")):
        if db.is_file() and not db.is_symlink():
            with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(dst / db.relative_to(src))) as copy:
                source.backup(copy)
    return dst


def remove(path: Path) -> None:
    """Remove what a module's fixture made once its tests are done: the suite's scratch stays a few
    hundred MB rather than growing with every module (a CI machine's disk is not ours to size)."""
    shutil.rmtree(path, ignore_errors=True)


def load_script(path: Path):
    """A module from a file outside the package (flows/, scripts/), its folder importable."""
    import importlib.util

    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def copy_demo(src: Path, dst: Path) -> Path:
    """A writable copy of a demo workdir (warehouse, MLflow store, outputs, config); the world is linked."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("warehouse.duckdb", "wobble.toml"):
        shutil.copy2(src / name, dst / name)
    for name in ("mlflow", "outputs"):
        shutil.copytree(src / name, dst / name)
    (dst / "world").symlink_to((src / "world").resolve())
    return dst / "wobble.toml"


@pytest.fixture(scope="session")
def monitor_world(demo_run, tmp_path_factory):
    """The small demo, copied, with a list 13 weeks back (its horizon has passed) and synthetic
    huddle outcomes for it: (config path, the matured as-of date)."""
    from datetime import timedelta

    from wobble.core.calendar import as_of_for
    from wobble.core.config import load_config
    from wobble.lists.publish import publish
    from wobble.models.approve import champion

    config = copy_demo(demo_run[0], tmp_path_factory.mktemp("monitor_world"))
    cfg = load_config(config)
    matured = as_of_for(cfg, None) - timedelta(weeks=13)
    model = cfg.wobble.models[0]
    publish(cfg, model=model, version=champion(cfg, model), as_of=matured)
    load_script(ROOT / "scripts" / "drift_scenario.py").record_outcomes(cfg, matured)
    return config, matured


@pytest.fixture(scope="session")
def drifted_world(monitor_world, tmp_path_factory) -> Path:
    """monitor_world copied again, with scripts/drift_scenario.py's injected drift: its config path."""
    from wobble.core.calendar import as_of_for
    from wobble.core.config import load_config

    config = copy_demo(monitor_world[0].parent, tmp_path_factory.mktemp("drifted_world"))
    cfg = load_config(config)
    load_script(ROOT / "scripts" / "drift_scenario.py").inject_drift(cfg, as_of_for(cfg, None))
    return config

HOSTILE = "<script>alert('xss')</script>"


@pytest.fixture(scope="module")
def published_copy(demo_run, tmp_path_factory):
    """A private copy of the demo (its own warehouse) whose top T01 person carries a tag written by a
    hostile `<script>` author role, re-published: (config, as_of, that person's pseudonym)."""
    from datetime import date

    import duckdb

    from wobble.core.config import load_config
    from wobble.lists.publish import publish

    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    copy = copy_tree(work, tmp_path_factory.mktemp("published") / "demo")
    cfg = load_config(copy / "wobble.toml")
    with duckdb.connect(str(cfg.warehouse)) as con:
        as_of, pid = con.execute("SELECT as_of, person_id FROM huddle_lists WHERE team_id = 'T01' AND rank = 1 "
                                 "AND section = 'capacity'"
                                 ).fetchall()[0]
        con.execute("INSERT INTO tags VALUES ('hostile-1', ?, ?::DATE - INTERVAL 3 DAY, 'low_mood', 'concern', ?, "
                    "'gp', 'test')", [pid, as_of, HOSTILE])
    assert isinstance(as_of, date)
    publish(cfg, model=cfg.wobble.models[0], version="1", as_of=as_of)
    yield cfg, as_of, pid
    remove(copy.parent)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session (tests/pgserver.py); it fails, never skips."""
    from pgserver import PostgresServer, data_folder

    server = PostgresServer(data_folder())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A 3,000-person world (one team), ingested: a folder with world/, wobble.toml and the warehouse.

    Small enough to train a model in seconds; copy it (`copy_tree`) before writing to it.
    """
    from wobble.core.config import load_config
    from wobble.ingest import ingest
    from wobble.synth import demo_config, synth

    work = tmp_path_factory.mktemp("tiny")
    synth(persons=3000, seed=3, out=work / "world")
    (work / "wobble.toml").write_text(demo_config("world", seed=3))
    ingest(load_config(work / "wobble.toml"), key=TEST_KEY.encode())
    return work


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory, tiny_world):
    """crisis_90d trained and registered (version 1) on a copy of the tiny world: (config, TrainResult)."""
    from wobble.core.config import load_config
    from wobble.models.train import train

    work = copy_tree(tiny_world, tmp_path_factory.mktemp("tiny_trained") / "w")
    cfg = load_config(work / "wobble.toml")
    return cfg, train(cfg, "crisis_90d", key=TEST_KEY.encode())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from scripts/get_browser.py (`make browser`): fails, never skips, when there is none.

    Per module, not per session: Playwright's sync API keeps an event loop on the main thread while it
    runs, and Prefect, seeing it, would hand later tests coroutines instead of results."""
    get_browser = load_script(ROOT / "scripts" / "get_browser.py")
    path = get_browser.find_browser()
    if path is None:
        pytest.fail(get_browser.HELP, pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(path), args=get_browser.LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def monitored(monitor_world) -> dict[str, Path]:
    """The matured demo copy, monitored: its list, card, latest data-quality report and monitoring report (HTML)."""
    from wobble.core.config import load_config
    from wobble.ops.monitor import monitor

    config, _ = monitor_world
    cfg = load_config(config)
    result = monitor(cfg, model=cfg.wobble.models[0])
    out = cfg.outputs
    return {"list": next((out / "lists").glob("*/T01.html")), "card": next((out / "cards").glob("*.html")),
            "data-quality report": sorted((out / "reports").glob("data-quality-*.html"))[-1],
            "monitoring report": Path(result.report_html)}
