"""Ingest on the 20,000-person world: every row loaded or quarantined with a reason; counts
reconcile; nothing doubled; the injected defects come back as their reasons."""

from __future__ import annotations

import json
import re

import duckdb
import pytest
from conftest import TEST_KEY

from wobble.ingest import ingest
from wobble.ingest.validate import REASONS


def _con(cfg):
    return duckdb.connect(str(cfg.warehouse), read_only=True)


def test_every_file_reconciles(ingested):
    cfg, result = ingested
    assert not result.failed
    for f in result.files:
        assert f.rows_in == f.rows_loaded + f.rows_quarantined + f.rows_duplicate, f.file
    with _con(cfg) as con:
        bad = con.sql("""
            SELECT l.file FROM load_ledger l
            LEFT JOIN (SELECT batch_id, count(*) FILTER (WHERE reason <> 'duplicate') AS q,
                              count(*) FILTER (WHERE reason = 'duplicate') AS d
                       FROM quarantine GROUP BY batch_id) q USING (batch_id)
            WHERE l.rows_in <> l.rows_loaded + l.rows_quarantined + l.rows_duplicate
               OR coalesce(q.q, 0) <> l.rows_quarantined OR coalesce(q.d, 0) <> l.rows_duplicate
        """).fetchall()
        assert bad == []
        # the warehouse holds what was loaded, less the older versions that corrections replaced
        for table in ("contacts", "tags"):
            loaded = sum(f.rows_loaded - f.rows_replaced for f in result.files
                         if cfg.sources[f.source].table == table)
            assert con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0] == loaded
        # each input row is accounted for once: line numbers in quarantine are unique per file
        assert con.sql("SELECT count(*) FROM (SELECT file, line FROM quarantine GROUP BY ALL "
                       "HAVING count(*) > 1)").fetchall()[0][0] == 0


def test_known_defects_are_quarantined_with_their_reasons(ingested, world20k):
    cfg, result = ingested
    reasons = result.reasons()
    assert set(reasons) <= set(REASONS)
    manifest = json.loads((world20k / "truth/manifest.json").read_text())["defects"]
    injected: dict[str, int] = {}
    for key, n in manifest.items():
        injected[key.split(".")[1]] = injected.get(key.split(".")[1], 0) + n
    assert reasons["malformed_line"] == injected["malformed_line"] == 2
    # Defects in the overlap of the two GP extracts appear (and are quarantined) twice; some
    # rows carry two defects and count under the first reason; so: at least, and close to.
    for reason in ("invalid_nhs_number", "impossible_date", "unknown_code", "missing_field"):
        assert injected[reason] * 0.9 <= reasons[reason] <= injected[reason] * 1.1, reason
    # People whose registration was quarantined are not found either: more than injected.
    assert reasons["person_not_found"] >= injected["person_not_found"]
    assert reasons["opted_out"] > 0 and reasons["duplicate"] > 0
    lines = (world20k / "raw/community/contacts.csv").read_text().splitlines()
    with _con(cfg) as con:
        rows = con.sql("SELECT line, raw FROM quarantine WHERE reason = 'malformed_line'").fetchall()
        for line, _raw in rows:
            assert lines[line - 1].startswith("CH_BROKEN")
        # the line numbers of other quarantined rows point at the row they describe
        sample = con.sql("""SELECT line, raw FROM quarantine WHERE source = 'community_contacts'
                            AND reason = 'unknown_code' LIMIT 5""").fetchall()
        for line, raw in sample:
            ref = raw.split("; ")[1].split("=")[1]  # record_id is the second mapped column
            assert lines[line - 1].startswith(ref + ";")
        dup = con.sql("""SELECT line, detail FROM quarantine WHERE reason = 'duplicate'
                         AND file LIKE '%appointments_part2.csv' LIMIT 3""").fetchall()
    part2 = (world20k / "raw/gp/appointments_part2.csv").read_text().splitlines()
    part1_ids = {ln.split(",", 1)[0] for ln in (world20k / "raw/gp/appointments_part1.csv").read_text().splitlines()}
    for line, detail in dup:
        assert "already loaded" in detail
        assert part2[line - 1].split(",", 1)[0] in part1_ids


def test_no_raw_nhs_number_reaches_the_warehouse(ingested, world20k):
    import polars as pl

    cfg, _ = ingested
    numbers = set(pl.read_parquet(world20k / "truth/persons.parquet")["nhs_number"].to_list())
    with _con(cfg) as con:
        for table in ("persons", "contacts", "tags", "quarantine", "load_ledger", "ingest_unmapped"):
            cols = [r[0] for r in con.sql(f"DESCRIBE {table}").fetchall()]
            rows = con.sql(f"SELECT {', '.join(cols)} FROM {table} "
                           "USING SAMPLE reservoir(20000 ROWS) REPEATABLE (42)").fetchall()
            found = {m for row in rows for v in row
                     for m in re.findall(r"\d{10}", re.sub(r"[\s-]", "", str(v))) if m in numbers}
            assert not found, (table, list(found)[:3])


def test_loading_again_changes_nothing(ingested):
    cfg, _ = ingested
    tables = ("persons", "contacts", "tags", "quarantine", "load_ledger", "ingest_unmapped")
    with _con(cfg) as con:
        before = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    again = ingest(cfg, key=TEST_KEY.encode(), report=False)
    assert {f.status for f in again.files} == {"skipped"}
    with _con(cfg) as con:
        after = {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in tables}
    assert after == before


