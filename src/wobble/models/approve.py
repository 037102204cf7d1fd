"""Approve: a named reviewer approves a model version for publication.

Writes one `approvals` row (who, when, note, whether it is a demo approval), tags the MLflow
model version with the same facts, and points the registry alias `champion` at it. Lists are
only ever published from an approved version (`require_approval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from wobble.core.config import Config
from wobble.core.errors import NotApproved, WobbleError
from wobble.core.warehouse import connect, one_row, transaction
from wobble.models.tracking import client, registered_version

CHAMPION = "champion"


@dataclass
class Approval:
    model_name: str
    model_version: str
    approved_by: str
    approved_at: datetime
    note: str
    demo: bool

    def summary(self) -> dict:
        return {"model_name": self.model_name, "model_version": self.model_version,
                "approved_by": self.approved_by, "approved_at": self.approved_at.isoformat(timespec="seconds"),
                "note": self.note, "demo": self.demo}


def approve(cfg: Config, *, model: str, version: str, by: str, note: str, demo: bool = False) -> Approval:
    """Record the approval, tag the version in MLflow and make it the champion."""
    from mlflow.exceptions import MlflowException


    by = by.strip()
    if not by:
        raise WobbleError("an approval needs the approver's name (--by)")
    c = client(cfg)
    try:
        c.get_model_version(model, str(version))
    except MlflowException:
        raise WobbleError(f"no model {model!r} version {version} in the registry; see `wobble train`") from None
    when = datetime.now().replace(microsecond=0)
    with connect(cfg.warehouse) as con, transaction(con):
        con.execute("INSERT INTO approvals VALUES (?, ?, ?, ?, ?, ?)",
                    [model, str(version), by, when, note, demo])
        con.execute("INSERT INTO audit_log VALUES (?, ?, NULL, NULL, 'approve_model', ?)",
                    [when, by, f"{model} v{version}" + (" (demo)" if demo else "")])
    for k, v in (("approved_by", by), ("approved_at", when.isoformat()), ("approval_note", note),
                 ("approval_demo", str(demo).lower())):
        c.set_model_version_tag(model, str(version), k, v)
    c.set_registered_model_alias(model, CHAMPION, str(version))
    return Approval(model, str(version), by, when, note, demo)


def champion(cfg: Config, model: str) -> str:
    """The version the `champion` alias points at; with none, what to do: train the model first,
    or approve one of its versions."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(cfg).get_model_version_by_alias(model, CHAMPION).version)
    except MlflowException:
        registered_version(cfg, model)  # no version at all: train first, not approve
        raise NotApproved(
            f"model {model!r} has no approved version: run `wobble approve --model {model} "
            "--version V --by \"NAME\" --note \"...\"` after reading its model card"
        ) from None


def require_approval(con, model: str, version: str) -> Approval:
    """The latest approval of this version, or NotApproved with how to get one."""
    row = one_row(con, "SELECT approved_by, approved_at, note, demo FROM approvals WHERE model_name = ? "
                       "AND model_version = ? ORDER BY approved_at DESC LIMIT 1", [model, str(version)])
    if row is None:
        raise NotApproved(
            f"model {model} version {version} has not been approved for publication: read its "
            f"model card, then run `wobble approve --model {model} --version {version} "
            "--by \"NAME\" --note \"...\"`"
        )
    return Approval(model, str(version), row[0], row[1], row[2] or "", bool(row[3]))
