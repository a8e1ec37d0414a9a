"""Conflicts: an ERP value for a field Spine owns, kept beside Spine's value, never applied. No I/O.

A conflict is detected once per (entity, id, field, ERP value): the ERP sending the same value
again counts as an occurrence of the same conflict. A person resolves it — `keep_spine` (Spine's
value stands; the ERP should be told) or `erp_corrected` (the ERP fixed its side) — with a
reason. An ERP that sends the value again after claiming to have corrected it reopens it.

Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from shared import workflow
from shared.domain import Aggregate, AuditFact, DomainEvent


class ConflictStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class Resolution(StrEnum):
    KEEP_SPINE = "keep_spine"
    ERP_CORRECTED = "erp_corrected"


def value_sha256(value: Any) -> str:
    """The digest of a value as JSON with sorted keys: `"4"` and `4` are different values."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SpineValue:
    """What Spine holds for a field, as far as the adapter knows it."""

    known: bool
    value: Any = None


UNKNOWN = SpineValue(False)


def agrees(erp_value: Any, spine: SpineValue) -> bool:
    """Whether the ERP only repeats what Spine holds (`"4.000"` and `"4"` are one quantity)."""
    if not spine.known:
        return False
    if erp_value == spine.value:
        return True
    try:
        return Decimal(str(erp_value)) == Decimal(str(spine.value))
    except (InvalidOperation, ValueError):
        return str(erp_value).strip() == str(spine.value).strip()


@dataclass(frozen=True, kw_only=True)
class ConflictDetected(DomainEvent):
    """A new conflict, or one the ERP reopened (`erp.conflict.detected` on the wire)."""

    conflict: Conflict
    reopened: bool = False

    def audit(self) -> AuditFact:
        c = self.conflict
        return AuditFact(
            action="erp.conflict.reopened" if self.reopened else "erp.conflict.detected",
            entity_type=c.entity, entity_id=c.entity_id, to_state=ConflictStatus.OPEN.value,
            reason=f"the ERP sent {c.field}={c.erp_value!r}, which {c.spine_owner} owns",
            details={"conflict_id": str(c.id), "field": c.field, "erp_value": c.erp_value,
                     "spine_value": c.spine_value if c.spine_value_known else None,
                     "spine_value_known": c.spine_value_known, "spine_owner": c.spine_owner,
                     "connector": c.connector},
        )


@dataclass(frozen=True, kw_only=True)
class ConflictRepeated(DomainEvent):
    """The ERP sent a value already in conflict again: counted, not a new row, not published."""

    conflict: Conflict

    def audit(self) -> AuditFact:
        c = self.conflict
        return AuditFact(
            action="erp.conflict.repeated", entity_type=c.entity, entity_id=c.entity_id,
            reason=f"the ERP sent {c.field}={c.erp_value!r} again ({c.occurrences} times)",
            details={"conflict_id": str(c.id), "occurrences": c.occurrences,
                     "status": c.status.value},
        )


@dataclass(frozen=True, kw_only=True)
class ConflictResolved(DomainEvent):
    conflict: Conflict

    def audit(self) -> AuditFact:
        c = self.conflict
        return AuditFact(
            action="erp.conflict.resolved", entity_type=c.entity, entity_id=c.entity_id,
            from_state=ConflictStatus.OPEN.value, to_state=ConflictStatus.RESOLVED.value,
            reason=c.reason,
            details={"conflict_id": str(c.id), "field": c.field,
                     "resolution": c.resolution.value if c.resolution else None},
        )


@dataclass
class Conflict(Aggregate):
    id: uuid.UUID
    entity: str
    entity_id: str
    field: str
    erp_value: Any
    spine_value: Any
    spine_value_known: bool
    spine_owner: str
    erp_record: dict[str, Any]
    connector: str
    order_id: str | None
    correlation_id: uuid.UUID
    status: ConflictStatus = ConflictStatus.OPEN
    resolution: Resolution | None = None
    reason: str | None = None
    resolved_by: str | None = None
    occurrences: int = 1
    version: int = 1

    @property
    def erp_value_sha256(self) -> str:
        return value_sha256(self.erp_value)

    @classmethod
    def detect(cls, *, entity: str, entity_id: str, field: str, erp_value: Any,
               spine: SpineValue, spine_owner: str, erp_record: dict[str, Any], connector: str,
               order_id: str | None, correlation_id: uuid.UUID) -> Conflict:
        """A new conflict, recorded as detected."""
        found = cls(uuid.uuid4(), entity, entity_id, field, erp_value, spine.value, spine.known,
                    spine_owner, erp_record, connector, order_id, correlation_id)
        found.record(ConflictDetected(conflict=found))
        return found

    def seen_again(self, erp_record: dict[str, Any], spine: SpineValue) -> None:
        """The ERP sent the same value again: one more occurrence; reopened if it claimed a fix."""
        self.occurrences += 1
        self.erp_record = erp_record
        self.spine_value, self.spine_value_known = spine.value, spine.known
        self.version += 1
        if self.status is ConflictStatus.RESOLVED and \
                self.resolution is Resolution.ERP_CORRECTED:
            self.status, self.resolution, self.resolved_by = ConflictStatus.OPEN, None, None
            self.record(ConflictDetected(conflict=self, reopened=True))
        else:
            self.record(ConflictRepeated(conflict=self))

    def resolve(self, resolution: Resolution, reason: str, by: str) -> None:
        if self.status is not ConflictStatus.OPEN:
            raise workflow.Conflict(
                f"conflict {self.id} is already resolved ({self.resolution}); nothing to decide")
        if not reason.strip():
            raise workflow.InvalidInput(["reason: say why (it is kept in the audit log)"])
        self.status, self.resolution, self.reason, self.resolved_by = (
            ConflictStatus.RESOLVED, resolution, reason.strip(), by)
        self.version += 1
        self.record(ConflictResolved(conflict=self))
