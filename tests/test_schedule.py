"""`wobble schedule` against a real Prefect server on loopback: the deployments are registered and the
server's scheduler books the next runs at the right local times (Mondays 06:00, quarter days 02:00,
Europe/London, through summer time)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from conftest import ROOT, TEST_KEY

LONDON = ZoneInfo("Europe/London")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Stop a process this test started, and its children (it leads its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _poll(what: str, fn, timeout: float, *procs: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{p.args[:4]} exited ({p.returncode}) while waiting for {what}")
        result = fn()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prefect_server(tmp_path):
    """A Prefect server on a free loopback port with its own database; stopped after the test."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--analytics-off", "--no-ui"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"

    def healthy():
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _poll("the Prefect server", healthy, 120, proc)
        yield api
    finally:
        _stop(proc)


def _next_local(now: datetime, days_ok, hour: int) -> list[datetime]:
    """The next few local datetimes at `hour`:00 on days that satisfy `days_ok`, after `now`."""
    out, d = [], now.astimezone(LONDON).date()
    while len(out) < 4:
        at = datetime(d.year, d.month, d.day, hour, tzinfo=LONDON)
        if days_ok(d) and at > now:
            out.append(at)
        d += timedelta(days=1)
    return out


def test_schedule_registers_deployments_and_books_runs_at_the_right_times(prefect_server, tmp_path):
    from wobble.synth import demo_config

    api = prefect_server
    config = tmp_path / "wobble.toml"
    config.write_text(demo_config("world"))
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "client-home"),
           "WOBBLE_PSEUDONYM_KEY": TEST_KEY, "PYTHONPATH": str(ROOT / "src")}
    now = datetime.now(LONDON)
    with open(tmp_path / "schedule.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "wobble", "schedule", "--config", str(config)], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def deployments():
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            return {d["name"]: d for d in found} if len(found) == 2 else None

        deps = _poll("two deployments", deployments, 120, proc)
        assert set(deps) == {"weekly", "quarterly"}
        for d in deps.values():
            assert d["parameters"] == {"config": str(config.resolve())}
        crons = {n: [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in d["schedules"]]
                 for n, d in deps.items()}
        assert crons == {"weekly": [("0 6 * * 1", "Europe/London")],
                         "quarterly": [("0 2 1 1,4,7,10 *", "Europe/London")]}

        def scheduled():
            runs = httpx.post(f"{api}/flow_runs/filter", timeout=10, json={
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}).json()
            by = {name: sorted(datetime.fromisoformat(r["expected_start_time"]) for r in runs
                               if r["deployment_id"] == d["id"]) for name, d in deps.items()}
            return by if by["weekly"] and by["quarterly"] else None

        runs = _poll("scheduled runs", scheduled, 90, proc)
    finally:
        _stop(proc, signal.SIGINT)

    mondays = _next_local(now, lambda d: d.weekday() == 0, 6)
    quarters = _next_local(now, lambda d: d.day == 1 and d.month in (1, 4, 7, 10), 2)
    weekly, quarterly = runs["weekly"], runs["quarterly"]
    assert len(weekly) >= 3
    assert weekly[:3] == mondays[:3], (weekly[:3], mondays[:3])
    assert all(r.astimezone(LONDON).hour == 6 and r.astimezone(LONDON).weekday() == 0 for r in weekly)
    assert quarterly[0] == quarters[0], (quarterly, quarters)
    assert all(r.astimezone(LONDON).hour == 2 and r.astimezone(LONDON).day == 1 for r in quarterly)


def test_schedule_without_a_server_says_how_to_start_one(tmp_path):
    from conftest import run_wobble

    from wobble.synth import demo_config

    config = tmp_path / "wobble.toml"
    config.write_text(demo_config("world"))
    port = _free_port()  # nothing listens here
    proc = run_wobble("schedule", "--config", str(config),
                      env={"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_HOME": str(tmp_path / "h")})
    assert proc.returncode == 2
    assert "cannot reach the Prefect server" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
