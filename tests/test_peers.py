"""The bench's peers (scripts/peers.py) compute the same 62 columns as wobble's features.

`make bench` sets wobble's feature time beside a polars and a pandas analyst's; the ratio means
something only if all three compute the same thing. Each peer is run here, in its own process as
the bench runs it, on the tiny world's contacts, and every column is compared with the warehouse's
snapshots, person by person.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
from conftest import ROOT, copy_tree, load_script, remove

PEERS = ROOT / "scripts" / "peers.py"


@pytest.fixture(scope="module")
def snapshots(tiny_world, tmp_path_factory):
    """(contacts Parquet, as-of date, wobble's snapshots at that date as a frame)."""
    from wobble.core.config import load_config
    from wobble.features import build_features

    work = copy_tree(tiny_world, tmp_path_factory.mktemp("peers") / "w")
    cfg = load_config(work / "wobble.toml")
    as_of = cfg.wobble.as_of
    build_features(cfg, [as_of])
    contacts = work / "contacts.parquet"
    con = duckdb.connect(str(cfg.warehouse), read_only=True)
    try:
        con.execute(f"COPY (SELECT person_id, occurred_at, recorded_at, service, status FROM contacts) "
                    f"TO '{contacts}' (FORMAT parquet)")
        columns = load_script(PEERS).COLUMNS
        frame = con.sql(f"SELECT person_id, {', '.join(columns)} FROM feature_snapshots "
                        f"WHERE as_of = DATE '{as_of}'").pl()
    finally:
        con.close()
    yield contacts, as_of, frame
    remove(work.parent)


@pytest.mark.parametrize("impl", ["polars", "pandas"])
def test_peer_matches_wobble(snapshots, impl, tmp_path: Path):
    contacts, as_of, wobble = snapshots
    out = tmp_path / f"{impl}.parquet"
    subprocess.run([sys.executable, str(PEERS), "--contacts", str(contacts), "--as-of", as_of.isoformat(),
                    "--impl", impl, "--out", str(out)], check=True, cwd=ROOT)
    peer = pl.read_parquet(out)
    columns = load_script(PEERS).COLUMNS
    assert len(columns) == 62 and peer.columns == ["person_id", *columns]
    assert peer["person_id"].is_unique().all()
    # People in the cohort with no contact in the year are absent from the peer's output: zero counts.
    joined = wobble.join(peer, on="person_id", how="left", suffix="_peer")
    counts = [c for c in columns if not c.startswith("days_since_")]
    assert joined["did_not_attend_365d"].sum() > 0 and joined["gp_appointment_30d"].sum() > 0
    for c in columns:
        peer_col = pl.col(f"{c}_peer").cast(pl.Int64)
        if c in counts:
            peer_col = peer_col.fill_null(0)
        diff = joined.filter(pl.col(c).cast(pl.Int64).ne_missing(peer_col))
        assert diff.height == 0, f"{impl} differs from wobble on {c} for {diff.height} people"
