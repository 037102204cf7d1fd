"""A synthetic world's extracts, rewritten as a FHIR R4 Bulk Data `$export` folder.

Reads a world written by `wobble.synth.world` (its GP registrations, the five systems' contacts and
tags) and writes, under `out/`, what a `$export` of those records would hold:

- `Patient.ndjson` — one Patient per registration: NHS number identifier (except for a stated
  share of patients who carry only a local hospital number), name, gender, birthDate, postal
  code, registered practice (ODS code), UK Core ethnic category (US Core race for a few),
  deceasedDateTime;
- `Encounter.ndjson` — one Encounter per attended or cancelled contact: v3 ActCode class,
  SNOMED CT serviceType (and type for telephone), period.start, meta.lastUpdated (when it was
  recorded), participant. FHIR R4 has no "did not attend" Encounter status, so missed
  appointments are not exported (as in many real exports);
- `Flag.ndjson` (GP and housing tags), `Condition.ndjson` (community tags, problem-list-item)
  and `Observation.ndjson` (social care tags, social-history) — coded through the same SNOMED CT
  map ingest reads (`fhir_maps.toml`); plus some resources wobble must leave alone (vital-sign
  Observations, Conditions that are diagnoses);
- `manifest.json`, as the `$export` status endpoint returns it;
- `opt_outs.csv` — NHS numbers of the people with a national data opt-out (FHIR carries no such
  flag; a deployment gets this list from the national service).

The extracts' own defects (invalid NHS numbers, impossible dates, unknown codes, missing fields,
unregistered people) carry through, so a FHIR ingest quarantines them the way a CSV one does.
Everything is polars expressions over whole columns; the output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from wobble.ingest.fhir import default_maps
from wobble.ingest.fhir_sql import NHS_NUMBER_SYSTEM, ODS_SYSTEM, UKCORE_ETHNICITY, USCORE_RACE
from wobble.synth.population import ETHNIC_CODES
from wobble.synth.sources import CODES, SOURCES

LOCAL_ID_SYSTEM = "https://fhir.example-trust.nhs.uk/Id/local-patient-number"
SNOMED = "http://snomed.info/sct"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
UKCORE_ETHNIC_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
OMB = {"White": "2106-3", "Black": "2054-5", "Asian": "2028-9", "Other": "2076-8"}
# Which resource each system's tags become.
TAG_RESOURCE = {"gp": "Flag", "housing": "Flag", "community": "Condition", "social_care": "Observation"}


def _reverse(field: str, prefix: str = "") -> dict[str, str]:
    """Contract value → the first FHIR key that maps to it in the built-in map."""
    out: dict[str, str] = {}
    for key, value in default_maps()[field].items():
        if key.startswith(prefix):
            out.setdefault(value, key.split("|", 1)[1] if "|" in key else key)
    return out


def _str(col: str | pl.Expr) -> pl.Expr:
    """A JSON string literal (quoted and escaped) from a string column."""
    e = pl.col(col) if isinstance(col, str) else col
    return pl.lit('"') + e.str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True) \
        + pl.lit('"')


def _opt(key: str, value: pl.Expr) -> pl.Expr:
    """`,"key":value` when value is not null, else nothing."""
    return pl.when(value.is_not_null()).then(pl.lit(f',"{key}":') + value).otherwise(pl.lit(""))


def _iso(col: str) -> pl.Expr:
    """A naive London wall-clock datetime as ISO 8601 with its UTC offset. (A time in the hour
    the clocks skip in spring is read as the hour after, as a clock that was not changed would.)"""
    def aware(e: pl.Expr) -> pl.Expr:
        return e.dt.replace_time_zone("Europe/London", ambiguous="earliest", non_existent="null")

    t = pl.coalesce(aware(pl.col(col)), aware(pl.col(col) + pl.duration(hours=1)))
    return _str(t.dt.to_string("%Y-%m-%dT%H:%M:%S%:z"))


def _coding(system: str, code: pl.Expr) -> pl.Expr:
    return pl.lit(f'{{"system":"{system}","code":') + _str(code) + pl.lit("}")


def _write(path: Path, lines: pl.Series) -> int:
    path.write_text("\n".join(lines.to_list()) + ("\n" if len(lines) else ""), encoding="utf-8")
    return len(lines)


# ---------------------------------------------------------------------------------------------


def _read_source(world: Path, name: str) -> pl.DataFrame:
    """One of the world's sources, as contract fields with contract codes (unknown codes kept)."""
    _, table, system, kind, path, formats, columns = next(s for s in SOURCES if s[0] == name)
    files = sorted((world / "raw").glob(path))
    if kind == "csv":
        frames = [pl.read_csv(f, separator=formats.get("delimiter", ","), infer_schema=False,
                              truncate_ragged_lines=True, ignore_errors=True) for f in files]
    else:
        frames = [pl.read_parquet(f) for f in files]
    df = pl.concat([f.select(list(columns.values())) for f in frames], how="vertical_relaxed")
    df = df.rename({v: k for k, v in columns.items()})
    fmt = formats.get("timestamp_format")
    for f in ("occurred_at", "recorded_at"):
        if f in df.columns and df.schema[f] == pl.String:
            df = df.with_columns(pl.col(f).str.strptime(pl.Datetime("us"), fmt, strict=False))
    for f in ("service", "status", "mode", "tag", "author_role"):
        if f in df.columns:
            codes = CODES[system].get(f, {})
            df = df.with_columns(pl.col(f).cast(pl.String).replace(codes))
    df = df.with_columns(pl.col("nhs_number").cast(pl.String).str.replace_all(" ", "", literal=True))
    return df.unique("record_id", keep="last", maintain_order=True).with_columns(pl.lit(system).alias("system"))


