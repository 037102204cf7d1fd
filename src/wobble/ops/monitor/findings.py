"""A monitoring finding: what needs a human look, how urgently, and why; and how figures read."""

from __future__ import annotations

import math
from dataclasses import dataclass

LEVELS = ("ok", "watch", "act")


@dataclass
class Finding:
    """One thing that needs a human look: what it is, in plain words, and why it matters."""

    level: str  # watch | act
    area: str  # drift | performance | outcomes
    what: str
    why: str


def pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def num(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"




def avg(v: float | None, unit: str) -> str:
    """An average with its unit, as the catalogue names it: '153.82 days', '2.10 times usual', '12.5% yes'
    (a yes/no flag, whose unit is empty, averages to the share that is yes), '40.0%' (a share)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if unit == "share":
        return pct(v)
    if not unit:
        return f"{pct(v)} yes"
    return f"{num(v)} {unit}"


def psi_text(v: float) -> str:
    """A PSI as the report's tables print it (three decimals), so the text and the tables agree."""
    return f"{v:.3f}"
