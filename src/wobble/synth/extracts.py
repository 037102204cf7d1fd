"""Writing the world: each chunk's contacts and tags in every system's own extract format, and the truth.

Appends each simulated chunk's rows to the source files (CSV by appending, Parquet by row groups),
with defects injected at the stated rates, one team's social care feed missing for two months, and
records not yet keyed by the extract date left out; writes what only the simulator knows under
`truth/`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from wobble.core.vocab import SERVICES, TAGS
from wobble.synth.population import ETHNIC_CODES, ETHNICITY_SHARES, NOT_STATED_SHARE
from wobble.synth.sources import (
    DEFECT_RATES,
    FEED_GAP_MONTHS,
    LAG_HOURS,
    SERVICE_SYSTEM,
    TAG_LAG_HOURS,
    date_override,
    fmt_nhs,
    inject_defects,
    labels,
    mode_expr,
    status_expr,
    team_code,
    team_codes,
    to_local,
)
from wobble.synth.truth import PHASES
from wobble.synth.world import CRISIS_KINDS, HORIZON_DAYS, TAG_SOURCES, World


class Writers:
    """Appends each chunk's rows to the source files; CSV by appending, Parquet by row groups."""

    def __init__(self, raw: Path, truth: Path, start: date, weeks: int, pop: dict[str, np.ndarray]):
        self.raw, self.truth, self.start, self.weeks, self.pop = raw, truth, start, weeks, pop
        self.files: dict[str, list[str]] = {}
        self._next_id = 1
        self._csv: dict[str, object] = {}
        self._pq: dict[str, pq.ParquetWriter] = {}
        self.start_us = int(datetime(start.year, start.month, start.day).timestamp() * 1e6) - int(
            datetime(1970, 1, 1).timestamp() * 1e6
        )
        self.extract_us = self.start_us + weeks * 7 * 86_400_000_000
        # The team whose social care feed goes missing: the second team if there is one.
        n_teams = int(pop["n_teams"])
        gap_team = 1 if n_teams > 1 else 0
        gap_from = datetime(FEED_GAP_MONTHS[0][0], FEED_GAP_MONTHS[0][1], 1)
        y, m = FEED_GAP_MONTHS[-1]
        gap_to = datetime(y + (m == 12), m % 12 + 1, 1)
        self.gap = (gap_team, self._us(gap_from), self._us(gap_to))
        self.feed_gap = {
            "team_id": team_code(gap_team), "system": "social_care",
            "from": gap_from.date().isoformat(), "to_exclusive": gap_to.date().isoformat(),
        }
        # GP appointments come in two overlapping extracts; the overlap is four weeks.
        self.gp_split_us = self.start_us + (weeks // 2) * 7 * 86_400_000_000
        self.gp_overlap_us = 4 * 7 * 86_400_000_000

    @staticmethod
    def _us(dt: datetime) -> int:
        return int((dt - datetime(1970, 1, 1)).total_seconds() * 1e6)

    def _register(self, source: str, path: Path) -> None:
        rel = str(path.relative_to(self.raw.parent))
        self.files.setdefault(source, [])
        if rel not in self.files[source]:
            self.files[source].append(rel)

    def _write_csv(self, source: str, path: Path, df: pl.DataFrame, sep: str = ",") -> None:
        key = str(path)
        if key not in self._csv:
            self._csv[key] = open(path, "wb")  # noqa: SIM115 - closed in finish()
            df.write_csv(self._csv[key], separator=sep, include_header=True)
        else:
            df.write_csv(self._csv[key], separator=sep, include_header=False)
        self._register(source, path)

    def _write_parquet(self, source: str, path: Path, df: pl.DataFrame) -> None:
        table = df.to_arrow()
        key = str(path)
        if key not in self._pq:
            self._pq[key] = pq.ParquetWriter(path, table.schema, compression="zstd")
        self._pq[key].write_table(table.cast(self._pq[key].schema))
        self._register(source, path)

    # -- one chunk -----------------------------------------------------------------------------

    def write_chunk(self, rng: np.random.Generator, w: World, defects: dict[str, int]) -> dict[str, int]:
        ev = {k: np.concatenate([w.contacts[k], w.crises[k]]) for k in w.contacts}
        contacts = self._contact_frame(rng, ev)
        tags = self._tag_frame(rng, w.tags)
        crises = contacts.filter(pl.col("service").is_in(list(CRISIS_KINDS)))
        # The extract was taken on the extract date: records not yet keyed are not in it.
        contacts = contacts.filter(pl.col("rec_us") < self.extract_us)
        tags = tags.filter(pl.col("rec_us") < self.extract_us)
        # Truth first: the simulator knows about every crisis, whatever the extracts say.
        self._write_parquet("truth", self.truth / "crises.parquet", crises.select(
            pl.col("nhs").cast(pl.String).alias("nhs_number"), "occurred_at",
            pl.col("service").alias("kind")).sort("nhs_number", "occurred_at"))
        self._write_risk(w)
        self._write_need(w)
        self._write_truth_persons(w)
        # Records from the team with a feed gap never reach the social care extract.
        gap_team, gap_from, gap_to = self.gap
        in_gap = (
            (pl.col("system") == "social_care") & (pl.col("team") == gap_team)
            & (pl.col("occ_us") >= gap_from) & (pl.col("occ_us") < gap_to)
        )
        contacts = contacts.filter(~in_gap)
        tags = tags.filter(~in_gap)
        for system in ("gp", "acute", "community", "social_care", "housing"):
            part = contacts.filter(pl.col("system") == system)
            tpart = tags.filter(pl.col("system") == system)
            part = inject_defects(rng, part, system, defects, self.pop, kind="contacts")
            tpart = inject_defects(rng, tpart, system, defects, self.pop, kind="tags")
            getattr(self, f"_contacts_{system}")(part)
            if system != "acute":
                getattr(self, f"_tags_{system}")(tpart)
        return {"contacts": contacts.height, "tags": tags.height, "crises": crises.height}

    def _contact_frame(self, rng, ev) -> pl.DataFrame:
        day_us = 86_400_000_000
        occ = self.start_us + ev["week"] * 7 * day_us + ev["day"] * day_us + ev["minute"] * 60_000_000
        lag_mean = np.array([LAG_HOURS[s] for s in SERVICES])[ev["service"]]
        lag = rng.exponential(lag_mean) * 3_600_000_000
        # a few records are keyed in weeks late, whatever the system
        late = rng.random(lag.size) < 0.01
        lag = np.where(late, lag + rng.exponential(21 * day_us, lag.size), lag)
        rec = occ + lag.astype(np.int64) + 60_000_000
        person = ev["person"]
        df = pl.DataFrame({
            "nhs": self.pop["nhs"][person],
            "team": self.pop["team"][person],
            "service": labels(ev["service"], SERVICES),
            "system": labels(ev["service"], [SERVICE_SYSTEM[s] for s in SERVICES]),
            "status": ev["status"],
            "mode": ev["mode"],
            "prof": ev["prof"],
            "occ_us": occ,
            "rec_us": rec,
        })
        # Record ids: unique across the whole extract, in no particular order within a chunk.
        rid = rng.permutation(df.height) + self._next_id
        self._next_id += df.height
        return df.with_columns(
            pl.from_epoch("occ_us", time_unit="us").alias("occurred_at"),
            pl.from_epoch("rec_us", time_unit="us").alias("recorded_at"),
            pl.Series("rid", rid).cast(pl.Int64),
        )

    def _tag_frame(self, rng, tg) -> pl.DataFrame:
        day_us = 86_400_000_000
        occ = (self.start_us + tg["week"] * 7 * day_us + tg["day"] * day_us
               + tg["minute"] * 60_000_000)
        lag = rng.exponential(np.array([TAG_LAG_HOURS[s] for s, _ in TAG_SOURCES])[tg["src"]])
        rec = occ + (lag * 3_600_000_000).astype(np.int64)
        person = tg["person"]
        df = pl.DataFrame({
            "nhs": self.pop["nhs"][person], "team": self.pop["team"][person],
            "tag": labels(tg["tag"], TAGS),
            "system": labels(tg["src"], [s for s, _ in TAG_SOURCES]),
            "role": labels(tg["src"], [r for _, r in TAG_SOURCES]),
            "occ_us": occ, "rec_us": rec,
        })
        rid = rng.permutation(df.height) + self._next_id
        self._next_id += df.height
        return df.with_columns(
            pl.from_epoch("rec_us", time_unit="us").alias("recorded_at"),
            pl.Series("rid", rid).cast(pl.Int64),
        )

    # -- per-system formats ----------------------------------------------------------------------

    def _contacts_gp(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("GP{}", pl.col("rid")).alias("AppointmentID"),
            fmt_nhs(pl.col("nhs"), "gp").alias("NHSNumber"),
            to_local("service", "gp", "service").alias("SlotType"),
            pl.col("occurred_at").dt.strftime("%d/%m/%Y %H:%M").alias("AppointmentDate"),
            pl.col("recorded_at").dt.strftime("%d/%m/%Y %H:%M").alias("EnteredDate"),
            status_expr("gp").alias("Status"),
            mode_expr("gp").alias("ConsultationMode"),
            pl.when(pl.col("prof") >= 0).then(pl.format("C{}", pl.col("prof"))).alias("ClinicianCode"),
            pl.col("occ_us"), pl.col("_override_date"),
        ).with_columns(date_override("AppointmentDate"))
        # Two extracts that overlap by four weeks: rows in the overlap appear in both.
        first = out.filter(pl.col("occ_us") < self.gp_split_us + self.gp_overlap_us)
        second = out.filter(pl.col("occ_us") >= self.gp_split_us)
        cols = [c for c in out.columns if c not in ("occ_us", "_override_date")]
        self._write_csv("gp_appointments", self.raw / "gp" / "appointments_part1.csv", first.select(cols))
        self._write_csv("gp_appointments", self.raw / "gp" / "appointments_part2.csv", second.select(cols))

    def _contacts_acute(self, df: pl.DataFrame) -> None:
        status_code = pl.col("status").replace_strict({0: "5", 1: "3", 2: "2"}, return_dtype=pl.String)
        out = df.select(
            pl.format("EP{}", pl.col("rid")).alias("episode_id"),
            pl.col("nhs").alias("nhs_no"),
            to_local("service", "acute", "service").alias("pod"),
            pl.col("occurred_at").alias("start_ts"),
            pl.col("recorded_at").alias("created_ts"),
            pl.when(pl.col("service") == "outpatient_attendance").then(status_code).alias("attend_status"),
            pl.col("mode").replace_strict({0: "1", 1: "2", 2: "3", 3: "4"}, return_dtype=pl.String)
            .alias("contact_mode"),
            pl.when(pl.col("prof") >= 0).then(pl.format("CONS{}", pl.col("prof") - 6_000_000)).alias("consultant"),
            pl.col("_override_date"),
        )
        # Impossible dates in a typed column: a start before 1900 or after the extract.
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(2099, 1, 1))).otherwise(pl.col("start_ts")).alias("start_ts")
        ).drop("_override_date")
        self._write_parquet("acute_activity", self.raw / "acute" / "activity.parquet", out)

    def _contacts_community(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("CH{}", pl.col("rid")).alias("ContactRef"),
            pl.col("nhs").cast(pl.String).alias("PatientNHS"),
            to_local("service", "community", "service").alias("ServiceLine"),
            pl.col("occurred_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("ContactDateTime"),
            pl.col("recorded_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("EnteredDateTime"),
            status_expr("community").alias("Outcome"),
            mode_expr("community").alias("ContactType"),
            pl.when(pl.col("prof") >= 0).then(pl.format("S{}", pl.col("prof"))).alias("StaffID"),
            pl.col("_override_date"),
        ).with_columns(date_override("ContactDateTime", iso=True)).drop("_override_date")
        self._write_csv("community_contacts", self.raw / "community" / "contacts.csv", out, sep=";")

    def _contacts_social_care(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("SC{}", pl.col("rid")).alias("event_id"),
            pl.col("nhs").cast(pl.String).alias("person_nhs"),
            to_local("service", "social_care", "service").alias("event_type"),
            pl.col("occurred_at").alias("event_date"),
            pl.col("recorded_at").alias("input_date"),
            status_expr("social_care").alias("outcome"),
            mode_expr("social_care").alias("method"),
            pl.when(pl.col("prof") >= 0).then(pl.format("W{}", pl.col("prof"))).alias("worker_id"),
            pl.col("_override_date"),
        )
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(1850, 1, 1))).otherwise(pl.col("event_date")).alias("event_date")
        ).drop("_override_date")
        self._write_parquet("social_care_events", self.raw / "social_care" / "events.parquet", out)

    def _contacts_housing(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("H{}", pl.col("rid")).alias("ref"),
            pl.col("nhs").cast(pl.String).alias("nhs_number"),
            to_local("service", "housing", "service").alias("contact_type"),
            pl.col("occurred_at").dt.strftime("%d-%b-%Y").alias("visit_date"),
            pl.col("recorded_at").dt.strftime("%d-%b-%Y").alias("logged"),
            status_expr("housing").alias("outcome"),
            mode_expr("housing").alias("channel"),
            pl.when(pl.col("prof") >= 0).then(pl.format("HO{}", pl.col("prof"))).alias("officer"),
            pl.col("_override_date"),
        ).with_columns(
            pl.when(pl.col("_override_date").is_not_null()).then(pl.lit("31-Feb-2026"))
            .otherwise(pl.col("visit_date")).alias("visit_date")
        ).drop("_override_date")
        self._write_csv("housing_contacts", self.raw / "housing" / "contacts.csv", out)

    def _tags_gp(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("GT{}", pl.col("rid")).alias("ConcernID"),
            fmt_nhs(pl.col("nhs"), "gp").alias("NHSNumber"),
            to_local("tag", "gp", "tag").alias("Code"),
            pl.col("recorded_at").dt.strftime("%d/%m/%Y %H:%M").alias("EnteredDate"),
            to_local("role", "gp", "author_role").alias("AuthorRole"),
            pl.col("_override_date"),
        ).with_columns(date_override("EnteredDate")).drop("_override_date")
        self._write_csv("gp_concerns", self.raw / "gp" / "concerns.csv", out)

    def _tags_community(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("CF{}", pl.col("rid")).alias("FlagRef"),
            pl.col("nhs").cast(pl.String).alias("PatientNHS"),
            to_local("tag", "community", "tag").alias("FlagCode"),
            pl.col("recorded_at").dt.strftime("%Y-%m-%dT%H:%M:%S").alias("RaisedOn"),
            to_local("role", "community", "author_role").alias("RaisedBy"),
            pl.col("_override_date"),
        ).with_columns(date_override("RaisedOn", iso=True)).drop("_override_date")
        self._write_csv("community_flags", self.raw / "community" / "flags.csv", out, sep=";")

    def _tags_social_care(self, df: pl.DataFrame) -> None:
        # Free text sits beside the coded category, as in real case notes; ingest never reads it.
        out = df.select(
            pl.format("OB{}", pl.col("rid")).alias("obs_id"),
            pl.col("nhs").cast(pl.String).alias("person_nhs"),
            to_local("tag", "social_care", "tag").alias("category"),
            pl.format("Visited; noted {} (NHS {}).", pl.col("tag"), pl.col("nhs")).alias("note"),
            pl.col("recorded_at").alias("created"),
            to_local("role", "social_care", "author_role").alias("worker_role"),
            pl.col("_override_date"),
        )
        out = out.with_columns(
            pl.when(pl.col("_override_date").is_not_null())
            .then(pl.lit(datetime(2099, 1, 1))).otherwise(pl.col("created")).alias("created")
        ).drop("_override_date")
        self._write_parquet("social_care_observations", self.raw / "social_care" / "observations.parquet", out)

    def _tags_housing(self, df: pl.DataFrame) -> None:
        out = df.select(
            pl.format("HF{}", pl.col("rid")).alias("ref"),
            pl.col("nhs").cast(pl.String).alias("nhs_number"),
            to_local("tag", "housing", "tag").alias("risk_flag"),
            pl.col("recorded_at").dt.strftime("%d-%b-%Y").alias("logged"),
            to_local("role", "housing", "author_role").alias("officer_role"),
            pl.col("_override_date"),
        ).with_columns(
            pl.when(pl.col("_override_date").is_not_null()).then(pl.lit("30-Feb-2026"))
            .otherwise(pl.col("logged")).alias("logged")
        ).drop("_override_date")
        self._write_csv("housing_flags", self.raw / "housing" / "flags.csv", out)

    # -- truth ---------------------------------------------------------------------------------

    def _write_risk(self, w: World) -> None:
        n_asof = w.risk.shape[1]
        nhs = self.pop["nhs"][w.lo : w.hi]
        asof = np.array([self.start + timedelta(weeks=int(k)) for k in range(n_asof)], dtype="datetime64[D]")
        p = w.risk.ravel()
        keep = ~np.isnan(p)
        df = pl.DataFrame({
            "nhs_number": pl.Series(np.repeat(nhs, n_asof)[keep]).cast(pl.String),
            "as_of": np.tile(asof, nhs.size)[keep],
            "horizon_days": np.full(keep.sum(), HORIZON_DAYS, dtype=np.int16),
            "p_crisis": p[keep],
        })
        self._write_parquet("truth", self.truth / "risk.parquet", df)

    def _write_need(self, w: World) -> None:
        """truth/need.parquet: one row per person and week present (rounded to 0.001: a third of the
        size, and nothing grades finer)."""
        n, weeks = w.need.shape
        keep = (w.phase >= 0).ravel()
        week_start = np.datetime64(self.start) + (np.arange(weeks) * 7).astype("timedelta64[D]")
        df = pl.DataFrame({
            "nhs_number": pl.Series(np.repeat(self.pop["nhs"][w.lo : w.hi], weeks)[keep]).cast(pl.String),
            "week_start": np.tile(week_start, n)[keep],
            "need": np.round(w.need.ravel()[keep], 3).astype(np.float32),
            "baseline": np.round(w.baseline.ravel()[keep], 3).astype(np.float32),
            "phase": pl.Series(np.array(PHASES)[w.phase.ravel()[keep]]).cast(pl.Enum(list(PHASES))),
        })
        self._write_parquet("truth", self.truth / "need.parquet", df)

    def _write_truth_persons(self, w: World) -> None:
        s = slice(w.lo, w.hi)
        pop = self.pop
        died = np.where(w.died_week >= 0,
                        np.datetime64(self.start) + (w.died_week * 7).astype("timedelta64[D]"),
                        np.datetime64("NaT"))
        df = pl.DataFrame({
            "nhs_number": pl.Series(pop["nhs"][s]).cast(pl.String),
            "age": pop["age"][s], "female": pop["female"][s],
            "ethnicity_group": np.array(list(ETHNICITY_SHARES))[pop["eth"][s]],
            "imd_decile": pop["imd"][s], "team_id": team_codes(pop["team"][s]),
            "ltc": pop["ltc"][s], "support": pop["support"][s], "engagement": pop["engagement"][s],
            "continuity": pop["continuity"][s], "base_need": pop["base"][s],
            "arrival_week": pop["arrival"][s], "died_on": died, "opted_out": pop["opted_out"][s],
        })
        self._write_parquet("truth", self.truth / "persons.parquet", df)

    # -- at the end: registrations, lookups, corrections, malformed lines ------------------------

    def finish(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        for w in self._pq.values():
            w.close()
        for f in self._csv.values():
            f.close()
        self._write_persons(rng, defects)
        self._write_lookups()
        self._write_corrections(rng, defects)
        self._add_malformed_lines(defects)

    def _write_persons(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        pop = self.pop
        n = int(pop["n"])
        groups = list(ETHNICITY_SHARES)
        eth = pop["eth"]
        sub = (rng.random(n) * np.array([len(ETHNIC_CODES[g]) for g in groups])[eth]).astype(int)
        code_table = np.array([[*ETHNIC_CODES[g], *[""] * (5 - len(ETHNIC_CODES[g]))] for g in groups])
        codes = code_table[eth, sub]
        codes = np.where(rng.random(n) < NOT_STATED_SHARE, "Z", codes)
        birth_year = self.start.year - pop["age"]
        dob_day = rng.integers(0, 365, n)
        jan1 = np.array([np.datetime64(f"{y}-01-01") for y in range(1900, 2030)])  # one per year
        dob = jan1[birth_year - 1900] + dob_day.astype("timedelta64[D]")
        truth_persons = pl.read_parquet(self.truth / "persons.parquet", columns=["died_on"])
        forenames = np.array(["Alex", "Sam", "Jo", "Chris", "Pat", "Robin", "Jamie", "Morgan", "Ali", "Priya"])
        surnames = np.array(["Smith", "Jones", "Taylor", "Brown", "Khan", "Patel", "Evans", "Okafor", "Wilson", "Lee"])
        df = pl.DataFrame({
            "NHSNumber": pop["nhs"],
            "Forename": forenames[rng.integers(0, forenames.size, n)],
            "Surname": surnames[rng.integers(0, surnames.size, n)],
            "DateOfBirth": dob,
            "Gender": np.where(pop["female"], "F", "M"),
            "EthnicCategory": codes,
            "Postcode": np.char.add(np.char.add("ZZ9", (pop["team"] % 10).astype(str)),
                                   np.char.add(" ", np.char.add((pop["team"] % 9 + 1).astype(str), "AB"))),
            "LSOA11": np.char.add("E0199", np.char.zfill(pop["lsoa"].astype(str), 4)),
            "PracticeCode": np.char.add("P8", np.char.zfill(pop["practice"].astype(str), 4)),
            "NationalOptOut": np.where(pop["opted_out"], "Y", "N"),
            "RegistrationDate": np.datetime64("1970-01-01")
            + np.array(pop["registered"] - date(1970, 1, 1).toordinal(), dtype="timedelta64[D]"),
            "DateOfDeath": truth_persons["died_on"].to_numpy(),
        }).with_columns(
            fmt_nhs(pl.col("NHSNumber"), "gp").alias("NHSNumber"),
            pl.col("DateOfBirth").dt.strftime("%d/%m/%Y"),
            pl.col("RegistrationDate").dt.strftime("%d/%m/%Y"),
            pl.col("DateOfDeath").dt.strftime("%d/%m/%Y"),
        )
        # A few registrations carry an invalid NHS number, like the activity extracts.
        bad = rng.random(n) < DEFECT_RATES["invalid_nhs_number"] * 4
        df = df.with_columns(
            pl.when(pl.Series(bad)).then(pl.col("NHSNumber").str.slice(0, 11) + pl.lit("X"))
            .otherwise(pl.col("NHSNumber")).alias("NHSNumber")
        )
        defects["gp_registrations.invalid_nhs_number"] = int(bad.sum())
        path = self.raw / "gp" / "registrations.csv"
        df.write_csv(path)
        self._register("gp_registrations", path)

    def _write_lookups(self) -> None:
        pop = self.pop
        lsoa = pl.DataFrame({
            "lsoa11cd": np.char.add("E0199", np.char.zfill(np.arange(pop["lsoa_imd"].size).astype(str), 4)),
            "imd_decile": pop["lsoa_imd"].astype(np.int8),
        })
        lsoa.write_csv(self.raw / "lookups" / "lsoa_imd.csv")
        prac = pl.DataFrame({
            "practice_code": np.char.add("P8", np.char.zfill(np.arange(int(pop["n_practices"])).astype(str), 4)),
            "team_id": team_codes(pop["practice_team"]),
        })
        prac.write_csv(self.raw / "lookups" / "practice_team.csv")

    def _write_corrections(self, rng: np.random.Generator, defects: dict[str, int]) -> None:
        """A corrected re-extract of some acute outpatient records: same ids, corrected status."""
        acute = pl.read_parquet(self.raw / "acute" / "activity.parquet")
        op = acute.filter((pl.col("pod") == "OP") & pl.col("attend_status").is_not_null())
        k = min(op.height, max(1, acute.height // 2000))
        idx = rng.choice(op.height, size=k, replace=False) if op.height else np.array([], dtype=int)
        fix = op[np.sort(idx)].with_columns(
            pl.when(pl.col("attend_status") == "5").then(pl.lit("3")).otherwise(pl.lit("5")).alias("attend_status"),
            (pl.col("created_ts") + pl.duration(days=14)).alias("created_ts"),
        )
        # A correction made after the extract date is not in an extract taken on it; kept, it
        # would be loaded or quarantined as future-dated depending on the day ingest runs.
        fix = fix.filter(pl.col("created_ts") < pl.from_epoch(pl.lit(self.extract_us), time_unit="us"))
        path = self.raw / "acute" / "activity_corrections.parquet"
        fix.write_parquet(path, compression="zstd")
        self._register("acute_activity", path)
        defects["acute_activity.corrections"] = fix.height

    def _add_malformed_lines(self, defects: dict[str, int]) -> None:
        """Two broken lines, as from a botched export: too few fields, and too many."""
        path = self.raw / "community" / "contacts.csv"
        with open(path, "ab") as f:
            f.write(b"CH_BROKEN_1;9000000000;DN\n")
            f.write(b"CH_BROKEN_2;9000000001;DN;2025-01-01T10:00:00;2025-01-01T10:00:00;Attended;F2F;S1;x;y\n")
        defects["community_contacts.malformed_line"] = 2