def _patients(world: Path, without_nhs: float) -> pl.DataFrame:
    reg = pl.read_csv(world / "raw/gp/registrations.csv", infer_schema=False)
    n = reg.height
    # A stable, spread-out choice of patients who carry only a local number.
    pick = (pl.int_range(0, n, eager=True) * 2654435761 % 1000) < int(without_nhs * 1000)
    eth_group = {code: g for g, codes in _ethnic_codes().items() for code in codes}
    return reg.with_columns(
        pl.format("pat-{}", pl.int_range(1, n + 1)).alias("id"),
        pl.col("NHSNumber").str.replace_all(" ", "", literal=True).alias("nhs"),
        pl.Series("local_only", pick),
        pl.format("LP{}", pl.int_range(100000, 100000 + n)).alias("local"),
        pl.col("DateOfBirth").str.strptime(pl.Date, "%d/%m/%Y", strict=False).dt.to_string("%Y-%m-%d").alias("dob"),
        pl.col("DateOfDeath").str.strptime(pl.Date, "%d/%m/%Y", strict=False).dt.to_string("%Y-%m-%d").alias("dod"),
        pl.col("EthnicCategory").replace_strict(eth_group, default="Not stated").alias("group"),
        # about one in a hundred records came from a US-built system that sends US Core race
        ((pl.int_range(0, n) * 40503 % 100) == 7).alias("us_core"),
    )


def _ethnic_codes() -> dict[str, list[str]]:
    return ETHNIC_CODES


def _patient_lines(p: pl.DataFrame) -> pl.Series:
    nhs_ident = pl.lit(f'{{"system":"{NHS_NUMBER_SYSTEM}","value":') + _str("nhs") + pl.lit("}")
    local_ident = pl.lit(f'{{"system":"{LOCAL_ID_SYSTEM}","value":') + _str("local") + pl.lit("}")
    identifiers = pl.when(pl.col("local_only")).then(local_ident).otherwise(nhs_ident + pl.lit(",") + local_ident)
    uk = (pl.lit(f'{{"url":"{UKCORE_ETHNICITY}","valueCodeableConcept":{{"coding":[')
          + _coding(UKCORE_ETHNIC_SYSTEM, pl.col("EthnicCategory")) + pl.lit("]}}"))
    omb = pl.col("group").replace_strict(OMB, default=None)
    us = (pl.lit(f'{{"url":"{USCORE_RACE}","extension":[{{"url":"ombCategory","valueCoding":')
          + _coding("urn:oid:2.16.840.1.113883.6.238", omb) + pl.lit("}]}"))
    ext = pl.when(pl.col("us_core") & omb.is_not_null()).then(us).otherwise(uk)
    gender = pl.col("Gender").replace_strict({"F": "female", "M": "male"}, default="unknown")
    practice = (pl.lit('[{"reference":"Organization/') + pl.col("PracticeCode")
                + pl.lit(f'","identifier":{{"system":"{ODS_SYSTEM}","value":') + _str("PracticeCode") + pl.lit("}}]"))
    return p.select(
        pl.lit('{"resourceType":"Patient","id":') + _str("id")
        + pl.lit(',"meta":{"lastUpdated":"2026-11-23T06:00:00+00:00"}')
        + pl.lit(',"extension":[') + ext + pl.lit("]")
        + pl.lit(',"identifier":[') + identifiers + pl.lit("]")
        + pl.lit(',"name":[{"family":') + _str("Surname") + pl.lit(',"given":[') + _str("Forename") + pl.lit("]}]")
        + pl.lit(',"gender":') + _str(gender)
        + _opt("birthDate", _str("dob"))
        + _opt("deceasedDateTime", pl.when(pl.col("dod").is_not_null()).then(_str(pl.col("dod") + "T12:00:00+00:00")))
        + pl.lit(',"address":[{"use":"home","postalCode":') + _str("Postcode") + pl.lit("}]")
        + pl.lit(',"generalPractitioner":') + practice
        + pl.lit("}")
    ).to_series()


