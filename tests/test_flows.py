"""The Prefect flows wrap the same stage functions: same lists, cached features, artifacts, run names."""

from __future__ import annotations

import importlib
import json
import re
from datetime import date
from pathlib import Path

import duckdb
import pytest
from conftest import TEST_KEY, copy_demo


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _flows(name: str):
    return importlib.import_module(f"wobble.flows.{name}")


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _artifact(key: str, state=None):
    """The newest artifact with this key (left by the run behind `state`, if given)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    run = ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]) if state else None
    with _client() as c:
        found = c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]), flow_run_id=run),
                                 sort=ArtifactSort.CREATED_DESC)
    assert found, f"no artifact {key!r}"
    return found[0]


def _runs(parent_id) -> dict[str, object]:
    """The flow run and its sub-flow runs, by name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with _client() as c:
        top = c.read_flow_run(parent_id)
        subs = {r.name: r for r in c.read_flow_runs() if r.parent_task_run_id and r.id != parent_id}
        tasks = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent_id])))
    return {"top": top, "subs": subs, "tasks": tasks}


def test_weekly_flow_publishes_the_same_lists(demo_run, prefect_harness):
    work, proc = demo_run
    summary = json.loads(proc.stdout)
    as_of = summary["stages"]["publish"]["as_of"]
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        before = con.sql("SELECT team_id, rank, person_id, risk FROM huddle_lists "
                         "WHERE model_version = '1' ORDER BY ALL").fetchall()
    weekly = _flows("weekly")
    state = weekly.weekly(config=str(work / "wobble.toml"), as_of=as_of, return_state=True)
    result = state.result()
    assert state.name == "Completed"  # no drift in this world: not 'Flagged'
    assert result["ingest"]["files_skipped"] > 0 and result["ingest"]["rows_in"] == 0
    assert [t["team"] for t in result["publish"]["lists"]] == ["T01", "T02"]
    assert result["monitor"]["flagged"] is False
    with duckdb.connect(str(work / "warehouse.duckdb"), read_only=True) as con:
        after = con.sql("SELECT team_id, rank, person_id, risk FROM huddle_lists "
                        "WHERE model_version = '1' ORDER BY ALL").fetchall()
    assert before == after

    runs = _runs(state.state_details.flow_run_id)
    assert runs["top"].name == f"weekly-{as_of}"
    for stage in ("features", "publish", "monitor"):
        assert f"{stage}-{as_of}" in runs["subs"], sorted(runs["subs"])
    assert f"ingest-{date.today().isoformat()}" in runs["subs"]
    run_summary = json.loads(Path(result["summary_path"]).read_text())
    assert run_summary["command"] == "weekly-flow" and run_summary["flagged"] is False

    assert "Rows in" in _artifact("data-quality").data
    teams = _artifact("team-lists").data
    assert "T01" in teams and "T02" in teams
    report = _artifact("monitoring-report-early-warning-90d")
    assert report.data.startswith("# Monitoring report") and "Drift" in report.data


def test_features_are_cached_on_unchanged_data(demo_run, prefect_harness):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    stages = _flows("stages")
    config = str(demo_run[0] / "wobble.toml")
    first = stages.features_flow(config=config, return_state=True)
    second = stages.features_flow(config=config, return_state=True)
    assert first.result() == second.result()
    with _client() as c:
        names = {}
        for state in (first, second):
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            names[state] = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
    assert names[second]["build_snapshots"] == "Cached"
    assert names[first]["build_snapshots"] in ("Completed", "Cached")


def test_the_cache_key_changes_with_the_data(monitor_world, tmp_path):
    """The warehouse digest that keys the feature cache moves when rows arrive, and only then."""
    from wobble.core.config import load_config
    from wobble.core.warehouse import data_version

    config = copy_demo(monitor_world[0].parent, tmp_path / "w")
    warehouse = load_config(config).warehouse
    first = data_version(warehouse)
    assert data_version(warehouse) == first
    with duckdb.connect(str(warehouse)) as con:
        con.execute("INSERT INTO contacts SELECT contact_id || '-x', person_id, occurred_at, recorded_at, service, "
                    "status, mode, professional_id, source_system, batch_id FROM contacts LIMIT 1")
    assert data_version(warehouse) != first


