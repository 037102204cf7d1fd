"""Run as a Prefect flow, ingest attaches its data-quality report as a Markdown artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TEST_KEY
from ingest_kit import NOTES_HEADER, VISITS_HEADER, csv_text, numbers, project, register, visit


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_the_report_is_a_prefect_artifact_inside_a_flow(harness, tmp_path):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from wobble.core.config import load_config
    from wobble.ingest import ingest

    a = numbers(1)[0]
    cfg_path = project(tmp_path, files={"register.csv": register([a]),
                                        "visits.csv": csv_text(VISITS_HEADER, [visit("V1", a), visit("V2", "123")]),
                                        "notes.csv": csv_text(NOTES_HEADER, [])})

    @task
    def load(path: str) -> str:
        return str(ingest(load_config(path), key=TEST_KEY.encode()).report_md)

    @flow
    def ingest_flow(path: str) -> str:
        return load(path)

    report = ingest_flow(str(cfg_path))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["data-quality"])))
    assert artifacts, "no data-quality artifact"
    assert artifacts[0].type == "markdown"
    assert artifacts[0].data == Path(report).read_text()
    from wobble.core.vocab import reason_label

    assert reason_label("invalid_nhs_number") in artifacts[0].data