def _subject(df: pl.DataFrame, patients: pl.DataFrame) -> pl.DataFrame:
    """Each record's Patient reference: the registered patient's id, or (for people the GP does
    not know, and for invalid numbers) an id no Patient in the export has."""
    ids = patients.select(pl.col("nhs").alias("nhs_number"), pl.col("id").alias("patient_id"))
    df = df.join(ids, on="nhs_number", how="left")
    return df.with_columns(pl.coalesce("patient_id", pl.format("ext-{}", pl.col("nhs_number").hash(7) % 10**9))
                           .alias("patient_id"))


def _encounter_lines(c: pl.DataFrame) -> pl.Series:
    service_code = pl.col("service").replace_strict(_reverse("service", SNOMED), default=pl.lit("1000001"))
    klass = (pl.when(pl.col("mode") == "home_visit").then(pl.lit("HH"))
             .when(pl.col("mode") == "video").then(pl.lit("VR"))
             .when(pl.col("service") == "ae_attendance").then(pl.lit("EMER"))
             .when(pl.col("service") == "emergency_admission").then(pl.lit("IMP"))
             .when(pl.col("service") == "ambulance_callout").then(pl.lit("FLD"))
             .otherwise(pl.lit("AMB")))
    # A contact with no outcome recorded happened (as ingest assumes); a missed one is not exported.
    status = pl.col("status").fill_null("attended").replace_strict(
        {"attended": "finished", "cancelled": "cancelled"}, default=None)
    phone = pl.lit(f',"type":[{{"coding":[{{"system":"{SNOMED}","code":"185317003",'
                   '"display":"Telephone encounter"}]}]')
    return c.filter(status.is_not_null()).select(
        pl.lit('{"resourceType":"Encounter","id":') + _str("record_id")
        + _opt("meta", pl.when(pl.col("recorded_at").is_not_null()).then(
            pl.lit('{"lastUpdated":') + _iso("recorded_at") + pl.lit("}")))
        + pl.lit(',"status":') + _str(status)
        + pl.lit(f',"class":{{"system":"{ACT_CODE}","code":"') + klass + pl.lit('"}')
        + pl.when(pl.col("mode") == "phone").then(phone).otherwise(pl.lit(""))
        + pl.lit(',"serviceType":{"coding":[') + _coding(SNOMED, service_code) + pl.lit("]}")
        + pl.lit(',"subject":{"reference":"Patient/') + pl.col("patient_id") + pl.lit('"}')
        + _opt("participant", pl.when(pl.col("professional").is_not_null()).then(
            pl.lit('[{"individual":{"reference":"Practitioner/') + pl.col("professional") + pl.lit('"}}]')))
        + _opt("period", pl.when(pl.col("occurred_at").is_not_null()).then(
            pl.lit('{"start":') + _iso("occurred_at") + pl.lit("}")))
        + pl.lit("}")
    ).to_series()


