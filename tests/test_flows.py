"""The Prefect flow wraps the same stage functions and gives the same lists."""

from __future__ import annotations

import importlib.util
import json

import duckdb
import pytest
from conftest import ROOT


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _load_flow(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "flows" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_weekly_flow_publishes_the_same_lists(demo_run, prefect_harness):
    work, proc = demo_run
    summary = json.loads(proc.stdout)
    as_of = summary["stages"]["publish"]["as_of"]
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        before = con.sql("SELECT team_id, rank, person_id, risk FROM huddle_lists "
                         "WHERE model_version = '1' ORDER BY ALL").fetchall()
    weekly = _load_flow("weekly")
    result = weekly.weekly(config=str(work / "wobble.toml"), as_of=as_of)
    assert result["ingest"]["files_skipped"] > 0 and result["ingest"]["rows_in"] == 0
    assert [t["team"] for t in result["publish"]["lists"]] == ["T01", "T02"]
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        after = con.sql("SELECT team_id, rank, person_id, risk FROM huddle_lists "
                        "WHERE model_version = '1' ORDER BY ALL").fetchall()
    assert before == after
