"""Features: correct at the as-of date, and never looking ahead.

The compiled SQL is checked against `reference_features`, a slow, obviously correct Python
version, on small random worlds; and a property test shows that records recorded on or after the
as-of date (even if they happened before it) never change a feature.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wobble.config import project_dir
from wobble.errors import ConfigError
from wobble.features import compute_snapshots, load_catalogue
from wobble.vocab import CRISIS_SERVICES, SERVICES, STRENGTH_TAGS, TAGS
from wobble.warehouse import SCHEMA

AS_OF = date(2026, 3, 2)
CAT = load_catalogue(project_dir() / "features")
SYSTEMS = ("gp", "acute", "community", "social_care", "housing")


def reference_features(person: dict, contacts: list[dict], tags: list[dict], as_of: date) -> dict:
    """Every catalogue column for one person, by loops over their records."""
    t = datetime(as_of.year, as_of.month, as_of.day)
    known = [c for c in contacts if c["recorded_at"] < t and c["occurred_at"] < t]
    known = [c for c in known if c["occurred_at"] >= t - timedelta(days=365)]
    ktags = [g for g in tags if g["recorded_at"] < t and g["recorded_at"] >= t - timedelta(days=365)]

    def within(rows, days, col="occurred_at"):
        return [r for r in rows if r[col] >= t - timedelta(days=days)]

    def days_since(rows, col):
        return (as_of - max(r[col] for r in rows).date()).days if rows else None

    out: dict = {}
    for w in (30, 90, 365):
        recent = within(known, w)
        for s in SERVICES:
            out[f"{s}_{w}d"] = sum(c["service"] == s for c in recent)
        out[f"contacts_{w}d"] = sum(c["status"] == "attended" for c in recent)
        out[f"concern_tags_{w}d"] = sum(g["polarity"] == "concern" for g in within(ktags, w, "recorded_at"))
    for w in (90, 365):
        recent = within(known, w)
        out[f"distinct_services_{w}d"] = len({c["service"] for c in recent})
        out[f"did_not_attend_{w}d"] = sum(c["status"] == "did_not_attend" for c in recent)
        out[f"crises_{w}d"] = sum(c["service"] in CRISIS_SERVICES for c in recent)
        out[f"strength_tags_{w}d"] = sum(g["polarity"] == "strength" for g in within(ktags, w, "recorded_at"))
    out["distinct_systems_90d"] = len({c["source_system"] for c in within(known, 90)})
    booked = [c for c in known if c["status"] in ("attended", "did_not_attend")]
    out["dna_rate_365d"] = (sum(c["status"] == "did_not_attend" for c in booked) / len(booked)) if booked else None
    out["days_since_contact"] = days_since(known, "occurred_at")
    out["days_since_crisis"] = days_since([c for c in known if c["service"] in CRISIS_SERVICES], "occurred_at")
    concerns_90 = [g for g in within(ktags, 90, "recorded_at") if g["polarity"] == "concern"]
    out["distinct_concerns_90d"] = len({g["tag"] for g in concerns_90})
    out["days_since_strength"] = days_since([g for g in ktags if g["polarity"] == "strength"], "recorded_at")
    out["age"] = as_of.year - person["birth_year"]
    out["female"] = 1 if person["sex"] == "female" else 0
    out["imd_decile"] = person["imd_decile"]
    out["days_registered"] = (as_of - person["registered_on"]).days
    out["social_care_records_365d"] = sum(c["source_system"] == "social_care" for c in known)
    return out


# --- random small worlds --------------------------------------------------------------------

def _ts(day_offset: int, hour: int) -> datetime:
    return datetime(2025, 1, 1) + timedelta(days=day_offset, hours=hour)


contact_st = st.fixed_dictionaries({
    "person": st.integers(0, 2),
    "occurred": st.integers(0, 520), "hour": st.integers(0, 23),
    "lag_hours": st.integers(0, 24 * 40),
    "service": st.sampled_from(SERVICES),
    "status": st.sampled_from(("attended", "did_not_attend", "cancelled")),
    "system": st.sampled_from(SYSTEMS),
})
tag_st = st.fixed_dictionaries({
    "person": st.integers(0, 2), "recorded": st.integers(0, 520), "hour": st.integers(0, 23),
    "tag": st.sampled_from(TAGS),
})


def _world(contacts_in, tags_in):
    persons = [{"person_id": f"p{i}", "birth_year": 1940 + 20 * i, "sex": ("female", "male")[i % 2],
                "imd_decile": 3 + i, "registered_on": date(2020, 1, 1)} for i in range(3)]
    contacts = [{
        "contact_id": f"c{k}", "person_id": f"p{c['person']}",
        "occurred_at": _ts(c["occurred"], c["hour"]),
        "recorded_at": _ts(c["occurred"], c["hour"]) + timedelta(hours=c["lag_hours"]),
        "service": c["service"], "status": c["status"], "source_system": c["system"],
    } for k, c in enumerate(contacts_in)]
    tags = [{
        "tag_id": f"t{k}", "person_id": f"p{g['person']}", "recorded_at": _ts(g["recorded"], g["hour"]),
        "tag": g["tag"], "polarity": "strength" if g["tag"] in STRENGTH_TAGS else "concern",
    } for k, g in enumerate(tags_in)]
    return persons, contacts, tags


def _snapshots(persons, contacts, tags, as_of=AS_OF) -> dict[str, dict]:
    con = duckdb.connect()
    con.execute(SCHEMA)
    for p in persons:
        con.execute("INSERT INTO persons (person_id, birth_year, sex, imd_decile, team_id, opted_out, "
                    "registered_on, ethnicity_group) VALUES (?, ?, ?, ?, 'T01', false, ?, 'White')",
                    [p["person_id"], p["birth_year"], p["sex"], p["imd_decile"], p["registered_on"]])
    for c in contacts:
        con.execute("INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, NULL, NULL, ?, 'b')",
                    [c["contact_id"], c["person_id"], c["occurred_at"], c["recorded_at"], c["service"],
                     c["status"], c["source_system"]])
    for g in tags:
        con.execute("INSERT INTO tags VALUES (?, ?, ?, ?, ?, NULL, 'gp', 'b')",
                    [g["tag_id"], g["person_id"], g["recorded_at"], g["tag"], g["polarity"]])
    df = compute_snapshots(con, CAT, [as_of])
    con.close()
    return {r["person_id"]: r for r in df.iter_rows(named=True)}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=0, abs_tol=1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contact_st, max_size=25), st.lists(tag_st, max_size=12))
def test_compiled_sql_matches_the_slow_reference(contacts_in, tags_in):
    persons, contacts, tags = _world(contacts_in, tags_in)
    got = _snapshots(persons, contacts, tags)
    assert set(got) == {p["person_id"] for p in persons}
    for p in persons:
        ref = reference_features(p, [c for c in contacts if c["person_id"] == p["person_id"]],
                                 [g for g in tags if g["person_id"] == p["person_id"]], AS_OF)
        assert set(ref) == set(CAT.columns), set(ref) ^ set(CAT.columns)
        for col, expected in ref.items():
            assert _same(got[p["person_id"]][col], expected), (col, got[p["person_id"]][col], expected)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(contact_st, max_size=20), st.lists(tag_st, max_size=10),
       st.lists(contact_st, min_size=1, max_size=10), st.lists(tag_st, max_size=5))
def test_records_known_only_after_the_as_of_date_change_nothing(contacts_in, tags_in, late_c, late_t):
    persons, contacts, tags = _world(contacts_in, tags_in)
    before = _snapshots(persons, contacts, tags)
    t = datetime(AS_OF.year, AS_OF.month, AS_OF.day)
    _, extra_c, extra_t = _world(late_c, late_t)
    for k, c in enumerate(extra_c):
        c["contact_id"] = f"late{k}"
        c["recorded_at"] = max(c["recorded_at"], t)  # recorded on or after the as-of date...
        if k % 2 == 0:
            c["occurred_at"] = t - timedelta(days=3)  # ...even when it happened before it
    for k, g in enumerate(extra_t):
        g["tag_id"] = f"late{k}"
        g["recorded_at"] = max(g["recorded_at"], t)
    after = _snapshots(persons, contacts + extra_c, tags + extra_t)
    assert before.keys() == after.keys()
    for pid in before:
        for col in CAT.columns:
            assert _same(before[pid][col], after[pid][col]), (pid, col)


def test_catalogue_loads_and_describes_every_column():
    assert len(CAT.features) >= 60
    for f in CAT.features:
        assert f.description and "{" not in f.description


HEAD = "family: x\ndescription: d\nfeatures:\n  - "


@pytest.mark.parametrize("feature, message", [
    ("{name: contacts, source: contacts, description: d, aggregate: 'count(*)', windows: [30d]}",
     "already declared"),
    ("{name: a, source: visits, description: d, aggregate: 'count(*)'}", "unknown source"),
    ("{name: a, source: contacts, description: d, aggregate: 'count(*)', where: \"colour = 'red'\"}",
     "unknown column"),
    ("{name: a, source: contacts, description: d, aggregate: 'count(*)', windows: [3 weeks]}",
     "cannot parse window"),
])
def test_catalogue_errors_are_loud(tmp_path, feature, message):
    yaml_text = HEAD + feature + "\n"
    import shutil

    for p in (project_dir() / "features").glob("*.yml"):
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "zz_extra.yml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=message):
        load_catalogue(tmp_path)
