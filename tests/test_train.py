"""Training: specs, time splits, labels against a slow reference, determinism, and a second target."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import duckdb
import numpy as np
import pytest
from conftest import TEST_KEY, copy_tree, remove

from wobble.core.config import PACKAGED_MODELS
from wobble.core.errors import ConfigError
from wobble.core.warehouse import SCHEMA
from wobble.models.cohort import label_sql
from wobble.models.spec import ModelSpec, load_spec, timesplit

MODELS = PACKAGED_MODELS


# --- specs and splits -----------------------------------------------------------------------------


def test_every_shipped_spec_loads():
    for path in MODELS.glob("*.yml"):
        assert load_spec(MODELS, path.stem).name == path.stem


def spec_dict(**changes) -> dict:
    import yaml

    raw = yaml.safe_load((MODELS / "crisis_90d.yml").read_text())
    for dotted, value in changes.items():
        d = raw
        *path, last = dotted.split(".")
        for k in path:
            d = d[k]
        d[last] = value
    return raw


@pytest.mark.parametrize(("change", "message"), [
    ({"estimator.lerning_rate": 0.1}, "estimator.lerning_rate: unknown key"),
    ({"target.services": ["ae_attendance", "teleportation"]}, "unknown service(s): teleportation"),
    ({"estimator.params": {"seed": 3}}, "set by wobble"),
    ({"schedule.train_start": "2024-12-03"}, "is not a Monday"),
    ({"estimator.monotone": {"crises_90d": 2}}, "estimator.monotone.crises_90d"),
])
def test_bad_specs_name_the_key(tmp_path, change, message):
    import yaml

    (tmp_path / "crisis_90d.yml").write_text(yaml.safe_dump(spec_dict(**change), sort_keys=False))
    with pytest.raises(ConfigError) as err:
        load_spec(tmp_path, "crisis_90d")
    assert message in str(err.value) and "crisis_90d.yml" in str(err.value)


def test_timesplit_worked_example():
    """The example in timesplit's docstring and in models/crisis_90d.yml."""
    spec = load_spec(MODELS, "crisis_90d")
    s = timesplit(spec.schedule, 90, date(2026, 11, 23), data_start=date(2023, 11, 27))
    assert s.test[0] == date(2026, 6, 1) and s.test[-1] == date(2026, 8, 24) and len(s.test) == 7
    # a year of data before the first (2024-12-02), on the 4-weekly grid back from 2026-03-02
    assert s.train[-1] == date(2026, 3, 2) and s.train[0] == date(2024, 12, 9) and len(s.train) == 17
    assert all((b - a).days == 28 for a, b in zip(s.train, s.train[1:], strict=False))
    assert s.last_label_date == date(2026, 5, 30) and s.gap_days == 2
    assert s.test[-1] + timedelta(days=90) <= s.data_end  # every test outcome has matured
    few = timesplit(spec.schedule.model_copy(update={"max_train_dates": 4}), 90, date(2026, 11, 23))
    assert few.train == s.train[-4:]


@pytest.mark.parametrize("end", [date(2026, 11, 23), date(2026, 7, 6), date(2025, 12, 1)])
@pytest.mark.parametrize("horizon", [30, 90, 180])
def test_no_training_outcome_overlaps_the_test_period(end, horizon):
    spec = load_spec(MODELS, "crisis_90d")
    try:
        s = timesplit(spec.schedule, horizon, end)
    except ConfigError as exc:
        assert "not enough history" in str(exc)
        return
    assert max(s.train) + timedelta(days=horizon) <= min(s.test)
    assert s.gap_days >= 1 and max(s.test) + timedelta(days=horizon) <= end


# --- labels against a slow reference --------------------------------------------------------------


def slow_label(spec: ModelSpec, contacts: list[dict], person: str, as_of: date) -> int:
    t = spec.target
    start = datetime(as_of.year, as_of.month, as_of.day)
    mine = [c for c in contacts if c["person_id"] == person and c["service"] in t.services
            and (not t.statuses or c["status"] in t.statuses)]
    after = sum(start <= c["occurred_at"] < start + timedelta(days=t.horizon_days) for c in mine)
    if t.kind == "crisis":
        return int(after > 0)
    before = sum(start - timedelta(days=t.prior_days) <= c["occurred_at"] < start for c in mine)
    return int(after >= t.min_contacts and after >= t.ratio * before * t.horizon_days / t.prior_days)


