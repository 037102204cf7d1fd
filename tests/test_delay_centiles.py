"""The card's delay centiles per source system come from counts per delay (bounded memory at any
size); they must be exactly what median() and quantile_cont() over every record give."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from wobble.models.data_summary import SYSTEMS_SQL

REFERENCE = """
    SELECT source_system AS system, count(*) AS records, min(occurred_at)::DATE::VARCHAR AS first,
           max(occurred_at)::DATE::VARCHAR AS last,
           round(median(date_diff('hour', occurred_at, recorded_at)) / 24.0, 1) AS median_delay_days,
           round(quantile_cont(date_diff('hour', occurred_at, recorded_at), 0.9) / 24.0, 1) AS p90_delay_days
    FROM contacts GROUP BY source_system ORDER BY source_system"""


@pytest.mark.parametrize("seed", range(6))
def test_delay_centiles_match_the_holistic_aggregates(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    systems = rng.choice(["gp", "acute", "housing"], n)
    # few distinct delays, so ties and interpolation between neighbours both happen
    hours = rng.choice(rng.integers(0, 2000, int(rng.integers(1, 30))), n)
    start = np.datetime64("2025-01-01T00:00") + rng.integers(0, 500 * 24, n).astype("timedelta64[h]")
    con = duckdb.connect()
    con.execute("CREATE TABLE contacts (source_system VARCHAR, occurred_at TIMESTAMP, recorded_at TIMESTAMP)")
    rows = [(s, o.item(), (o + np.timedelta64(int(h), "h")).item())
            for s, o, h in zip(systems, start, hours, strict=True)]
    con.executemany("INSERT INTO contacts VALUES (?, ?, ?)", rows)
    assert con.sql(SYSTEMS_SQL).fetchall() == con.sql(REFERENCE).fetchall()
