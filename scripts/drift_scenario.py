"""A monitoring scenario on a copy of a synthetic world's warehouse: huddle outcomes, then drift.

    python scripts/drift_scenario.py --config data/demo/wobble.toml --outcomes 2026-08-24
    python scripts/drift_scenario.py --config data/demo/wobble.toml --drift

`--outcomes DATE` records deterministic huddle outcomes for the lists published at DATE, as a
huddle would through the review page: the top three quarters of each list get a decision cycling
through the seven kinds; the rest are not reached. `--drift` injects two data changes a monitor must
catch, then rebuilds the feature snapshots at the current as-of date:

- the acute trust's new system, live from 1 June 2026, sends every A&E attendance twice under a new
  record id;
- the first team's GP extract stops arriving from 1 August 2026.

Both change the warehouse in place: use them on a copy (tests do), never on real data.
Each is deterministic; running `--drift` twice injects the changes once.
"""

from __future__ import annotations

import argparse
from datetime import date

from wobble.core.config import Config, load_config
from wobble.core.warehouse import connect, transaction

KINDS = ("discussed_no_action", "already_supported", "outreach_agreed", "referred_on", "not_a_concern",
         "data_problem", "deferred")
DUPLICATES_FROM = date(2026, 6, 1)
FEED_STOPS = date(2026, 8, 1)
BATCH = "drift-scenario"


def record_outcomes(cfg: Config, as_of: date) -> int:
    """Record one decision per listed person in the top three quarters of each team's list at `as_of`."""
    kinds = "[" + ", ".join(f"'{k}'" for k in KINDS) + "]"
    with connect(cfg.warehouse) as con, transaction(con):
        con.execute("DELETE FROM huddle_outcomes WHERE as_of = ? AND recorded_by = 'synthetic huddle'", [as_of])
        con.execute(f"""
            INSERT INTO huddle_outcomes
            SELECT 'syn-' || team_id || '-' || as_of || '-' || rank, team_id, as_of, person_id,
                   {kinds}[1 + (rank - 1) % {len(KINDS)}], NULL, 'synthetic huddle',
                   as_of + INTERVAL 2 DAY + INTERVAL 10 HOUR
            FROM (SELECT DISTINCT team_id, as_of, person_id, rank FROM huddle_lists WHERE as_of = ?)
            WHERE rank <= (SELECT 0.75 * max(rank) FROM huddle_lists WHERE as_of = ?)
        """, [as_of, as_of])
        return con.execute("SELECT count(*) FROM huddle_outcomes WHERE as_of = ? "
                           "AND recorded_by = 'synthetic huddle'", [as_of]).fetchall()[0][0]


def inject_drift(cfg: Config, as_of: date) -> dict:
    """Duplicate A&E attendances from DUPLICATES_FROM; stop the first team's GP feed at FEED_STOPS."""
    from wobble.features import build_features

    with connect(cfg.warehouse) as con, transaction(con):
        con.execute("DELETE FROM contacts WHERE batch_id = ?", [BATCH])
        con.execute("""
            INSERT INTO contacts
            SELECT contact_id || '-resent', person_id, occurred_at, recorded_at + INTERVAL 1 HOUR, service,
                   status, mode, professional_id, source_system, ?
            FROM contacts WHERE service = 'ae_attendance' AND occurred_at >= ? AND recorded_at < ?
        """, [BATCH, DUPLICATES_FROM, as_of])
        duplicated = con.execute("SELECT count(*) FROM contacts WHERE batch_id = ?", [BATCH]).fetchall()[0][0]
        team = con.execute("SELECT min(team_id) FROM persons").fetchall()[0][0]
        removed = con.execute("""
            DELETE FROM contacts WHERE source_system = 'gp' AND recorded_at >= ?
              AND person_id IN (SELECT person_id FROM persons WHERE team_id = ?)
        """, [FEED_STOPS, team]).fetchall()[0][0]
    build_features(cfg, [as_of])
    return {"ae_duplicated": int(duplicated), "gp_removed": int(removed), "team": team}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="wobble.toml")
    parser.add_argument("--outcomes", type=date.fromisoformat, action="append", default=[],
                        help="record synthetic huddle outcomes for the lists at this as-of date")
    parser.add_argument("--drift", action="store_true", help="inject the two data changes")
    args = parser.parse_args()
    cfg = load_config(args.config)
    for d in args.outcomes:
        print(f"{record_outcomes(cfg, d)} synthetic outcomes recorded for the lists of {d}")
    if args.drift:
        from wobble.core.calendar import as_of_for

        as_of = as_of_for(cfg, None)
        done = inject_drift(cfg, as_of)
        print(f"{done['ae_duplicated']:,} A&E attendances sent twice since {DUPLICATES_FROM}; "
              f"{done['gp_removed']:,} GP contacts of team {done['team']} gone since {FEED_STOPS}; "
              f"snapshots rebuilt at {as_of}")


if __name__ == "__main__":
    main()
