"""The peers `make bench` measures wobble's features against: 62 window columns for one as-of date,
written as a polars analyst and a pandas analyst would write them, from the same contacts in Parquet.

Input: a Parquet file of contacts (person_id, occurred_at, recorded_at, service, status), one row
per contact. Output: a Parquet file, one row per person with a contact in the year before the
as-of date T, and the columns

- `<service>_30d`, `_90d`, `_365d`: contacts with each of the 15 services in the window;
- `did_not_attend_90d`, `_365d`: missed appointments;
- `days_since_<service>`: days from the day of the last contact with the service to T (1: the day
  before; blank: none in the year).

A record counts when it was known before T (`recorded_at < T`) and happened in the w days before T,
by whole days (the same rule as wobble's feature compiler, so the columns can be compared).

    python scripts/peers.py --contacts contacts.parquet --as-of 2026-11-23 --impl polars --out out.parquet
"""

from __future__ import annotations

import argparse
from datetime import date, datetime, timedelta
from pathlib import Path

from wobble.core.vocab import SERVICES

WINDOWS = (30, 90, 365)
DNA_WINDOWS = (90, 365)
COLUMNS = ([f"{s}_{w}d" for s in SERVICES for w in WINDOWS] + [f"did_not_attend_{w}d" for w in DNA_WINDOWS]
           + [f"days_since_{s}" for s in SERVICES])


def with_polars(contacts: Path, as_of: date, out: Path) -> None:
    """A fluent polars analyst: a lazy scan, a filter, then one group_by with conditional sums."""
    import polars as pl

    t = datetime.combine(as_of, datetime.min.time())
    days = (pl.lit(as_of) - pl.col("occurred_at").dt.date()).dt.total_days()
    aggs = [((pl.col("service") == s) & (pl.col("days") <= w)).sum().alias(f"{s}_{w}d")
            for s in SERVICES for w in WINDOWS]
    aggs += [((pl.col("status") == "did_not_attend") & (pl.col("days") <= w)).sum().alias(f"did_not_attend_{w}d")
             for w in DNA_WINDOWS]
    aggs += [pl.col("days").filter(pl.col("service") == s).min().alias(f"days_since_{s}") for s in SERVICES]
    (pl.scan_parquet(contacts)
     .filter(pl.col("recorded_at") < t, pl.col("occurred_at") < t,
             pl.col("occurred_at") >= t - timedelta(days=max(WINDOWS)))
     .select("person_id", "service", "status", days.alias("days"))
     .group_by("person_id").agg(aggs)
     .sink_parquet(out))


def with_pandas(contacts: Path, as_of: date, out: Path) -> None:
    """A pandas analyst: read the file, filter, then one groupby-unstack per window."""
    import pandas as pd

    t = pd.Timestamp(as_of)
    df = pd.read_parquet(contacts, columns=["person_id", "occurred_at", "recorded_at", "service", "status"])
    df = df[(df.recorded_at < t) & (df.occurred_at < t) & (df.occurred_at >= t - pd.Timedelta(days=max(WINDOWS)))]
    df = df.assign(days=(t - df.occurred_at.dt.normalize()).dt.days)
    parts = []
    for w in WINDOWS:
        counts = df[df.days <= w].groupby(["person_id", "service"]).size().unstack(fill_value=0)
        parts.append(counts.reindex(columns=list(SERVICES), fill_value=0).add_suffix(f"_{w}d"))
    dna = df[df.status == "did_not_attend"]
    for w in DNA_WINDOWS:
        parts.append(dna[dna.days <= w].groupby("person_id").size().rename(f"did_not_attend_{w}d"))
    last = df.groupby(["person_id", "service"]).days.min().unstack()
    parts.append(last.reindex(columns=list(SERVICES)).add_prefix("days_since_"))
    wide = pd.concat(parts, axis=1)
    counts = [c for c in COLUMNS if not c.startswith("days_since_")]
    wide[counts] = wide[counts].fillna(0).astype("int64")
    wide[COLUMNS].reset_index(names="person_id").to_parquet(out, index=False)


IMPLEMENTATIONS = {"polars": with_polars, "pandas": with_pandas}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contacts", type=Path, required=True)
    ap.add_argument("--as-of", type=date.fromisoformat, required=True)
    ap.add_argument("--impl", choices=sorted(IMPLEMENTATIONS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    IMPLEMENTATIONS[args.impl](args.contacts, args.as_of, args.out)


if __name__ == "__main__":
    main()
