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