def test_monitor_flow_ends_flagged_on_drift(drifted_world, prefect_harness):
    stages = _flows("stages")
    state = stages.monitor_flow(config=str(drifted_world), return_state=True)
    assert state.name == "Flagged" and state.is_completed()
    assert "needs a human look" in state.message or "human look" in state.message
    assert state.result()["flagged"] is True
    assert "FLAGGED" in _artifact("monitoring-report-early-warning-90d", state).description


def test_retrain_registers_a_version_that_waits_for_approval(demo_run, prefect_harness, tmp_path, monkeypatch):
    from wobble.core.config import load_config
    from wobble.models.approve import champion
    from wobble.models.tracking import client

    monkeypatch.setenv("WOBBLE_PSEUDONYM_KEY", TEST_KEY)
    config = copy_demo(demo_run[0], tmp_path / "w")
    cfg = load_config(config)
    model = cfg.wobble.models[0]  # the default model: the one the demo trains and approves
    versions = [int(v.version) for v in client(cfg).search_model_versions(f"name = '{model}'")]
    before = champion(cfg, model)
    result = _flows("retrain").retrain(config=str(config))
    assert result["train"]["model_version"] == str(max(versions) + 1)
    assert champion(cfg, model) == before, "a retrain must never approve itself"
    summary = _artifact(f"model-summary-{model.replace('_', '-')}").data  # left by the train sub-flow
    assert "awaiting governance approval" in summary and "wobble approve" in summary
    assert "# Model card" in summary  # the card itself, embedded from the path in the train summary
    assert json.loads(Path(result["summary_path"]).read_text())["command"] == "retrain-flow"


def test_artifact_text_reads_the_stage_summaries(tmp_path):
    tasks = _flows("tasks")
    s = {"rows_in": 10, "rows_loaded": 7, "rows_quarantined": 2, "rows_duplicate": 1, "files_loaded": 1,
         "files_skipped": 0, "files_failed": 1, "opted_out_persons": 3,
         "quarantine_reasons": {"invalid_nhs_number": 2}, "errors": ["gp.csv: no such column"]}
    text = tasks.quality_markdown(s)
    assert "Rows in 10 = loaded 7 + quarantined 2 + duplicate 1" in text
    assert "| invalid nhs number | 2 |" in text and "gp.csv: no such column" in text
    richer = tmp_path / "quality.md"
    richer.write_text("# Completeness by source and team\n")
    assert "Completeness by source and team" in tasks.quality_markdown({**s, "quality_report": str(richer)})
    assert tasks._key("monitoring-report", "crisis_90d") == "monitoring-report-crisis-90d"


def test_prefect_artifacts_and_logs_name_nobody(demo_run, prefect_harness):
    """No NHS number or name from the demo's register in any Prefect artifact or log of a weekly run."""
    import polars as pl
    from ingest_kit import source_nhs_numbers

    work, proc = demo_run
    as_of = json.loads(proc.stdout)["stages"]["publish"]["as_of"]
    state = _flows("weekly").weekly(config=str(work / "wobble.toml"), as_of=as_of, return_state=True)
    assert state.name in ("Completed", "Flagged")
    numbers = source_nhs_numbers(work / "world")
    reg = pl.read_csv(work / "world/raw/gp/registrations.csv", infer_schema=False)
    names = {f"{f} {s}" for f, s in zip(reg["Forename"], reg["Surname"], strict=True)}
    with _client() as c:
        texts = [json.dumps(a.data, default=str) + (a.description or "") for a in c.read_artifacts()]
        texts += [log.message for log in c.read_logs()]
    assert len(texts) > 5 and any("T01" in t for t in texts)  # artifacts and logs were read
    blob = "\n".join(texts)
    digits = {m.replace(" ", "").replace("-", "") for m in re.findall(r"\d{3}[ -]?\d{3}[ -]?\d{4}", blob)}
    assert not digits & numbers
    assert not [n for n in names if n in blob]
