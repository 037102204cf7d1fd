"""The permission rules (wobble.review.roles): who may read, record, reveal, break glass, manage
tokens and read the audit."""

from __future__ import annotations

import pytest

from wobble.review.roles import (
    BREAK_GLASS_REASONS,
    REVEAL_REASONS,
    User,
    can_manage_tokens,
    can_read_audit,
    can_read_list,
    can_record_outcome,
    can_reveal,
)

MEMBER = User("m", "Mo", "team_member", ("T01",))
CLIN = User("c", "Cy", "clinician", ("T01",))
LEAD = User("l", "Li", "team_lead", ("T01",))
AUDITOR = User("a", "Al", "auditor")
ANALYST = User("n", "An", "analyst")
MACHINE = User("token:1", "script", "clinician", ("T01",), machine=True)
REASON = next(iter(REVEAL_REASONS))
GLASS = next(iter(BREAK_GLASS_REASONS))


@pytest.mark.parametrize(("user", "own", "other"), [
    (MEMBER, True, False), (CLIN, True, False), (LEAD, True, False), (AUDITOR, False, False),
    (ANALYST, True, True)])
def test_reading_lists(user, own, other):
    assert bool(can_read_list(user, "T01")) is own
    assert bool(can_read_list(user, "T02")) is other


def test_recording_outcomes_is_for_the_team_itself():
    assert all(can_record_outcome(u, "T01") for u in (MEMBER, CLIN, LEAD))
    assert not any(can_record_outcome(u, "T01") for u in (AUDITOR, ANALYST))
    assert not can_record_outcome(CLIN, "T02")


def test_only_clinicians_of_the_team_reveal_listed_people_with_a_reason():
    ok = can_reveal(CLIN, "T01", on_list=True, reason=REASON)
    assert ok and not ok.flagged
    assert can_reveal(LEAD, "T01", on_list=True, reason=REASON)
    for user in (MEMBER, AUDITOR, ANALYST, MACHINE):
        assert not can_reveal(user, "T01", on_list=True, reason=REASON), user
    assert "not a clinician of team T02" in can_reveal(CLIN, "T02", on_list=True, reason=REASON).why
    assert can_reveal(ANALYST, "T01", on_list=True, reason=REASON).why == "an analyst may not see identities"
    assert "break-glass" in can_reveal(CLIN, "T01", on_list=False, reason=REASON).why
    assert not can_reveal(CLIN, "T01", on_list=True, reason="curiosity")
    assert not can_reveal(CLIN, "T01", on_list=True, reason="")


def test_break_glass_is_allowed_with_a_reason_and_flagged():
    d = can_reveal(CLIN, "T01", on_list=False, reason=GLASS, break_glass=True)
    assert d and d.flagged
    assert not can_reveal(CLIN, "T01", on_list=False, reason=REASON if REASON not in BREAK_GLASS_REASONS
                          else "x", break_glass=True)
    for user in (MEMBER, AUDITOR, ANALYST, MACHINE):
        assert not can_reveal(user, "T01", on_list=False, reason=GLASS, break_glass=True)


def test_tokens_are_the_leads_and_the_audit_the_auditors():
    assert can_manage_tokens(LEAD, "T01") and not can_manage_tokens(LEAD, "T02")
    assert not any(can_manage_tokens(u, "T01") for u in (MEMBER, CLIN, AUDITOR, ANALYST))
    assert can_read_audit(AUDITOR)
    assert not any(can_read_audit(u) for u in (MEMBER, CLIN, LEAD, ANALYST))
