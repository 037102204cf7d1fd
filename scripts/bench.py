"""`make bench`: time synth and each pipeline stage at a chosen size; report peak memory.

Each stage runs as its own `wobble` process, so its peak resident memory is its own
(os.wait4's rusage). Results print as a table and are kept in data/bench/<persons>/bench.json.

To time some stages against data made earlier, point `--workdir` at a folder holding a
warehouse (and `--world` at an existing synthetic world, linked in as `world`), and leave
synth and ingest out of `--stages`, e.g.

    python scripts/bench.py --persons 1000000 --workdir /work/scratch/issue4/bench1m \
        --world /work/bench/1000000/world --stages features1,features13
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict, ok: tuple[int, ...] = (0,)) -> tuple[float, float, dict]:
    """(seconds, peak RSS in GB, parsed --json output) for one command, run as its own process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        # Reap the child ourselves: wait4 returns that child's own resource usage.
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if p.returncode not in ok:
        sys.stderr.write(stderr[-3000:])
        raise SystemExit(f"bench: {' '.join(cmd[2:4])} failed with exit code {p.returncode}")
    try:
        data = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        data = {}
    return seconds, usage.ru_maxrss / 1024 / 1024, data  # ru_maxrss is in KiB on Linux


def peers(work: Path, as_of: date, env: dict, record, results: list[dict]) -> None:
    """The peers step: the warehouse's contacts exported to Parquet, then a polars and a pandas
    analyst's 62 window columns for `as_of` (scripts/peers.py), each in its own process, and their
    times set beside wobble's whole feature catalogue at that date when this run measured it."""
    import duckdb

    contacts = work / "contacts.parquet"
    t0 = time.perf_counter()
    con = duckdb.connect(str(work / "warehouse.duckdb"), read_only=True)
    try:
        con.execute(f"COPY (SELECT person_id, occurred_at, recorded_at, service, status FROM contacts) "
                    f"TO '{contacts}' (FORMAT parquet)")
        n = con.execute("SELECT count(*) FROM contacts").fetchone()[0]
    finally:
        con.close()
    print(f"peers: {n:,} contacts exported to Parquet in {time.perf_counter() - t0:.1f} s", flush=True)
    ours = next((r for r in results if r["stage"] == "features x1"), None)
    for impl in ("polars", "pandas"):
        out = work / f"peer_{impl}.parquet"
        s, m, _ = run([sys.executable, str(ROOT / "scripts" / "peers.py"), "--contacts", str(contacts),
                       "--as-of", as_of.isoformat(), "--impl", impl, "--out", str(out)], env)
        note = "62 columns"
        if ours:
            note += f"; wobble's features take {ours['seconds'] / s:.2f}x its time, {ours['peak_gb'] / m:.2f}x its peak"
        record(f"peer {impl}", s, m, n, note)
        out.unlink(missing_ok=True)
    contacts.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persons", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--stages", default="synth,ingest,features1,peers,features13,train,approve,publish,monitor")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="Folder for the config, warehouse and results (default data/bench/<persons>); "
                         "an existing warehouse there is reused by stages after ingest")
    ap.add_argument("--world", type=Path, default=None,
                    help="an existing world (read-only) to use instead of synthesising one; it is "
                         "symlinked as <workdir>/world and the synth stage is skipped")
    args = ap.parse_args()
    stages = args.stages.split(",")
    work = args.workdir or ROOT / "data" / "bench" / str(args.persons)
    work.mkdir(parents=True, exist_ok=True)
    if args.world:
        link = work / "world"
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.exists():
            raise SystemExit(f"bench: {link} is a folder; remove it to use --world")
        link.symlink_to(args.world.resolve())
        stages = [s for s in stages if s != "synth"]
    py = [sys.executable, "-m", "wobble"]
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    key_file = work / ".wobble_key"
    if not key_file.exists():
        key_file.write_text(os.urandom(24).hex())
    env["WOBBLE_PSEUDONYM_KEY"] = key_file.read_text().strip()
    cfg = work / "wobble.toml"
    results = []

    def record(stage, seconds, peak, rows=None, note=""):
        results.append({"stage": stage, "seconds": round(seconds, 1), "peak_gb": round(peak, 2),
                        "rows": rows, "rows_per_second": round(rows / seconds) if rows else None,
                        "note": note})
        line = f"{stage:26s} {seconds:8.1f} s  {peak:6.2f} GB"
        if rows:
            line += f"  {rows:,} rows  {rows / seconds:,.0f} rows/s"
        print(line + (f"  {note}" if note else ""), flush=True)

    if "synth" in stages:
        s, m, d = run(py + ["synth", "--persons", str(args.persons), "--seed", str(args.seed),
                            "--out", str(work / "world"), "--json"], env)
        st = d.get("stages", {}).get("synth", {})
        record("synth", s, m, st.get("contacts"), f"{st.get('persons', 0):,} people")
    from wobble.core.config import load_config
    from wobble.synth import demo_config
    from wobble.synth.demo import demo_vault_key
    from wobble.synth.world import WORLD_START, WORLD_WEEKS

    cfg.write_text(demo_config("world", seed=args.seed))
    demo_vault_key(work, load_config(cfg).vault.key_env)  # ingest fills the identity vault
    end = WORLD_START + timedelta(weeks=WORLD_WEEKS)
    if "ingest" in stages:
        wh = work / "warehouse.duckdb"
        if wh.exists():
            wh.unlink()
        s, m, d = run(py + ["ingest", "--config", str(cfg), "--json"], env)
        st = d.get("stages", {}).get("ingest", {})
        record("ingest", s, m, st.get("rows_in"), f"loaded {st.get('rows_loaded', 0):,}")
    if "features1" in stages:
        s, m, d = run(py + ["features", "--as-of", end.isoformat(), "--config", str(cfg), "--json"], env)
        st = d.get("stages", {}).get("features", {})
        spent = sorted(st.get("timings", {}).items(), key=lambda kv: -kv[1])
        record("features x1", s, m, st.get("rows"), f"{st.get('features')} features; "
               + ", ".join(f"{k} {v:.1f} s" for k, v in spent[:6]))
    if "peers" in stages:
        peers(work, end, env, record, results)
    if "features13" in stages:
        dates = [(end - timedelta(weeks=k)).isoformat() for k in range(13)]
        cmd = py + ["features", "--config", str(cfg), "--json"]
        for x in dates:
            cmd += ["--as-of", x]
        s, m, d = run(cmd, env)
        record("features x13", s, m, d.get("stages", {}).get("features", {}).get("rows"))
    for model in load_config(cfg).wobble.models:  # the weekly run's models, as `wobble demo` trains them
        version = None
        if "train" in stages:
            s, m, d = run(py + ["train", "--model", model, "--config", str(cfg), "--max-train-dates", "4",
                                "--json"], env)
            tr = d.get("stages", {}).get("train", {})
            version = tr.get("model_version")
            record(f"train {model}", s, m, tr.get("rows_train"), f"AUROC {tr.get('metrics', {}).get('auroc')}")
        if "approve" in stages and version:
            s, m, _ = run(py + ["approve", "--model", model, "--version", version, "--by", "bench",
                                "--demo", "--config", str(cfg)], env)
            record(f"approve {model}", s, m)
    if "publish" in stages:
        s, m, d = run(py + ["publish", "--config", str(cfg), "--as-of", end.isoformat(), "--json"], env)
        pub = d.get("stages", {}).get("publish", {})
        lists = pub.get("lists", [])
        record("publish", s, m, pub.get("scored"),
               f"{len(lists)} team lists; scoring and explaining {pub.get('score_seconds')} s of it")
    if "monitor" in stages:
        s, m, d = run(py + ["monitor", "--config", str(cfg), "--as-of", end.isoformat(), "--json"], env,
                      ok=(0, 1))  # 1: it flagged something, which is a result, not a failure
        mo = d.get("stages", {}).get("monitor", {})
        record("monitor", s, m, None, f"level {mo.get('level')}, score PSI {mo.get('score_psi')}")
    out = work / "bench.json"
    out.write_text(json.dumps({"persons": args.persons, "date": date.today().isoformat(),
                               "cpus": os.cpu_count(), "results": results}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