def _tag_lines(t: pl.DataFrame, kind: str) -> pl.Series:
    code = pl.col("tag").replace_strict(_reverse("tag", SNOMED), default=pl.lit("1000002"))
    concept = pl.lit('{"coding":[') + _coding(SNOMED, code) + pl.lit("]}")
    when = _iso("recorded_at")
    has = pl.col("recorded_at").is_not_null()
    if kind == "Flag":
        body = (pl.lit(',"status":"active","category":[{"coding":[{"system":'
                       '"http://terminology.hl7.org/CodeSystem/flag-category","code":"social"}]}]')
                + pl.lit(',"code":') + concept
                + _opt("meta", pl.when(has).then(pl.lit('{"lastUpdated":') + when + pl.lit("}")))
                + _opt("period", pl.when(has).then(pl.lit('{"start":') + when + pl.lit("}"))))
    elif kind == "Condition":
        body = (pl.lit(',"clinicalStatus":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-clinical",'
                       '"code":"active"}]},"category":[{"coding":[{"system":'
                       '"http://terminology.hl7.org/CodeSystem/condition-category","code":"problem-list-item"}]}]')
                + pl.lit(',"code":') + concept + _opt("recordedDate", pl.when(has).then(when)))
    else:
        body = (pl.lit(',"status":"final","category":[{"coding":[{"system":'
                       '"http://terminology.hl7.org/CodeSystem/observation-category","code":"social-history"}]}]')
                + pl.lit(',"code":') + concept + _opt("issued", pl.when(has).then(when)))
    return t.select(
        pl.lit(f'{{"resourceType":"{kind}","id":') + _str("record_id") + body
        + pl.lit(',"subject":{"reference":"Patient/') + pl.col("patient_id") + pl.lit('"}}')
    ).to_series()


def _out_of_scope_lines(patients: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Vital-sign Observations and diagnosis Conditions: in an export, but not frontline tags."""
    every = patients.filter(pl.int_range(0, patients.height) % 25 == 0)
    terminology = "http://terminology.hl7.org/CodeSystem"

    def lines(kind: str, prefix: str, category: str, code: str, when: str) -> pl.Series:
        return every.select(
            pl.lit(f'{{"resourceType":"{kind}","id":"{prefix}-') + pl.col("id")
            + pl.lit(f'","category":[{{"coding":[{{"system":"{terminology}/{kind.lower()}-category",'
                     f'"code":"{category}"}}]}}],"code":{{"coding":[{{"system":"{SNOMED}","code":"{code}"}}]}},'
                     f'{when},"subject":{{"reference":"Patient/')
            + pl.col("id") + pl.lit('"}}')
        ).to_series()

    return (lines("Observation", "bp", "vital-signs", "75367002", '"effectiveDateTime":"2026-06-01T09:00:00+01:00"'),
            lines("Condition", "dx", "problem-list-item", "44054006", '"recordedDate":"2025-01-10T10:00:00+00:00"'))


def write_fhir_export(world: Path, out: Path, *, without_nhs: float = 0.02) -> dict[str, int]:
    """Write the FHIR export of the synthetic world at `world` into `out`; return resources per type."""
    world, out = Path(world), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    patients = _patients(world, without_nhs)
    counts = {"Patient": _write(out / "Patient.ndjson", _patient_lines(patients))}
    contacts = pl.concat([_read_source(world, n) for n in
                          ("gp_appointments", "acute_activity", "community_contacts", "social_care_events",
                           "housing_contacts")], how="diagonal_relaxed")
    counts["Encounter"] = _write(out / "Encounter.ndjson", _encounter_lines(_subject(contacts, patients)))
    tags = pl.concat([_read_source(world, n) for n in
                      ("gp_concerns", "community_flags", "social_care_observations", "housing_flags")],
                     how="diagonal_relaxed")
    tags = _subject(tags, patients)
    obs_extra, cond_extra = _out_of_scope_lines(patients)
    for kind in ("Flag", "Condition", "Observation"):
        systems = [s for s, k in TAG_RESOURCE.items() if k == kind]
        lines = _tag_lines(tags.filter(pl.col("system").is_in(systems)), kind)
        extra = {"Observation": obs_extra, "Condition": cond_extra}.get(kind)
        if extra is not None:
            lines = pl.concat([lines, extra])
        counts[kind] = _write(out / f"{kind}.ndjson", lines)
    opted = pl.read_csv(world / "raw/gp/registrations.csv", infer_schema=False).filter(pl.col("NationalOptOut") == "Y")
    opted.select(pl.col("NHSNumber").str.replace_all(" ", "", literal=True).alias("nhs_number")).write_csv(
        out / "opt_outs.csv")
    manifest = {
        "transactionTime": "2026-11-23T06:00:00+00:00",
        "request": "https://fhir.example-trust.nhs.uk/R4/$export?_type=Patient,Encounter,Flag,Condition,Observation",
        "requiresAccessToken": True,
        "output": [{"type": k, "url": f"https://fhir.example-trust.nhs.uk/bulk/{k}.ndjson", "count": v}
                   for k, v in counts.items()],
        "error": [],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return counts
