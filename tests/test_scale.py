"""Scale-out on Dask: the weekly flow on a local two-worker cluster gives the single-machine run's
lists, scores, explanations and features exactly; without an address nothing of Dask is imported."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta

import duckdb
import pytest
from conftest import ROOT, TEST_KEY, copy_demo, copy_tree

DASK_MODULES = ("dask", "distributed", "prefect_dask")

# Runs the weekly flow (wobble.flows.weekly) in a fresh process (ephemeral Prefect), on a local Dask cluster when
# asked; prints the flow's result and which Dask modules the process imported, as JSON.
RUN_WEEKLY = """
import json, sys
config, as_of, on_dask = sys.argv[1], sys.argv[2], sys.argv[3] == "dask"

def run(address=None):
    from wobble.flows import weekly
    state = weekly.weekly(config=config, as_of=as_of, dask=address, return_state=True)
    return state.result()

if __name__ == "__main__":
    tasks = {{}}
    if on_dask:
        from distributed import Client, LocalCluster
        with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None) as cluster, Client(cluster) as client:
            result = run(cluster.scheduler_address)
            # what the cluster ran, by task name
            done = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
            tasks = {{"workers": len(client.scheduler_info()["workers"]), "prefixes": done}}
    else:
        result = run()
    imported = sorted(m for m in sys.modules if m.split(".")[0] in {modules!r})
    print("RESULT " + json.dumps({{"result": result, "imported": imported, "tasks": tasks}}, default=str))
"""

TABLES = {
    "feature_snapshots": "SELECT * FROM feature_snapshots WHERE as_of = ? ORDER BY person_id",
    "scores": "SELECT * FROM scores WHERE as_of = ? ORDER BY ALL",
    "explanations": "SELECT * FROM explanations WHERE as_of = ? ORDER BY ALL",
    "huddle_lists": "SELECT * FROM huddle_lists WHERE as_of = ? ORDER BY ALL",
    "huddle_list_context": "SELECT * FROM huddle_list_context WHERE as_of = ? ORDER BY ALL",
}


def _weekly(config, as_of: str, on: str) -> dict:
    env = {**os.environ, "WOBBLE_PSEUDONYM_KEY": TEST_KEY,
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PREFECT_API_URL", None)  # ephemeral mode, as `python -m wobble.flows.weekly` runs without a server
    code = RUN_WEEKLY.format(modules=DASK_MODULES)
    # Output goes to files, not pipes, and the run gets its own process group that is ended
    # afterwards: an ephemeral Prefect server left behind by the run would otherwise hold the
    # pipes open and hang the test after the run itself has exited.
    out, err = config.parent / "weekly.out", config.parent / "weekly.err"
    with out.open("w") as fo, err.open("w") as fe:
        proc = subprocess.Popen([sys.executable, "-c", code, str(config), as_of, on], stdout=fo, stderr=fe,
                                text=True, env=env, cwd=config.parent, start_new_session=True)
        try:
            returncode = proc.wait(timeout=900)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    assert returncode == 0, err.read_text()[-3000:]
    line = next(x for x in out.read_text().splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _fresh(config, as_of: str, buckets: int | None = None) -> None:
    """Drop the as-of date's snapshots, scores and explanations, so the flow must make them again."""
    with duckdb.connect(str(config.parent / "warehouse.duckdb")) as con:
        for table in ("feature_snapshots", "scores", "explanations"):
            con.execute(f"DELETE FROM {table} WHERE as_of = ?", [as_of])
    if buckets:
        with open(config, "a", encoding="utf-8") as f:
            f.write(f'\n[dask]\npartitions = "partitions"\nbuckets = {buckets}\n')


def _tables(config, as_of: str) -> dict[str, list]:
    with duckdb.connect(str(config.parent / "warehouse.duckdb"), read_only=True) as con:
        return {t: con.execute(q, [as_of]).fetchall() for t, q in TABLES.items()}


@pytest.mark.slow
def test_weekly_flow_on_dask_matches_the_single_machine_run(demo_run, tmp_path):
    work, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    as_of = json.loads(proc.stdout)["stages"]["publish"]["as_of"]
    local, dask = copy_demo(work, tmp_path / "local"), copy_demo(work, tmp_path / "dask")
    _fresh(local, as_of)
    _fresh(dask, as_of, buckets=5)

    on_one = _weekly(local, as_of, "local")
    assert on_one["imported"] == [], f"a run without a Dask address imported {on_one['imported']}"
    on_dask = _weekly(dask, as_of, "dask")
    assert {"dask", "distributed", "prefect_dask"} <= {m.split(".")[0] for m in on_dask["imported"]}

    # the work really went to the cluster: one task per bucket and per team, on two workers
    assert on_dask["tasks"]["workers"] == 2
    assert {"bucket_snapshots", "score_team"} <= set(on_dask["tasks"]["prefixes"]), on_dask["tasks"]
    a, b = on_one["result"], on_dask["result"]
    assert b["features"]["buckets"] == 5 and "buckets" not in a["features"]
    assert not list((dask.parent / "partitions").iterdir()), "partition folders are removed after loading"

    one, many = _tables(local, as_of), _tables(dask, as_of)
    for table in TABLES:
        assert one[table], f"{table}: no rows at {as_of}"
        assert one[table] == many[table], f"{table} differs between the local and the Dask run"
    # both parts of each list: the capacity rows and the recently-in-crisis rows
    assert len(one["huddle_lists"]) == sum(t["rows"] + t["recent_crisis"] for t in b["publish"]["lists"])
    for key in ("rows", "features"):
        assert a["features"][key] == b["features"][key]
    assert a["publish"]["scored"] == b["publish"]["scored"]
    teams = [[(t["team"], t["rows"]) for t in r["publish"]["lists"]] for r in (a, b)]
    assert teams[0] == teams[1]
    drop = ("report_md", "report_html", "seconds")
    assert {k: v for k, v in a["monitor"].items() if k not in drop} == \
           {k: v for k, v in b["monitor"].items() if k not in drop}
    pages = sorted((local.parent / "outputs" / "lists" / as_of).glob("T*.*"))  # written by the workers on Dask
    assert {p.suffix for p in pages} == {".csv", ".html"}
    for page in pages:
        assert page.read_bytes() == (dask.parent / "outputs" / "lists" / as_of / page.name).read_bytes(), page.name


