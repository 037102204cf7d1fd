"""Who may do what on the review service: one place for the rules, each a pure function.

role        | list (pseudonymous) | outcomes  | reveal a listed person    | break-glass  | tokens    | audit
----------- | ------------------- | --------- | ------------------------- | ------------ | --------- | -----
team_member | own teams           | own teams | no                        | no           | no        | no
clinician   | own teams           | own teams | own teams' lists + reason | yes, flagged | no        | no
team_lead   | own teams           | own teams | own teams' lists + reason | yes, flagged | own teams | no
auditor     | no                  | no        | no                        | no           | no        | read
analyst     | every team          | no        | no                        | no           | no        | no

(The audit holds pseudonyms, actions and results: no identities and no free text.)

Re-identification is direct care: only a clinician (or a team lead, who is one) of the person's
own team, for a listed person, with a reason from `REVEAL_REASONS`. Break-glass is the exception
a clinician may take for someone not on their team's list, with a reason from
`BREAK_GLASS_REASONS`; it is allowed and flagged in the audit for review. Every answer, yes or no,
is a `Decision` the caller writes to the audit.
"""

from __future__ import annotations

from dataclasses import dataclass

TEAM_MEMBER, CLINICIAN, TEAM_LEAD, AUDITOR, ANALYST = "team_member", "clinician", "team_lead", "auditor", "analyst"
ROLE_NAMES = {TEAM_MEMBER: "team member", CLINICIAN: "clinician (direct care)", TEAM_LEAD: "team lead",
              AUDITOR: "auditor", ANALYST: "analyst"}
_DIRECT_CARE = (CLINICIAN, TEAM_LEAD)
_TEAM_ROLES = (TEAM_MEMBER, CLINICIAN, TEAM_LEAD)

# Why a clinician asks to see who a listed person is: the short list the page offers.
REVEAL_REASONS = {
    "huddle": "Discussing this person in the team's huddle",
    "contact": "Contacting the person or arranging a visit",
    "record_check": "Checking the person's own care record",
    "safeguarding": "Safeguarding concern",
}
# Why a clinician asks to see someone who is not on their team's list.
BREAK_GLASS_REASONS = {
    "urgent_care": "Urgent care: the person is in front of me or at risk now",
    "safeguarding": "Safeguarding concern raised about this person",
    "transfer": "The person has moved to or been referred to my team",
}


@dataclass(frozen=True)
class User:
    """Who is asking: a signed-in person (`sub` from their identity provider) or a machine token."""

    sub: str
    name: str
    role: str
    teams: tuple[str, ...] = ()
    machine: bool = False

    def label(self) -> str:
        return f"{self.name} ({ROLE_NAMES.get(self.role, self.role)})"


@dataclass(frozen=True)
class Decision:
    """Allowed or not, and why in a few words (for the audit and the refusal page)."""

    allowed: bool
    why: str
    flagged: bool = False  # a break-glass reveal: allowed, and marked for review
    code: str = ""  # a refusal in one or two words, for the audit's result ("refused 403: role")

    def __bool__(self) -> bool:
        return self.allowed


def _deny(why: str, code: str) -> Decision:
    return Decision(False, why, code=code)


def _a(role: str) -> str:
    name = ROLE_NAMES.get(role, role)
    return ("an " if name[0] in "aeiou" else "a ") + name


def can_read_list(user: User, team: str) -> Decision:
    """Read a team's list and person pages (pseudonymous)."""
    if user.role == ANALYST:
        return Decision(True, "analyst: pseudonymous lists of every team")
    if user.role in _TEAM_ROLES and team in user.teams:
        return Decision(True, "own team")
    if user.role == AUDITOR:
        return _deny("auditors read the audit, not the lists", "role")
    return _deny(f"not a member of team {team}", "other team")


def can_record_outcome(user: User, team: str) -> Decision:
    """Record what the huddle decided about a person on the team's list."""
    if user.role in _TEAM_ROLES and team in user.teams:
        return Decision(True, "own team")
    return _deny("only the team's own members record its decisions", "role")


def can_reveal(user: User, team: str, *, on_list: bool, reason: str, break_glass: bool = False) -> Decision:
    """Show who a person is (NHS number and name, from the vault).

    `team` is the list the person is asked about (for break-glass: the user's own team);
    `on_list`: whether the person is on that team's current list.
    """
    if user.machine:
        return _deny("machine tokens never see identities", "machine token")
    if user.role not in _DIRECT_CARE:
        return _deny(f"{_a(user.role)} may not see identities", "role")
    if break_glass:
        if reason not in BREAK_GLASS_REASONS:
            return _deny("break-glass needs a reason from the list", "reason")
        if not user.teams:
            return _deny("break-glass is for clinicians of a team", "no team")
        return Decision(True, "break-glass", flagged=True)
    if reason not in REVEAL_REASONS:
        return _deny("a reason from the list is needed", "reason")
    if team not in user.teams:
        return _deny(f"not a clinician of team {team}", "other team")
    if not on_list:
        return _deny(f"not on team {team}'s list (break-glass is the way, with a reason)", "not listed")
    return Decision(True, "direct care, own team's list")


def can_manage_tokens(user: User, team: str) -> Decision:
    """Create or revoke the team's machine tokens."""
    if user.role == TEAM_LEAD and team in user.teams and not user.machine:
        return Decision(True, "team lead")
    return _deny("only the team's lead manages its machine tokens", "role")


def can_read_audit(user: User) -> Decision:
    """Read the audit log (pseudonyms, actions and results: no identities, no free text)."""
    if user.role == AUDITOR and not user.machine:
        return Decision(True, "auditor")
    return _deny("only auditors read the audit", "role")