def test_overlapping_extracts_load_each_contact_once(ingested):
    cfg, result = ingested
    part2 = next(f for f in result.files if f.file.endswith("appointments_part2.csv"))
    assert part2.rows_duplicate > 1000  # four weeks of overlap with part 1
    with _con(cfg) as con:
        dupes = con.sql("""SELECT count(*) FROM (SELECT source_system, contact_id FROM contacts
                           GROUP BY ALL HAVING count(*) > 1)""").fetchall()[0][0]
    assert dupes == 0
    corrections = next(f for f in result.files if f.file.endswith("activity_corrections.parquet"))
    assert corrections.rows_replaced > 0


def test_opted_out_people_keep_only_their_flag(ingested):
    cfg, result = ingested
    assert result.opted_out_persons > 500  # about 5.4% of 20,000
    with _con(cfg) as con:
        leaked = con.sql("""SELECT count(*) FROM contacts c JOIN persons p USING (person_id)
                            WHERE p.opted_out""").fetchall()[0][0]
        leaked += con.sql("""SELECT count(*) FROM tags t JOIN persons p USING (person_id)
                             WHERE p.opted_out""").fetchall()[0][0]
        attrs = con.sql("SELECT count(*) FROM persons WHERE opted_out AND birth_year IS NOT NULL").fetchall()[0][0]
        kept = con.sql("SELECT count(*) FROM quarantine WHERE reason = 'opted_out' "
                       "AND raw IS NOT NULL").fetchall()[0][0]
    assert leaked == 0 and attrs == 0 and kept == 0


def test_the_report_shows_the_missing_social_care_feed(ingested, world20k):
    cfg, result = ingested
    gap = json.loads((world20k / "truth/manifest.json").read_text())["feed_gap"]
    md = result.report_md.read_text()
    html = result.report_html.read_text()
    for month in ("2026-08", "2026-09"):
        assert f"| social care | {gap['team_id']} | {month} |" in md
    assert "(gap)" in html and "<caption>" in html
    # and nothing else is flagged: the gap rule does not cry wolf on ordinary variation
    flagged = re.findall(r"^\| ([\w ]+?) \| (T\d+) \| (\d{4}-\d\d) \|", md, flags=re.M)
    assert {(s, t) for s, t, _ in flagged} == {("social care", gap["team_id"])}
    for reason, n in result.reasons().items():
        assert f"{n:,}" in md, reason
    assert "UNKNOWN-CODE" in md  # unmapped codes are reported


def test_a_bad_file_fails_alone_with_one_line(ingested, tmp_path):
    from wobble.core.config import load_config

    cfg, _ = ingested
    text = (cfg.root / "wobble.toml").read_text()
    work = tmp_path / "w"
    work.mkdir()
    (work / "world").symlink_to(cfg.root / "world")
    bad = work / "bad.csv"
    bad.write_bytes(b"\x00\x01binary junk\x00" * 100)
    text = text.replace('path = "world/raw/housing/contacts.csv"', 'path = "bad.csv"')
    (work / "wobble.toml").write_text(text)
    result = ingest(load_config(work / "wobble.toml"), key=TEST_KEY.encode(), report=False)
    failed = [f for f in result.failed]
    assert [f.file for f in failed] == ["bad.csv"]
    assert "\n" not in failed[0].error and "binary" in failed[0].error
    assert sum(f.status == "loaded" for f in result.files) == len(result.files) - 1


@pytest.mark.parametrize("missing_var", [True])
def test_commands_refuse_without_a_key(missing_var, monkeypatch, ingested):
    from wobble.core.config import pseudonym_key
    from wobble.core.errors import ConfigError

    monkeypatch.delenv("WOBBLE_PSEUDONYM_KEY")
    with pytest.raises(ConfigError, match="WOBBLE_PSEUDONYM_KEY"):
        pseudonym_key(ingested[0])


def test_an_extract_loaded_already_is_not_read_again_until_its_file_changes(tiny_world, tmp_path, monkeypatch):
    """A file's stat data (size, inode, modification and change times) stand for its bytes once it
    has settled, as git's index does: an unchanged extract is not hashed again, one rewritten with
    other bytes of the same size and its modification time put back is."""
    import os
    import time
    from pathlib import Path

    from conftest import copy_tree

    import wobble.ingest.reader as reader
    from wobble.core.config import load_config

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    read: list[str] = []
    real = reader.fingerprint
    monkeypatch.setattr(reader, "fingerprint", lambda path: read.append(Path(path).name) or real(path))

    def again() -> tuple[dict, list[str]]:
        read.clear()
        s = ingest(cfg, key=TEST_KEY.encode(), report=False).summary()
        return s, sorted(read)

    first, every = again()  # copies: new inodes, so each file is read once more, and skipped
    assert first["rows_in"] == 0 and len(every) == first["files_skipped"] > 5
    # written moments ago (the copy): not settled when it was hashed, so read again
    assert again()[1] == every
    time.sleep(reader.SETTLED_NS / 1e9)
    again()
    fourth, none = again()
    assert none == [] and fourth["rows_in"] == 0 and fourth["files_skipped"] == first["files_skipped"]

    flags = work / "world" / "raw" / "housing" / "flags.csv"
    st = flags.stat()
    text = flags.read_bytes()
    at = text.rindex(b"0")
    flags.write_bytes(text[:at] + b"1" + text[at + 1:])  # the same size
    os.utime(flags, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same modification time
    fifth, changed = again()
    assert changed == ["flags.csv"] and fifth["rows_in"] > 0
