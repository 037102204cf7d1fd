"""Errors a data analyst can act on.

A `WobbleError` is caught once, in the CLI, and printed as one line with a non-zero exit
code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class WobbleError(Exception):
    """A problem with input or configuration, explained in one line."""

    exit_code = 2


class ConfigError(WobbleError):
    """The configuration file or a spec is wrong; the message names the block and key."""


class WarehouseBusy(WobbleError):
    """Another process holds the warehouse for writing."""

    exit_code = 75  # EX_TEMPFAIL: try again later


class NotApproved(WobbleError):
    """A list was requested from a model version nobody has approved."""


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (at most 200 characters), or its type's name:
    for a one-line error about a library's failure."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def some_of(names: list[str], limit: int) -> str:
    """The first `limit` of `names`, comma-separated, with " …" when there are more: for a one-line
    error that names what there is ("found: NHS, When, Service …")."""
    return ", ".join(names[:limit]) + (" …" if len(names) > limit else "")
