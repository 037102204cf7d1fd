"""The data contract's vocabularies, in one place.

Every stage imports its codes from here; the README's data-contract section is
generated from the same lists, so code and documentation cannot drift apart.
"""

from __future__ import annotations

SERVICES: tuple[str, ...] = (
    "gp_appointment",
    "outpatient_attendance",
    "nhs111_call",
    "ae_attendance",
    "ambulance_callout",
    "emergency_admission",
    "community_nursing",
    "social_care_contact",
    "social_care_assessment",
    "mental_health_contact",
    "mental_health_crisis",
    "housing_contact",
    "police_welfare_check",
    "pharmacy_contact",
    "voluntary_sector_contact",
)

# The services whose contacts count as a crisis for the default target.
CRISIS_SERVICES: tuple[str, ...] = (
    "ae_attendance",
    "emergency_admission",
    "ambulance_callout",
    "mental_health_crisis",
)

SERVICE_LABELS: dict[str, str] = {
    "gp_appointment": "GP appointments",
    "outpatient_attendance": "outpatient appointments",
    "nhs111_call": "NHS 111 calls",
    "ae_attendance": "A&E attendances",
    "ambulance_callout": "ambulance call-outs",
    "emergency_admission": "emergency admissions",
    "community_nursing": "community nursing visits",
    "social_care_contact": "social care contacts",
    "social_care_assessment": "social care assessments",
    "mental_health_contact": "mental health contacts",
    "mental_health_crisis": "mental health crisis contacts",
    "housing_contact": "housing contacts",
    "police_welfare_check": "police welfare checks",
    "pharmacy_contact": "pharmacy contacts",
    "voluntary_sector_contact": "voluntary sector contacts",
}

STATUSES: tuple[str, ...] = ("attended", "did_not_attend", "cancelled")
MODES: tuple[str, ...] = ("face_to_face", "phone", "video", "home_visit")

CONCERN_TAGS: tuple[str, ...] = (
    "carer_strain",
    "social_isolation",
    "housing_insecurity",
    "financial_hardship",
    "low_mood",
    "anxiety",
    "self_neglect",
    "fall_or_near_fall",
    "missed_medication",
    "cognitive_decline",
    "bereavement",
    "substance_use",
    "food_insecurity",
    "disengagement",
)
STRENGTH_TAGS: tuple[str, ...] = ("support_network", "engaged_with_plan", "improving")
TAGS: tuple[str, ...] = CONCERN_TAGS + STRENGTH_TAGS
POLARITIES: tuple[str, ...] = ("concern", "strength")

TAG_LABELS: dict[str, str] = {t: t.replace("_", " ") for t in TAGS}
TAG_LABELS["fall_or_near_fall"] = "fall or near fall"

AUTHOR_ROLES: tuple[str, ...] = (
    "gp",
    "practice_nurse",
    "district_nurse",
    "mental_health_practitioner",
    "social_worker",
    "care_coordinator",
    "housing_officer",
    "link_worker",
)

# How a page names an author role: "GP", "district nurse".
ROLE_LABELS: dict[str, str] = {r: "GP" if r == "gp" else r.replace("_", " ") for r in AUTHOR_ROLES}

# How a report names a quarantine reason (`quarantine.reason`; the codes are `ingest.validate.REASONS`).
REASON_LABELS: dict[str, str] = {
    "malformed_line": "malformed line", "missing_field": "a required field missing",
    "entered_in_error": "entered in error", "invalid_nhs_number": "NHS number not valid",
    "impossible_date": "impossible date", "unknown_code": "code not in the mapping",
    "person_not_found": "person not registered", "opted_out": "opted out of data sharing",
    "duplicate": "duplicate",
}

# What a huddle decided about a listed person (`huddle_outcomes.outcome`).
OUTCOMES: tuple[str, ...] = (
    "discussed_no_action",
    "already_supported",
    "outreach_agreed",
    "referred_on",
    "not_a_concern",
    "data_problem",
    "deferred",
)
OUTCOME_LABELS: dict[str, str] = {
    "discussed_no_action": "discussed – no action",
    "already_supported": "already supported",
    "outreach_agreed": "outreach agreed",
    "referred_on": "referred on",
    "not_a_concern": "not a concern",
    "data_problem": "data problem",
    "deferred": "deferred",
}

# "not_known": not known, not specified or indeterminate (kept, never quarantined)
SEXES: tuple[str, ...] = ("female", "male", "not_known")
ETHNICITY_GROUPS: tuple[str, ...] = ("White", "Mixed", "Asian", "Black", "Other", "Not stated")

# The contract's coded fields and their values: what a source's codes (`values`) and `defaults` may
# map to (checked in the config), and what ingest accepts.
CONTRACT_VALUES: dict[str, tuple[str, ...]] = {
    "service": SERVICES, "status": STATUSES, "mode": MODES, "tag": TAGS, "sex": SEXES,
    "ethnicity_group": ETHNICITY_GROUPS, "opted_out": ("true", "false"), "author_role": AUTHOR_ROLES,
}

SOURCE_SYSTEMS: tuple[str, ...] = ("gp", "acute", "community", "social_care", "housing")
# How a page names a source system: as a word before "records" ("few or no hospital records")...
SYSTEM_LABELS: dict[str, str] = {"gp": "GP", "acute": "hospital", "community": "community health",
                                 "social_care": "social care", "housing": "housing"}
# ... and as the subject of a sentence ("any record from the hospital (acute trust)").
SYSTEM_NAMES: dict[str, str] = {"gp": "GP", "acute": "the hospital (acute trust)", "community": "community services",
                                "social_care": "social care", "housing": "housing"}

# Fairness reporting: the attributes every evaluation and monitoring report breaks figures down by,
# their labels, and the group a person falls in when the attribute is not recorded.
FAIRNESS_ATTRIBUTES: dict[str, str] = {"age_band": "age band", "sex": "sex", "ethnicity_group": "ethnicity group",
                                       "imd_quintile": "IMD quintile (1 = most deprived)"}
UNKNOWN_GROUP = "unknown"

AGE_BANDS: tuple[tuple[int, int, str], ...] = (
    (0, 17, "0-17"),
    (18, 39, "18-39"),
    (40, 64, "40-64"),
    (65, 79, "65-79"),
    (80, 200, "80+"),
)


def tag_polarity(tag: str) -> str:
    """Return 'concern' or 'strength' for a tag in the vocabulary."""
    if tag in CONCERN_TAGS:
        return "concern"
    if tag in STRENGTH_TAGS:
        return "strength"
    raise KeyError(f"unknown tag {tag!r}")


def system_label(system: str) -> str:
    """'hospital' for 'acute'; a system outside the vocabulary by its own name, spaced."""
    return SYSTEM_LABELS.get(system, system.replace("_", " "))


def upper_first(text: str) -> str:
    """The text with its first letter a capital, the rest as it is ('GP records', not 'Gp records')."""
    return text[:1].upper() + text[1:]


def role_label(role: str | None) -> str:
    """'GP' for 'gp', 'district nurse' for 'district_nurse'; 'unknown role' when missing."""
    return ROLE_LABELS.get(role, role.replace("_", " ")) if role else "unknown role"


def reason_label(reason: str) -> str:
    """'opted out of data sharing' for 'opted_out'; an unknown reason by its own name, spaced."""
    return REASON_LABELS.get(reason, reason.replace("_", " "))


def system_name(system: str) -> str:
    """'the hospital (acute trust)' for 'acute'; a system outside the vocabulary by its own name."""
    return SYSTEM_NAMES.get(system, system.replace("_", " "))
