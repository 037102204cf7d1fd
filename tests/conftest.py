"""Shared fixtures: synthetic worlds built once per session, and a pseudonymisation key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = "test-key-0123456789abcdef"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


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
def ingested(tmp_path_factory, world20k):
    """The 20k world with its demo config, ingested once: (config, ingest result)."""
    from wobble.config import load_config
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


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """A 3,000-person world (one team), ingested: a folder with world/, wobble.toml and the warehouse.

    Small enough to train a model in seconds; copy it (`copy_tree`) before writing to it.
    """
    from wobble.config import load_config
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
    from wobble.config import load_config
    from wobble.train import train

    work = copy_tree(tiny_world, tmp_path_factory.mktemp("tiny_trained") / "w")
    cfg = load_config(work / "wobble.toml")
    return cfg, train(cfg, "crisis_90d", key=TEST_KEY.encode())