def test_wobble_help_imports_no_dask():
    code = ("import sys; from typer.testing import CliRunner; from wobble.cli.main import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {DASK_MODULES!r}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_dask_address_must_look_like_one(tmp_path):
    from wobble.core.config import load_config
    from wobble.core.errors import ConfigError

    path = tmp_path / "wobble.toml"
    path.write_text('[dask]\naddress = "127.0.0.1:8786"\n')
    with pytest.raises(ConfigError, match=r"dask\.address.*tcp://"):
        load_config(path)
    path.write_text('[dask]\naddress = "tcp://10.0.0.5:8786"\nbuckets = 64\n')
    cfg = load_config(path)
    assert (cfg.dask.address, cfg.dask.buckets, cfg.partitions_dir) == (
        "tcp://10.0.0.5:8786", 64, tmp_path / "data" / "partitions")


def test_early_stop_follows_lightgbms_rule():
    from wobble.models.fit import early_stop

    assert early_stop([0.5, 0.4, 0.3, 0.31, 0.32, 0.33, 0.2], rounds=3) == 2  # stopped before the late dip
    assert early_stop([0.5, 0.4, 0.3, 0.31, 0.32, 0.2], rounds=3) == 5
    assert early_stop([0.3, 0.3, 0.3], rounds=5) == 0  # a tie is no improvement


@pytest.mark.slow
def test_training_with_the_dask_estimator_is_sensible(tiny_world, tiny_trained, tmp_path):
    """LightGBM's Dask estimator on two local workers: not byte-identical to one machine, but as good."""
    from distributed import LocalCluster

    from wobble.core.config import load_config
    from wobble.models.train import train

    _, local = tiny_trained
    cfg = load_config(copy_tree(tiny_world, tmp_path / "w") / "wobble.toml")
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        on_dask = train(cfg, "crisis_90d", key=TEST_KEY.encode(), register=False, dask=cluster.scheduler_address)
    assert on_dask.evaluation["training"]["estimator"] == "lightgbm.dask.DaskLGBMClassifier"
    assert local.evaluation["training"]["estimator"] == "lightgbm.LGBMClassifier"
    assert on_dask.rows_test == local.rows_test  # the same test rows, scored by both
    n_estimators = on_dask.evaluation["training"]["params"]["n_estimators"]
    assert 1 <= on_dask.evaluation["training"]["best_iteration"] < n_estimators  # cut where it would stop
    m, base = on_dask.metrics, local.metrics
    print(f"AUROC on Dask {m['auroc']:.4f}, on one machine {base['auroc']:.4f}; "
          f"Brier {m['brier']:.4f} vs {base['brier']:.4f}")
    assert abs(m["auroc"] - base["auroc"]) < 0.03
    assert m["auroc"] > m["baseline_auroc"] - 0.02
    assert abs(m["brier"] - base["brier"]) < 0.01


def test_buckets_rebuild_the_single_machine_snapshots_and_a_missing_bucket_is_an_error(tiny_world, tmp_path):
    """The partitioned build, run in-process: the same rows and column types as `build_features`,
    team-wide figures included (a feed gap that only shows over the whole team, not in a bucket of
    100 people); a bucket that never came back stops the load (nothing lost silently)."""
    from wobble.core.calendar import as_of_for
    from wobble.core.config import Dask, load_config
    from wobble.core.errors import WobbleError
    from wobble.features import build_features
    from wobble.ops.scale import bucket_snapshots, export_persons, load_snapshots

    cfg = load_config(copy_tree(tiny_world, tmp_path / "w") / "wobble.toml")
    cfg = cfg.model_copy(update={"dask": Dask(buckets=30, partitions=tmp_path / "parts")})
    last = as_of_for(cfg, None)
    as_ofs = [last - timedelta(weeks=5), last]
    with duckdb.connect(str(cfg.warehouse)) as con:  # the busiest system sends nothing for six weeks
        con.execute("DELETE FROM contacts WHERE source_system = (SELECT mode(source_system) FROM contacts) "
                    "AND occurred_at >= ?::DATE - INTERVAL 80 DAY AND occurred_at < ?::DATE - INTERVAL 35 DAY",
                    [last, last])
    build_features(cfg, as_ofs)
    query = "SELECT * FROM feature_snapshots ORDER BY as_of, person_id"
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        one, types = con.execute(query).fetchall(), con.execute("DESCRIBE feature_snapshots").fetchall()
        gap = con.execute("SELECT sum(team_feed_gap_3m) FROM feature_snapshots WHERE as_of = ?", [last]).fetchall()
    assert gap[0][0] > 0, "the injected gap should show in the team-wide feature"

    parts = export_persons(cfg, as_ofs)
    assert len(parts.buckets) == 30 and parts.shared
    files = [bucket_snapshots(cfg, parts, k) for k in parts.buckets]
    with pytest.raises(WobbleError, match="missing"):
        load_snapshots(cfg, parts, files[:-1])
    result = load_snapshots(cfg, parts, files)
    assert not parts.folder.exists()
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        assert con.execute("DESCRIBE feature_snapshots").fetchall() == types
        many = con.execute(query).fetchall()
    assert result.rows == len(one) == len(many) > 0
    assert one == many
