"""Load test of the review service while the pipeline writes (bounded; loopback only).

Starts `wobble review serve` for the config on 127.0.0.1 and a free port (its per-address rate limit
lifted: every simulated user comes from 127.0.0.1), signs in USERS users spread over the teams, and
for SECONDS each reads their team's list, opens a person and records an outcome (one in ten forms
sent twice, as a double click would), with THINK seconds between requests. Meanwhile the pipeline
command (`wobble publish` or `wobble run`) runs again and again. At the end one more `wobble publish`
brings the outcomes back to the warehouse.

Reports (and writes as JSON to --out): the pipeline's exit codes and durations; page latency p50,
p95 and max, overall and per kind of request; how many requests took over 5 s; answers by status;
exactly once: every acknowledged form (its nonce) is one row in the review database, every form
answered "not saved" is none, and every outcome is one row in the warehouse's `huddle_outcomes`;
and the audit log's hash chain, verified.

    python scripts/load_review.py --config data/demo/wobble.toml --users 50 --seconds 120 \\
        --pipeline publish --out data/demo/outputs/load-review.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

SLOW_SECONDS = 5.0
MAX_USERS, MAX_SECONDS = 500, 7200  # bounded: this is a test, not a flood
SERVER = ("import sys; from wobble.core.config import load_config; from wobble.review.app import serve; "
          "cfg = load_config(sys.argv[1]); "
          "cfg = cfg.model_copy(update={'review': cfg.review.model_copy(update={'requests_per_minute': 10**9})}); "
          "serve(cfg, host='127.0.0.1', port=int(sys.argv[2]))")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--pipeline", choices=["publish", "run", "none"], default="publish")
    p.add_argument("--think", type=float, default=0.5, help="seconds a user waits between requests")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    if not 1 <= a.users <= MAX_USERS or not 1 <= a.seconds <= MAX_SECONDS:
        p.error(f"--users must be 1..{MAX_USERS} and --seconds 1..{MAX_SECONDS}")
    return a


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wobble(*args: str) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wobble", *args], capture_output=True, text=True)
    return proc.returncode, time.monotonic() - t0, proc.stderr.strip()[-300:]


class User(threading.Thread):
    """One huddle member: signs in, then reads the list, opens a person and records an outcome, in a loop."""

    def __init__(self, base: str, token: str, team: str, until: float, think: float, seed: int, sink: dict):
        super().__init__(daemon=True)
        self.base, self.token, self.team, self.until, self.think = base, token, team, until, think
        self.rng, self.sink = random.Random(seed), sink

    def timed(self, kind: str, method: str, url: str, **kw):
        t0 = time.monotonic()
        try:
            r = self.client.request(method, url, **kw)
            status = r.status_code
        except Exception as exc:  # a timeout or a dropped connection is a result to count, not a crash
            r, status = None, type(exc).__name__
        with self.sink["lock"]:
            self.sink["latency"][kind].append(time.monotonic() - t0)
            self.sink["status"][f"{kind} {status}"] += 1
        return r

    def run(self) -> None:
        import httpx

        self.client = httpx.Client(base_url=self.base, follow_redirects=False, timeout=60)
        login = self.timed("login form", "GET", "/login")
        form = re.search(r'name="csrf" value="([^"]*)"', login.text).group(1)
        self.timed("sign in", "POST", "/login", data={"token": self.token, "csrf": form})
        while time.monotonic() < self.until:
            page = self.timed("team list", "GET", f"/teams/{self.team}")
            people = sorted(set(re.findall(rf'/teams/{self.team}/people/([0-9a-f]+)', page.text))) if page else []
            time.sleep(self.think)
            if not people:
                continue
            pid = self.rng.choice(people)
            person = self.timed("person page", "GET", f"/teams/{self.team}/people/{pid}")
            time.sleep(self.think)
            if person is None or person.status_code != 200:
                continue
            fields = {k: re.search(rf'name="{k}" value="([^"]*)"', person.text).group(1)
                      for k in ("csrf", "nonce", "as_of")}
            data = {**fields, "outcome": self.rng.choice(["discussed_no_action", "deferred", "outreach_agreed"]),
                    "recorded_by": "load test", "note": "talked it through"}
            for _ in range(2 if self.rng.random() < 0.1 else 1):  # one form in ten is sent twice
                r = self.timed("record outcome", "POST", f"/teams/{self.team}/people/{pid}/outcome", data=data)
                with self.sink["lock"]:
                    self.sink["forms"][fields["nonce"]].append(getattr(r, "status_code", None))
            time.sleep(self.think)
        self.client.close()


def _pipeline(config: Path, command: str, until: float, runs: list) -> None:
    while time.monotonic() < until:
        code, seconds, tail = _wobble(command, "--config", str(config))
        runs.append({"command": command, "exit": code, "seconds": round(seconds, 1),
                     **({"error": tail} if code not in (0, 1) else {})})  # `run` exits 1 when monitoring flags


def _percentiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100, method="inclusive") if len(xs) > 1 else [xs[0]] * 99
    return {"n": len(xs), "p50_ms": round(q[49] * 1000, 1), "p95_ms": round(q[94] * 1000, 1),
            "max_ms": round(xs[-1] * 1000, 1), "over_5s": sum(x > SLOW_SECONDS for x in xs)}


def _exactly_once(cfg, forms: dict) -> dict:
    """Acknowledged forms: one row each; forms only ever answered 'not saved': none; warehouse: one per outcome."""
    import duckdb
    from sqlalchemy import select

    from wobble.core.servicedb import OUTCOMES
    from wobble.review.tokens import db_of

    with db_of(cfg).read() as conn:
        rows = Counter(n for (n,) in conn.execute(select(OUTCOMES.c.nonce).where(OUTCOMES.c.nonce.in_(list(forms)))))
        ids = [i for (i,) in conn.execute(select(OUTCOMES.c.outcome_id))]
    acked = [n for n, codes in forms.items() if 303 in codes]
    refused = [n for n, codes in forms.items() if 303 not in codes]
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        back = Counter(dict(con.execute("SELECT outcome_id, count(*) FROM huddle_outcomes GROUP BY 1").fetchall()))
    return {"forms": len(forms), "sent_twice": sum(len(c) > 1 for c in forms.values()), "acknowledged": len(acked),
            "acknowledged_recorded_once": sum(rows[n] == 1 for n in acked),
            "not_acknowledged": len(refused), "not_acknowledged_recorded": sum(rows[n] > 0 for n in refused),
            "service_outcomes": len(ids), "in_warehouse_once": sum(back[i] == 1 for i in ids),
            "ok": all(rows[n] == 1 for n in acked) and not any(rows[n] for n in refused)
            and all(back[i] == 1 for i in ids)}


def main() -> None:
    a = _args()
    from wobble.core.config import load_config
    from wobble.review.audit import verify
    from wobble.review.records import teams
    from wobble.review.tokens import create_token, db_of

    cfg = load_config(a.config)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(a.config), str(port)], env=os.environ)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the review server did not start")
                time.sleep(0.2)
        team_ids = teams(db_of(cfg))
        tokens = {t: create_token(cfg, t, created_by="scripts/load_review.py", days=1)[1] for t in team_ids}
        sink = {"lock": threading.Lock(), "latency": defaultdict(list), "status": Counter(),
                "forms": defaultdict(list)}
        t0 = time.monotonic()
        until = t0 + a.seconds
        users = [User(base, tokens[team_ids[i % len(team_ids)]], team_ids[i % len(team_ids)], until, a.think,
                      a.seed * 1000 + i, sink) for i in range(a.users)]
        runs: list[dict] = []
        pipe = threading.Thread(target=_pipeline, args=(a.config, a.pipeline, until, runs), daemon=True)
        for u in users:
            u.start()
        if a.pipeline != "none":
            pipe.start()
        for u in users:
            u.join()
        if a.pipeline != "none":
            pipe.join()
        wall = time.monotonic() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    code, seconds, tail = _wobble("publish", "--config", str(a.config))  # brings every outcome back
    latency = {k: _percentiles(v) for k, v in sorted(sink["latency"].items())}
    pages = [x for k, v in sink["latency"].items() for x in v]
    check = verify(db_of(cfg))
    report = {
        "config": str(a.config), "users": a.users, "seconds": a.seconds, "wall_seconds": round(wall, 1),
        "think_seconds": a.think, "teams": len(team_ids), "review_database": db_of(cfg).safe_url,
        "pipeline": {"command": a.pipeline, "runs": runs, "exit_codes": sorted(Counter(r["exit"] for r in runs)),
                     "all_succeeded": all(r["exit"] in (0, 1) for r in runs),
                     "final_publish": {"exit": code, "seconds": round(seconds, 1)}},
        "requests": len(pages), "requests_per_second": round(len(pages) / wall, 1),
        "latency": {"all": _percentiles(pages), **latency}, "over_5s": sum(x > SLOW_SECONDS for x in pages),
        "status": dict(sorted(sink["status"].items())),
        "exactly_once": _exactly_once(cfg, sink["forms"]),
        "audit_chain": {"rows": check.rows, "ok": check.ok, "first_bad": check.first_bad},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("requests", "requests_per_second", "over_5s", "exactly_once",
                                             "audit_chain")} | {"latency": report["latency"]["all"],
                                                                "pipeline": report["pipeline"]["exit_codes"]},
                     indent=2))


if __name__ == "__main__":
    main()
