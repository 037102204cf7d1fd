"""Time the weekly flow's stages on this machine and on a local Dask cluster, side by side.

    python scripts/bench_dask.py --workdir data/demo [--workers 2] [--train]

Takes a demo workdir (`make demo`), copies it twice (the original is left alone), and runs the weekly
flow's stages (ingest, features, publish, monitor; with --train also a retrain) on each copy: once
with the thread pool on this machine, once on a `distributed.LocalCluster` of `--workers` single-
thread worker processes on loopback. Both runs report to one Prefect test server started here.
The as-of date's snapshots, scores and explanations are dropped first so both builds do the work.
Prints a table of seconds per stage and checks both copies ended with the same lists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy(src: Path, dst: Path) -> Path:
    """A writable copy of a demo workdir; its world (read only) is linked, not copied."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("world", "data"))
    (dst / "world").symlink_to((src / "world").resolve())
    return dst / "wobble.toml"


def run(config: Path, address: str | None, train: bool) -> dict[str, float]:
    """Seconds per stage, as the weekly flow runs them (features and publish on `address`)."""
    import duckdb

    from wobble.flows.stages import features_flow, ingest_flow, monitor_flow, publish_flow, train_flow
    from wobble.flows.tasks import on, resolve_as_of

    config = str(config)
    times: dict[str, float] = {}

    def timed(name, fn, *args):
        t = time.perf_counter()
        out = fn(*args)
        times[name] = time.perf_counter() - t
        return out

    timed("ingest", ingest_flow, config)
    day = resolve_as_of(config, "latest")
    with duckdb.connect(str(Path(config).parent / "warehouse.duckdb")) as con:
        for table in ("feature_snapshots", "scores", "explanations"):
            con.execute(f"DELETE FROM {table} WHERE as_of = ?", [day])
    timed("features", on(features_flow, address), config, day.isoformat(), address)
    timed("publish", on(publish_flow, address), config, day.isoformat(), None, address)
    timed("monitor", monitor_flow, config, day.isoformat(), None)
    if train:
        timed("train", train_flow, config, None, address)
    times["total"] = sum(times.values())
    return times


def lists(config: Path) -> list:
    import duckdb

    with duckdb.connect(str(config.parent / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT team_id, as_of, rank, person_id, risk, reasons FROM huddle_lists "
                           "ORDER BY ALL").fetchall()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "data" / "demo")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train", action="store_true", help="also time a retrain (LightGBM's Dask estimator)")
    args = ap.parse_args()
    for var, val in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("DO_NOT_TRACK", "true")):
        os.environ.setdefault(var, val)
    key = args.workdir / ".wobble_key"
    if "WOBBLE_PSEUDONYM_KEY" not in os.environ and key.exists():
        os.environ["WOBBLE_PSEUDONYM_KEY"] = key.read_text().strip()
    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory(dir=args.workdir.parent) as tmp, prefect_test_harness(server_startup_timeout=120):
        local, dask = copy(args.workdir, Path(tmp) / "local"), copy(args.workdir, Path(tmp) / "dask")
        one = run(local, None, args.train)
        t = time.perf_counter()
        with LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            started = time.perf_counter() - t
            many = run(dask, cluster.scheduler_address, args.train)
        same = lists(local) == lists(dask)
    print(f"\n{'stage':10s} {'local s':>9s} {'dask s':>9s}   ({args.workers} workers; cluster start "
          f"{started:.1f} s, not counted)")
    for stage in one:
        print(f"{stage:10s} {one[stage]:9.1f} {many[stage]:9.1f}")
    print(f"same huddle lists on both: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
