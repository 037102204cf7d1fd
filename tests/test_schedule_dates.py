"""Training dates come from the site's data, not the demo's calendar: a warehouse whose records
begin in 2019, or go back ten years, trains on the shipped specs unchanged."""

from __future__ import annotations

from datetime import date, timedelta

import duckdb
import pytest
from conftest import ROOT, TEST_KEY

from wobble.core.errors import ConfigError
from wobble.features import data_start
from wobble.models.spec import load_spec, timesplit

MODELS = ROOT / "models"


@pytest.mark.parametrize("name", ["crisis_90d", "early_warning_90d", "escalation_90d"])
@pytest.mark.parametrize("start,end", [(date(2019, 1, 7), date(2021, 6, 28)),     # other years
                                       (date(2016, 11, 28), date(2026, 11, 23)),  # ten years
                                       (date(2023, 11, 27), date(2026, 11, 23))])  # the demo's
def test_the_shipped_schedules_fit_any_span_of_data(name, start, end):
    spec = load_spec(MODELS, name)
    s = timesplit(spec.schedule, spec.target.horizon_days, end, data_start=start, history_days=365)
    assert s.train[0] >= start + timedelta(days=365)  # a year of data before every training date
    assert s.train[-1] - s.train[0] <= timedelta(weeks=104)  # and ten years do not all train
    assert max(s.train) + timedelta(days=spec.target.horizon_days) <= min(s.test)
    assert s.test[-1] + timedelta(days=spec.target.horizon_days) <= end
    assert len(s.train) >= 8


def test_too_little_history_names_the_first_date_it_would_allow():
    spec = load_spec(MODELS, "early_warning_90d")
    with pytest.raises(ConfigError, match=r"before 2020-01-13, the first Monday with 365 days of data before it "
                                          r"\(from 2019-01-07\)"):
        timesplit(spec.schedule, 90, date(2020, 6, 29), data_start=date(2019, 1, 7))


def test_a_fixed_train_start_still_bounds_training():
    spec = load_spec(MODELS, "crisis_90d")
    schedule = spec.schedule.model_copy(update={"train_start": date(2025, 6, 2)})
    s = timesplit(schedule, 90, date(2026, 11, 23), data_start=date(2023, 11, 27))
    assert s.train[0] >= date(2025, 6, 2) and s.train[-1] == date(2026, 3, 2)


def _con(rows: list[tuple[str, int]]) -> duckdb.DuckDBPyConnection:
    """contacts and tags holding `n` records on each `day`."""
    con = duckdb.connect()
    days = ", ".join(f"('{d}'::TIMESTAMP, {n})" for d, n in rows) or "(NULL::TIMESTAMP, 0)"
    con.execute(f"CREATE TABLE contacts AS SELECT d AS occurred_at FROM (VALUES {days}) v(d, n), range(n) "
                "WHERE d IS NOT NULL")
    con.execute("CREATE TABLE tags AS SELECT occurred_at AS recorded_at FROM contacts")
    return con


def test_data_start_is_where_records_begin_in_earnest():
    # a few appointments from 1998 in a GP extract; the feed itself from March 2019, the first
    # month part-way (10 days of 30: above a tenth of the usual month)
    months = [(f"2019-{m:02d}-01", 300) for m in range(4, 13)]
    con = _con([("1998-05-04", 2), ("2003-01-02", 1), ("2019-03-21", 100)] + months)
    assert data_start(con, "contacts") == date(2019, 3, 21)
    assert data_start(con, "tags") == date(2019, 3, 21)
    # a first month with fewer than a tenth of the usual records does not begin the data
    con = _con([("2019-03-30", 20)] + months)
    assert data_start(con, "contacts") == date(2019, 4, 1)
    assert data_start(_con([]), "contacts") is None


def test_a_world_on_other_dates_trains_with_the_shipped_specs(tmp_path):
    """A 3,000-person world from 2019 to 2021, configured as the demo's: the early-warning model trains,
    on dates within its data (with a fixed train_start of 2024-12-02 it could not)."""
    from wobble.core.config import load_config
    from wobble.ingest import ingest
    from wobble.models.train import train
    from wobble.synth import WORLD_START, WORLD_WEEKS, demo_config, synth

    start, weeks = date(2019, 1, 7), 120
    synth(persons=3000, seed=5, out=tmp_path / "world", start=start, weeks=weeks)
    demo_end = (WORLD_START + timedelta(weeks=WORLD_WEEKS)).isoformat()
    end = start + timedelta(weeks=weeks)
    (tmp_path / "wobble.toml").write_text(demo_config("world", seed=5).replace(demo_end, end.isoformat()))
    cfg = load_config(tmp_path / "wobble.toml")
    ingest(cfg, key=TEST_KEY.encode())
    result = train(cfg, "early_warning_90d", key=TEST_KEY.encode(), register=False)
    split = result.split
    assert split.train[0] >= start + timedelta(days=365) and split.test[-1] + timedelta(days=90) <= end
    assert result.metrics["auroc"] > 0.6
