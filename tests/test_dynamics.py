"""The early-warning list on a world it was not designed on (`scripts/dynamics.py`): a list that is
good only on the demo's dynamics is not the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, TEST_KEY


def test_where_services_see_less_of_need_the_list_still_holds_people_whose_need_is_rising(tmp_path):
    """On a world whose services see less of need and whose staff note fewer concerns, the target
    that watched routine contacts as well as concerns listed mostly people whose need was steady
    (10,000 people, seed 7, this key: 28.2% rising, 39% of the best list's 72.4%); concerns only
    lists 45.5% (63%). The list must keep at least half the best list's share rising, few in
    crisis, and far more rising than today's crisis-now ranking. (The share of the best list's
    moves with the people held out: 83% under another key. At this size, guard, not grade.)"""
    env = {**os.environ, "WOBBLE_PSEUDONYM_KEY": TEST_KEY,
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "dynamics.py"), "--variant", "quiet",
                           "--workdir", str(tmp_path / "quiet"), "--persons", "10000", "--seed", "7"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (summary,) = (tmp_path / "quiet" / "outputs" / "runs").glob("*-demo-*.json")
    m = json.loads(summary.read_text())["stages"]["train"]["metrics"]
    assert m["list_best_rising"] > 0.4  # the world has rises the observable data can find
    assert m["list_model_rising"] >= 0.5 * m["list_best_rising"]
    assert m["list_model_in_crisis"] <= 0.15
    assert m["list_model_rising"] > 5 * m["list_crisis_now_rising"]
    assert "quiet world, 10,000 people, seed 7" in proc.stdout and "model      rising" in proc.stdout
