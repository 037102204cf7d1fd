"""The five source systems: which services each records, its local codes, formats and defects.

Each system writes its own extract with its own column names, codes and date formats
(`SOURCES`); the same table drives the demo's `wobble.toml` (`wobble.synth.demo`), so what the
writers produce and what the config reads cannot drift apart.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from wobble.core.vocab import TAGS
from wobble.ingest.identifiers import STRANGER_PREFIX_FROM, check_digit

# Rates at which defects are injected into the extracts (per row written).
DEFECT_RATES: dict[str, float] = {
    "invalid_nhs_number": 0.0005,
    "impossible_date": 0.0002,
    "unknown_code": 0.0005,
    "missing_field": 0.0002,
    "person_not_found": 0.0002,
}
FEED_GAP_MONTHS = ((2026, 8), (2026, 9))  # one team's social care feed is missing for these

# Record lag (recorded_at − occurred_at), mean hours, by service.
LAG_HOURS = {
    "gp_appointment": 1.0, "nhs111_call": 20.0, "pharmacy_contact": 30.0,
    "ae_attendance": 4.0, "emergency_admission": 72.0, "outpatient_attendance": 24.0,
    "ambulance_callout": 6.0, "community_nursing": 36.0, "mental_health_contact": 48.0,
    "mental_health_crisis": 12.0, "social_care_contact": 144.0, "social_care_assessment": 240.0,
    "police_welfare_check": 200.0, "voluntary_sector_contact": 160.0, "housing_contact": 96.0,
}
TAG_LAG_HOURS = {"gp": 2.0, "community": 36.0, "social_care": 144.0, "housing": 96.0}




# ---------------------------------------------------------------------------------------------
# The five source systems: which services each records, its codes and formats.
# ---------------------------------------------------------------------------------------------

SERVICE_SYSTEM = {
    "gp_appointment": "gp", "nhs111_call": "gp", "pharmacy_contact": "gp",
    "ae_attendance": "acute", "emergency_admission": "acute", "outpatient_attendance": "acute",
    "ambulance_callout": "acute",
    "community_nursing": "community", "mental_health_contact": "community",
    "mental_health_crisis": "community",
    "social_care_contact": "social_care", "social_care_assessment": "social_care",
    "police_welfare_check": "social_care", "voluntary_sector_contact": "social_care",
    "housing_contact": "housing",
}

# Local codes each system uses for services, statuses, modes and tags (source value → contract).
CODES: dict[str, dict[str, dict[str, str]]] = {
    "gp": {
        "service": {"APPT": "gp_appointment", "111PEM": "nhs111_call", "CPCS": "pharmacy_contact"},
        "status": {"Finished": "attended", "DNA": "did_not_attend", "Cancelled by Patient": "cancelled"},
        "mode": {"Face to face": "face_to_face", "Telephone": "phone", "Video": "video",
                 "Home visit": "home_visit"},
        "tag": {"CARER-STRAIN": "carer_strain", "SOC-ISOL": "social_isolation",
                "HOUSING-RISK": "housing_insecurity", "FIN-HARDSHIP": "financial_hardship",
                "LOW-MOOD": "low_mood", "ANXIETY": "anxiety", "SELF-NEGLECT": "self_neglect",
                "FALL": "fall_or_near_fall", "MEDS-MISSED": "missed_medication",
                "COG-DECLINE": "cognitive_decline", "BEREAVED": "bereavement",
                "SUBSTANCE": "substance_use", "FOOD-INSEC": "food_insecurity",
                "DISENGAGED": "disengagement", "SUPPORT-NETWORK": "support_network",
                "ENGAGED": "engaged_with_plan", "IMPROVING": "improving"},
        "author_role": {"GP": "gp", "Practice Nurse": "practice_nurse",
                        "Social Prescribing Link Worker": "link_worker"},
    },
    "acute": {
        "service": {"AE": "ae_attendance", "NEL": "emergency_admission", "OP": "outpatient_attendance",
                    "AMB": "ambulance_callout"},
        "status": {"5": "attended", "6": "attended", "3": "did_not_attend", "7": "did_not_attend",
                   "2": "cancelled", "4": "cancelled"},
        "mode": {"1": "face_to_face", "2": "phone", "3": "video", "4": "home_visit"},
    },
    "community": {
        "service": {"DN": "community_nursing", "CMHT": "mental_health_contact",
                    "CRHT": "mental_health_crisis"},
        "status": {"Attended": "attended", "DNA": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"F2F": "face_to_face", "Tel": "phone", "Video": "video", "Home": "home_visit"},
        "tag": {"CS": "carer_strain", "SI": "social_isolation", "HI": "housing_insecurity",
                "FH": "financial_hardship", "LM": "low_mood", "AX": "anxiety", "SN": "self_neglect",
                "FA": "fall_or_near_fall", "MM": "missed_medication", "CD": "cognitive_decline",
                "BE": "bereavement", "SU": "substance_use", "FI": "food_insecurity",
                "DE": "disengagement", "SP": "support_network", "EP": "engaged_with_plan",
                "IM": "improving"},
        "author_role": {"District Nurse": "district_nurse",
                        "MH Practitioner": "mental_health_practitioner"},
    },
    "social_care": {
        "service": {"Contact": "social_care_contact", "Assessment": "social_care_assessment",
                    "Police Concern": "police_welfare_check", "VCS Referral": "voluntary_sector_contact"},
        "status": {"Completed": "attended", "No Access": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"In person": "face_to_face", "Phone": "phone", "Video": "video",
                 "Home visit": "home_visit"},
        "tag": {t.replace("_", " "): t for t in TAGS},
        "author_role": {"Social Worker": "social_worker", "Care Coordinator": "care_coordinator"},
    },
    "housing": {
        "service": {"Tenancy support": "housing_contact"},
        "status": {"Seen": "attended", "No answer": "did_not_attend", "Cancelled": "cancelled"},
        "mode": {"Office": "face_to_face", "Phone": "phone", "Video": "video", "Home": "home_visit"},
        "tag": {"Insecure tenancy": "housing_insecurity", "Rent arrears": "financial_hardship",
                "Food bank referral": "food_insecurity", "Carer under strain": "carer_strain",
                "Isolated": "social_isolation", "Low mood": "low_mood", "Anxious": "anxiety",
                "Self neglect": "self_neglect", "Fall": "fall_or_near_fall",
                "Missing medication": "missed_medication", "Memory concerns": "cognitive_decline",
                "Bereaved": "bereavement", "Substance misuse": "substance_use",
                "Not engaging": "disengagement", "Family support": "support_network",
                "Engaged with plan": "engaged_with_plan", "Improving": "improving"},
        "author_role": {"Housing Officer": "housing_officer"},
    },
}


def _reverse(system: str, kind: str) -> dict[str, str]:
    """Contract value → the first local code for it (what the synthetic system writes)."""
    out: dict[str, str] = {}
    for local, contract in CODES[system][kind].items():
        out.setdefault(contract, local)
    return out






def fmt_nhs(nhs: pl.Expr, system: str) -> pl.Expr:
    s = nhs.cast(pl.String)
    if system == "gp":  # "943 476 5919"
        return pl.concat_str([s.str.slice(0, 3), s.str.slice(3, 3), s.str.slice(6, 4)], separator=" ")
    return s



def labels(codes: np.ndarray, labels: list[str] | tuple[str, ...]) -> pl.Series:
    """A string Series from integer codes into `labels` (faster than numpy string arrays)."""
    return pl.Series(np.asarray(codes, dtype=np.int64)).replace_strict(
        dict(enumerate(labels)), return_dtype=pl.String
    )


def team_code(t: int) -> str:
    return f"T{int(t) + 1:02d}"


def team_codes(t: np.ndarray) -> np.ndarray:
    return np.char.add("T", np.char.zfill((np.asarray(t) + 1).astype(str), 2))


def to_local(column: str, system: str, kind: str) -> pl.Expr:
    """The system's own code for a contract value (unmapped values pass through)."""
    return pl.col(column).replace_strict(_reverse(system, kind), default=pl.col(column))


