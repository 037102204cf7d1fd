"""The data-quality report opens with an overall status line and the change since the last run; every month has
a column; its wide tables scroll by keyboard."""

from __future__ import annotations

import json
import re

from conftest import TEST_KEY, copy_tree

from wobble.ingest.quality import change_since, status


def _data(**over) -> dict:
    summary = {"files_failed": 0, "rows_loaded": 1000, "rows_quarantined": 10, "rows_in": 1010}
    summary.update(over.pop("summary", {}))
    return {"started": "05 December 2026 06:30", "summary": summary, "unmapped_total": 0, "gaps": [],
            "warnings": [], "persons": {"total": 300}, **over}


def test_the_status_line_judges_the_run():
    assert status(_data())["level"] == "ok"
    assert status(_data())["text"].startswith("All well: every file loaded")
    look = status(_data(gaps=[object(), object()], unmapped_total=3))
    assert look["level"] == "look" and "2 team-month feed gaps" in look["text"] and "3 unmapped codes" in look["text"]
    assert status(_data(summary={"rows_quarantined": 100}))["level"] == "look"  # 9.9% quarantined
    # opt-outs and records entered in error are the source's word, not a fault: 60 of 100 leaves 4.0%
    honoured = {"rows_quarantined": 100, "quarantine_reasons": {"opted_out": 50, "entered_in_error": 10,
                                                                "invalid_nhs_number": 40}}
    assert status(_data(summary=honoured))["level"] == "ok"
    honoured["quarantine_reasons"] = {"opted_out": 40, "invalid_nhs_number": 60}  # 5.9% for a fault
    assert "5.9% of rows quarantined for a fault" in status(_data(summary=honoured))["text"]
    failed = status(_data(summary={"files_failed": 1}))
    assert failed["level"] == "problem" and failed["text"].startswith("Problem: a file could not be loaded")


def test_the_change_since_the_last_run_is_each_fact_before_and_after():
    before = status(_data())["facts"]
    now = status(_data(summary={"rows_quarantined": 16}, gaps=[object()]))["facts"]
    change = change_since(before, now)
    assert change["since"] == "05 December 2026 06:30"
    assert "rows quarantined: 10 → 16 (+6)" in change["lines"] and "team-month feed gaps: 0 → 1 (+1)" in change["lines"]
    assert "rows loaded: 1,000 (unchanged)" in change["lines"]
    assert change_since(None, now)["lines"] == ["No earlier data-quality report in this folder: this is the first run."]


def test_a_second_run_compares_with_the_first_and_every_table_scrolls_by_keyboard(tiny_world, tmp_path):
    from wobble.core.config import load_config
    from wobble.ingest import ingest

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    first = sorted((cfg.outputs / "reports").glob("data-quality-*.json"))
    second = ingest(cfg, key=TEST_KEY.encode())  # nothing new: every file skipped
    md, html = second.report_md.read_text(), second.report_html.read_text()
    assert re.search(r"^\*\*Status: (All well|Needs a look|Problem)", md, re.M)
    assert "## Since the last run" in md and "Compared with the ingest run started" in md
    assert re.search(r"^- rows loaded: [\d,]+ → 0 \(-[\d,]+\)$", md, re.M)  # all new then, nothing new now
    assert first and json.loads(first[-1].read_text())["rows_loaded"] > 0
    # Every wide table's wrapper takes the keyboard focus and is named, so it can be scrolled without a mouse.
    wrappers = re.findall(r'<div class="scroll"[^>]*>', html)
    assert wrappers and all('tabindex="0"' in w and 'role="region"' in w and "aria-label=" in w for w in wrappers)
    # Every month from the first to the last has a column in every system's month table.
    heads = re.findall(r"rows by team and month</caption>\s*<thead><tr>(.*?)</tr>", html, re.S)
    months = [re.findall(r">(\d{4}-\d\d)<", h) for h in heads]
    assert months and all(m == months[0] for m in months)
    ym = [(int(m[:4]), int(m[5:])) for m in months[0]]
    assert all((b[0] * 12 + b[1]) - (a[0] * 12 + a[1]) == 1 for a, b in zip(ym, ym[1:], strict=False))


def test_what_an_export_holds_that_wobble_does_not_read_is_listed_not_judged(tmp_path):
    """A whole-system FHIR export holds resource types wobble does not read and diagnoses that are
    no concern tag, every week: the report lists them under 'Left alone' and the status stays 'All
    well'. An Encounter whose class maps to nothing still fails rows, and still counts."""
    from datetime import datetime

    from test_ingest_other_vendors import SCT, _coding, _enc, _export, _patient

    from wobble.core.config import with_fhir_folder
    from wobble.ingest import ingest

    diabetes = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                "category": [_coding("http://terminology.hl7.org/CodeSystem/condition-category",
                                     "problem-list-item")],
                "code": _coding(SCT, "44054006"), "recordedDate": "2025-03-01"}

    nhs = [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}]

    def report(encounters: list[dict]) -> tuple[str, dict]:
        encounters = [{**e, "meta": {"lastUpdated": "2025-03-01T12:00:00Z"}} for e in encounters]
        folder = _export(tmp_path / f"x{len(encounters)}", {
            "Patient": [_patient("p1", identifier=nhs)], "Encounter": encounters, "Condition": [diabetes],
            "Practitioner": [{"resourceType": "Practitioner", "id": "d1"}],
            "Medication": [{"resourceType": "Medication", "id": "m1"}]})
        cfg, _ = with_fhir_folder(folder)
        cfg = cfg.model_copy(update={"root": folder.parent / f"w{len(encounters)}"})
        result = ingest(cfg, key=TEST_KEY.encode(), now=datetime(2025, 4, 1))
        return result.report_md.read_text(), json.loads(result.report_md.with_suffix(".json").read_text())

    md, facts = report([_enc("e1", "EMER")])
    assert "**Status: All well" in md, md[:600]
    assert (facts["unmapped_codes"], facts["passed_over_codes"], facts["warnings"]) == (0, 1, 0)
    left = md.split("### Left alone")[1].split("##")[0]
    assert "fhir: 2 files of resource types wobble does not read: Medication, Practitioner" in left
    assert "Condition.ndjson: 1 resource is not one wobble reads" in left
    assert "People: 1 in the warehouse, in 1 team." in md
    assert "44054006" in md.split("## Unmapped codes")[1]  # still listed, to be mapped if it should be

    md, facts = report([_enc("e1", "EMER"), _enc("e2", "NOSUCH")])
    assert re.search(r"\*\*Status: Needs a look \(\d unmapped codes", md)
    assert facts["unmapped_codes"] >= 1 and facts["passed_over_codes"] == 1
