"""Run summaries: one JSON file per command run, under `<outputs>/runs/<run_id>.json`.

Data teams read these to see what each run did: per stage its seconds and its counts, and where
the outputs are. The same dict is printed with `--json`.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any


class RunSummary:
    """Collects stage timings and results for one run."""

    def __init__(self, command: str):
        now = datetime.now()
        self.run_id = f"{now:%Y%m%dT%H%M%S}-{command}-{secrets.token_hex(3)}"
        self.data: dict[str, Any] = {
            "run_id": self.run_id, "command": command,
            "started_at": now.isoformat(timespec="seconds"), "stages": {}, "outputs": {},
        }

    @contextmanager
    def stage(self, name: str):
        """Time a stage; the body fills `self.data['stages'][name]` through the yielded dict."""
        entry: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            yield entry
        finally:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            self.data["stages"][name] = {"seconds": entry.pop("seconds"), **entry}

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value

    def output(self, key: str, path: Path | str) -> None:
        self.data["outputs"][key] = str(path)

    def write(self, outputs_dir: Path) -> Path:
        self.data["finished_at"] = datetime.now().isoformat(timespec="seconds")
        runs = Path(outputs_dir) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        path = runs / f"{self.run_id}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str), encoding="utf-8")
        return path


def in_prefect_run() -> bool:
    """Whether this runs inside a Prefect flow or task run. Prefect is consulted only when the
    caller has already imported it, so plain command-line runs never load it."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