def _local(col: pl.Expr, system: str, kind: str, contract: tuple[str, ...]) -> pl.Expr:
    rev = _reverse(system, kind)
    mapping = {i: rev[v] for i, v in enumerate(contract) if v in rev}
    return col.replace_strict(mapping, default=None, return_dtype=pl.String)


def status_expr(system: str) -> pl.Expr:
    return _local(pl.col("status"), system, "status", ("attended", "did_not_attend", "cancelled"))


def mode_expr(system: str) -> pl.Expr:
    return _local(pl.col("mode"), system, "mode", ("face_to_face", "phone", "video", "home_visit"))


def date_override(column: str, iso: bool = False) -> pl.Expr:
    bad = "2026-02-30T10:00:00" if iso else "30/02/2026 10:00"
    return (
        pl.when(pl.col("_override_date").is_not_null()).then(pl.lit(bad))
        .otherwise(pl.col(column)).alias(column)
    )


def inject_defects(
    rng: np.random.Generator, df: pl.DataFrame, system: str, defects: dict[str, int],
    pop: dict[str, np.ndarray], *, kind: str,
) -> pl.DataFrame:
    """Break a small stated share of rows the way real extracts break; count what was broken."""
    n = df.height
    source = _SOURCE_NAMES[(system, kind)]
    u = rng.random(n)
    r = DEFECT_RATES
    edges = np.cumsum([r["invalid_nhs_number"], r["impossible_date"], r["unknown_code"],
                       r["missing_field"], r["person_not_found"]])
    which = np.searchsorted(edges, u, side="right")  # 0..4 a defect, 5 none
    names = ["invalid_nhs_number", "impossible_date", "unknown_code", "missing_field",
             "person_not_found"]
    for i, name in enumerate(names):
        c = int((which == i).sum())
        if c:
            defects[f"{source}.{name}"] = defects.get(f"{source}.{name}", 0) + c
    nhs = df["nhs"].to_numpy().copy()
    # A wrong last digit always breaks the check digit.
    nhs = np.where(which == 0, nhs - nhs % 10 + (nhs % 10 + 1) % 10, nhs)
    # Valid numbers for people not on the register (temporary residents, data errors),
    # from a block the population never draws from.
    nhs = np.where(which == 4, STRANGERS[rng.integers(0, STRANGERS.size, n)], nhs)
    code_col = "service" if kind == "contacts" else "tag"
    return df.with_columns(
        pl.Series("nhs", nhs),
        pl.when(pl.Series(which == 2)).then(pl.lit("UNKNOWN-CODE")).otherwise(pl.col(code_col)).alias(code_col),
        pl.when(pl.Series(which == 1)).then(pl.lit(1)).otherwise(None).alias("_override_date"),
    ).with_columns(
        # Missing field: the record id survives but the date is blank.
        pl.when(pl.Series(which == 3)).then(None).otherwise(pl.col("recorded_at" if kind == "tags" else "occurred_at"))
        .alias("recorded_at" if kind == "tags" else "occurred_at")
    )