@pytest.mark.parametrize("model", ["crisis_90d", "escalation_90d"])
@pytest.mark.parametrize("seed", range(3))
def test_labels_match_a_slow_reference(model, seed):
    spec = load_spec(MODELS, model)
    rng = np.random.default_rng(seed)
    services = ["ae_attendance", "gp_appointment", "emergency_admission", "pharmacy_contact"]
    as_ofs = [date(2026, 3, 2), date(2026, 3, 30)]
    people = [f"p{i:02d}" for i in range(25)]
    contacts = []
    for i in range(600):
        when = datetime(2025, 9, 1) + timedelta(hours=int(rng.integers(0, 24 * 330)))
        contacts.append({"contact_id": str(i), "person_id": people[int(rng.integers(0, len(people)))],
                         "occurred_at": when, "recorded_at": when, "service": services[int(rng.integers(0, 4))],
                         "status": ["attended", "did_not_attend"][int(rng.random() < 0.2)], "mode": None,
                         "professional_id": None, "source_system": "gp", "batch_id": "b"})
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.executemany("INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [list(c.values()) for c in contacts])
    con.execute("CREATE TABLE rows_ (person_id VARCHAR, as_of DATE)")
    con.executemany("INSERT INTO rows_ VALUES (?, ?)", [[p, d] for p in people for d in as_ofs])
    got = {(p, d): lab for p, d, lab in con.sql(label_sql(spec, "rows_")).fetchall()}
    want = {(p, d): slow_label(spec, contacts, p, d) for p in people for d in as_ofs}
    assert got == want
    assert 0 < sum(want.values()) < len(want)  # the case is not trivial


# --- training on a tiny world ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def twice(tmp_path_factory, tiny_world):
    """crisis_90d trained twice (unregistered) with one seed on one copy of the tiny world."""
    from wobble.core.config import load_config
    from wobble.models.train import train

    work = copy_tree(tiny_world, tmp_path_factory.mktemp("train") / "w")
    cfg = load_config(work / "wobble.toml")
    yield cfg, [train(cfg, "crisis_90d", key=TEST_KEY.encode(), register=False) for _ in range(2)]
    remove(work.parent)


def test_two_trainings_with_one_seed_give_identical_metrics(twice):
    _, (a, b) = twice
    assert a.metrics == b.metrics
    assert a.evaluation["subgroups"] == b.evaluation["subgroups"]
    assert a.evaluation["training"]["candidates"] == [
        {**c, "seconds": a.evaluation["training"]["candidates"][i]["seconds"]}
        for i, c in enumerate(b.evaluation["training"]["candidates"])]


def test_training_reports_every_metric_with_an_interval(twice):
    _, (a, _) = twice
    m = a.metrics
    for k in ("auroc", "auprc", "brier", "calibration_slope", "calibration_intercept", "ece",
              "precision_at_capacity", "recall_at_capacity", "nne_at_capacity", "alerts_per_1000_per_week",
              "baseline_auroc", "baseline_precision_at_capacity", "oracle_auroc", "skill_ratio"):
        assert k in m and f"{k}_low" in m and m[f"{k}_low"] <= m[k] <= m[f"{k}_high"], k
    lead = a.evaluation["lead_time"]["model"]
    assert 0 <= lead["share_preceded_by_listing"]["value"] <= 1 and lead["events"] > 0
    assert a.split.gap_days >= 1 and a.rows_train > 0 and a.rows_test > 0


def test_people_are_never_in_both_training_and_test(twice):
    from wobble.core.warehouse import connect
    from wobble.models.cohort import load_rows
    from wobble.models.spec import load_spec as ls

    cfg, (a, _) = twice
    spec = ls(cfg.models_dir, "crisis_90d")
    with connect(cfg.warehouse, read_only=True) as con:
        rows = load_rows(con, spec, a.split, ["age"])
    train_people = set(rows.filter(rows["part"] == "train")["person_id"])
    test_people = set(rows.filter(rows["part"] == "test")["person_id"])
    assert train_people and test_people and not train_people & test_people
    assert set(rows.filter(rows["part"] == "test")["as_of"]) == set(a.split.test)
    share = len(test_people) / (len(test_people) + len(train_people))
    assert share == pytest.approx(a.evaluation["test_share"], abs=0.05)
    assert a.evaluation["test_share"] == spec.schedule.test_share_of_people  # 3,000 people: under the cap


def test_test_dates_hold_the_held_out_people_only_and_count_as_not_built(twice):
    """Training builds its test dates for the held-out people alone; anything that would list or
    monitor people at such a date must see them as not built, and build them for everyone."""
    from wobble.core.warehouse import connect
    from wobble.features.build import dates_to_build

    cfg, (a, _) = twice
    with connect(cfg.warehouse, read_only=True) as con:
        assert dates_to_build(con, a.split.train) == []
        assert dates_to_build(con, a.split.test) == sorted(a.split.test)
        held = con.execute("SELECT count(DISTINCT person_id) FROM feature_snapshots WHERE as_of IN "
                           f"(SELECT unnest([{', '.join(repr(d.isoformat()) for d in a.split.test)}]::DATE[]))"
                           ).fetchone()[0]
        everyone = con.execute("SELECT count(*) FROM persons WHERE NOT opted_out").fetchone()[0]
    assert 0 < held < 0.5 * everyone  # 30% of people held out, adults and children alike


def test_escalation_trains_evaluates_and_gets_a_card_through_the_same_code(tmp_path, tiny_world):
    from wobble.core.config import load_config
    from wobble.models.train import train

    work = copy_tree(tiny_world, tmp_path / "w")
    cfg = load_config(work / "wobble.toml")
    result = train(cfg, "escalation_90d", key=TEST_KEY.encode(), register=False)
    assert 0.02 < result.metrics["prevalence"] < 0.5
    assert result.metrics["auroc"] > 0.6
    assert "oracle_auroc" not in result.metrics  # the simulator's truth is of crises, not escalation
    assert result.evaluation["lead_time"] is None
    text = result.card_md.read_text()
    assert "Rising need in the next 90 days" in text and "at least 2.0 times the person's own rate" in text
    # a change target has no dated event: warning time is measured against crises, where the lists
    # are graded, and is otherwise said not to apply
    if result.evaluation.get("lists"):
        assert "warning time is measured against crises instead" in text
    else:
        assert "Not applicable: this target is a change in the rate" in text


def test_a_calibrator_pickled_before_the_stages_became_packages_still_loads():
    """A champion trained by an earlier wobble pickled its calibrator as `wobble.train._Calibrator`."""
    import io
    import pickle
    import sys
    import types

    from sklearn.isotonic import IsotonicRegression

    from wobble.models.fit import _Calibrator
    from wobble.models.tracking import load_pickle

    old = types.ModuleType("wobble.train")
    old._Calibrator = type("_Calibrator", (_Calibrator,), {"__module__": "wobble.train"})
    sys.modules["wobble.train"] = old
    try:
        blob = pickle.dumps(old._Calibrator(IsotonicRegression().fit([0.1, 0.9], [0, 1])))
    finally:
        del sys.modules["wobble.train"]
    assert b"wobble.train" in blob
    loaded = load_pickle(io.BytesIO(blob))
    assert type(loaded) is _Calibrator and loaded.predict(np.array([0.9]))[0] == 1.0


def test_a_sample_read_alone_fits_the_same_model():
    """Training reads only the rows its fit uses (`sample_sql`) and says how many fitting rows there
    were in all (`n_fit`): the trees must be those of a fit given every row."""
    import polars as pl

    from wobble.models.fit import fit_lightgbm, n_fitting, sample_sql

    spec = load_spec(MODELS, "crisis_90d")
    est = spec.estimator.model_copy(update={"max_rows": 3000, "search_rows": 1500,
                                            "params": {**spec.estimator.params, "n_estimators": 40}})
    spec = spec.model_copy(update={"estimator": est})
    rng = np.random.default_rng(5)
    n, k = 20_000, 6
    person = rng.integers(0, 6000, n)
    draw = rng.random(6000)[person]
    X = rng.normal(size=(n, k))
    y = (X[:, 0] + rng.normal(size=n) > 1.5).astype(int)
    features = [f"f{i}" for i in range(k)]
    monotone = {f: 0 for f in features}
    spec = spec.model_copy(update={"estimator": spec.estimator.model_copy(update={"monotone": monotone})})
    whole = fit_lightgbm(spec, X, y, draw, features, seed=7)
    frame = pl.DataFrame({"person_draw": draw})  # noqa: F841 (read by name in the SQL)
    kept = duckdb.sql(f"SELECT {sample_sql(spec, n_fitting(spec, draw))} AS kept FROM frame").pl()["kept"].to_numpy()
    assert 0 < kept.sum() < n / 2  # a real sample: most rows are not read
    sampled = fit_lightgbm(spec, X[kept], y[kept], draw[kept], features, seed=7, n_fit=n_fitting(spec, draw))
    def timeless(fit):
        return [{k: v for k, v in c.items() if k != "seconds"} for c in fit.candidates]

    assert timeless(whole) == timeless(sampled) and whole.chosen == sampled.chosen
    assert whole.booster.model_to_string() == sampled.booster.model_to_string()
    assert np.array_equal(X[whole.validation], X[kept][sampled.validation])  # the calibrator's rows too
    # without n_fit the shares would be the sample's, and the rows used another set
    other = fit_lightgbm(spec, X[kept], y[kept], draw[kept], features, seed=7)
    assert other.candidates[0]["rows"] != whole.candidates[0]["rows"]


def test_a_target_the_data_never_show_says_so_in_one_line_naming_the_spec(tmp_path, tiny_world):
    """Concerns rising needs concern tags: on data that never show the outcome (here, a count no one
    reaches), training stops with one line naming the outcome and the spec to change."""
    from wobble.core.config import load_config
    from wobble.core.errors import WobbleError
    from wobble.models.train import train

    work = copy_tree(tiny_world, tmp_path / "w")
    copy_tree(PACKAGED_MODELS, work / "models")
    ew = work / "models" / "early_warning_90d.yml"
    text = ew.read_text()
    assert "{source: tags, polarity: concern, min_count: 2," in text
    ew.write_text(text.replace("{source: tags, polarity: concern, min_count: 2,",
                               "{source: tags, polarity: concern, min_count: 500,"))
    toml = work / "wobble.toml"
    toml.write_text(toml.read_text().replace("[paths]\n", '[paths]\nmodels = "models"\n', 1))
    with pytest.raises(WobbleError) as err:
        train(load_config(toml), "early_warning_90d", key=TEST_KEY.encode(), register=False)
    message = str(err.value)
    assert "\n" not in message
    assert "training rows with 0 outcomes (concerns rising well above their usual)" in message
    assert "change its target in models/early_warning_90d.yml" in message