def _strangers() -> np.ndarray:
    prefix = np.arange(STRANGER_PREFIX_FROM, STRANGER_PREFIX_FROM + 50, dtype=np.int64)
    check = check_digit(prefix)
    return (prefix * 10 + check)[check != 10]


STRANGERS = _strangers()


_SOURCE_NAMES = {
    ("gp", "contacts"): "gp_appointments", ("acute", "contacts"): "acute_activity",
    ("community", "contacts"): "community_contacts", ("social_care", "contacts"): "social_care_events",
    ("housing", "contacts"): "housing_contacts", ("gp", "tags"): "gp_concerns",
    ("community", "tags"): "community_flags", ("social_care", "tags"): "social_care_observations",
    ("housing", "tags"): "housing_flags", ("acute", "tags"): "acute_tags",
}


# How each extract maps to the contract: (source, table, system, kind, path, formats, columns).
SOURCES = (
    ("gp_registrations", "persons", "gp", "csv", "gp/registrations.csv",
     {"date_format": "%d/%m/%Y"},
     {"nhs_number": "NHSNumber", "birth_date": "DateOfBirth", "sex": "Gender",
      "ethnicity_group": "EthnicCategory", "lsoa": "LSOA11", "practice_id": "PracticeCode",
      "opted_out": "NationalOptOut", "died_on": "DateOfDeath", "registered_on": "RegistrationDate",
      # identity, for the vault only (it never reaches the warehouse)
      "forename": "Forename", "surname": "Surname", "postcode": "Postcode"}),
    ("gp_appointments", "contacts", "gp", "csv", "gp/appointments_*.csv",
     {"timestamp_format": "%d/%m/%Y %H:%M"},
     {"nhs_number": "NHSNumber", "record_id": "AppointmentID", "occurred_at": "AppointmentDate",
      "recorded_at": "EnteredDate", "service": "SlotType", "status": "Status",
      "mode": "ConsultationMode", "professional": "ClinicianCode"}),
    ("acute_activity", "contacts", "acute", "parquet", "acute/activity*.parquet", {},
     {"nhs_number": "nhs_no", "record_id": "episode_id", "occurred_at": "start_ts",
      "recorded_at": "created_ts", "service": "pod", "status": "attend_status",
      "mode": "contact_mode", "professional": "consultant"}),
    ("community_contacts", "contacts", "community", "csv", "community/contacts.csv",
     {"delimiter": ";", "timestamp_format": "%Y-%m-%dT%H:%M:%S"},
     {"nhs_number": "PatientNHS", "record_id": "ContactRef", "occurred_at": "ContactDateTime",
      "recorded_at": "EnteredDateTime", "service": "ServiceLine", "status": "Outcome",
      "mode": "ContactType", "professional": "StaffID"}),
    ("social_care_events", "contacts", "social_care", "parquet", "social_care/events.parquet", {},
     {"nhs_number": "person_nhs", "record_id": "event_id", "occurred_at": "event_date",
      "recorded_at": "input_date", "service": "event_type", "status": "outcome",
      "mode": "method", "professional": "worker_id"}),
    ("housing_contacts", "contacts", "housing", "csv", "housing/contacts.csv",
     {"timestamp_format": "%d-%b-%Y"},
     {"nhs_number": "nhs_number", "record_id": "ref", "occurred_at": "visit_date",
      "recorded_at": "logged", "service": "contact_type", "status": "outcome", "mode": "channel",
      "professional": "officer"}),
    ("gp_concerns", "tags", "gp", "csv", "gp/concerns.csv",
     {"timestamp_format": "%d/%m/%Y %H:%M"},
     {"nhs_number": "NHSNumber", "record_id": "ConcernID", "recorded_at": "EnteredDate",
      "tag": "Code", "author_role": "AuthorRole"}),
    ("community_flags", "tags", "community", "csv", "community/flags.csv",
     {"delimiter": ";", "timestamp_format": "%Y-%m-%dT%H:%M:%S"},
     {"nhs_number": "PatientNHS", "record_id": "FlagRef", "recorded_at": "RaisedOn",
      "tag": "FlagCode", "author_role": "RaisedBy"}),
    ("social_care_observations", "tags", "social_care", "parquet", "social_care/observations.parquet", {},
     {"nhs_number": "person_nhs", "record_id": "obs_id", "recorded_at": "created",
      "tag": "category", "author_role": "worker_role"}),
    ("housing_flags", "tags", "housing", "csv", "housing/flags.csv",
     {"timestamp_format": "%d-%b-%Y"},
     {"nhs_number": "nhs_number", "record_id": "ref", "recorded_at": "logged", "tag": "risk_flag",
      "author_role": "officer_role"}),
)


