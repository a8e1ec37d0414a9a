"""Delivery confirmations to the ERP: what Spine shipped, as the ERP is told it. No I/O.

A `dispatch.shipped` or `dispatch.corrected` event becomes one confirmation whose idempotency
key is the causing event's id. Its first status follows the connector's mode at that moment:

    shadow  → shadowed            (recorded exactly as it would be sent; never sent)
    approve → awaiting_approval   → pending, when a person of role integration approves it
    auto    → pending

A pending confirmation is pushed by the worker: `acknowledged` when the ERP's answer is its
acknowledgement (HTTP), `posted` while an acknowledgement file is awaited (file) and then
`acknowledged`; after too many failed attempts, or at once when the ERP refuses it, `failed`,
from where a person may send it again (`pending`).

Standard library only.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from shared import workflow
from shared.domain import Aggregate, AuditFact, DomainEvent


class Mode(StrEnum):
    SHADOW = "shadow"
    APPROVE = "approve"
    AUTO = "auto"


class Status(StrEnum):
    SHADOWED = "shadowed"
    AWAITING_APPROVAL = "awaiting_approval"
    PENDING = "pending"
    POSTED = "posted"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"


class Kind(StrEnum):
    SHIPPED = "shipped"
    CORRECTED = "corrected"


FIRST_STATUS = {Mode.SHADOW: Status.SHADOWED, Mode.APPROVE: Status.AWAITING_APPROVAL,
                Mode.AUTO: Status.PENDING}
# The conservative start: a new connector records what it would send, and sends nothing.
DEFAULT_MODE = Mode.SHADOW


# --- what Spine shipped (the replica's view of one dispatch) ---------------------------------


@dataclass(frozen=True)
class ShippedLine:
    line_no: int
    shipped_quantity: str
    backorder_quantity: str

    def as_dict(self) -> dict[str, Any]:
        return {"line_no": self.line_no, "shipped_quantity": self.shipped_quantity,
                "backorder_quantity": self.backorder_quantity}


@dataclass(frozen=True)
class Shipment:
    """A shipped dispatch as the dispatch service published it (corrections applied)."""

    dispatch_id: str
    order_id: str
    version: int
    carrier: str | None
    tracking_number: str | None
    lines: tuple[ShippedLine, ...]

    @classmethod
    def shipped(cls, *, dispatch_id: str, order_id: str, version: int,
                evidence: dict[str, Any], lines: list[dict[str, Any]],
                backorder: list[dict[str, Any]]) -> Shipment:
        """From `dispatch.shipped`: shipped quantities per line, what is owed, carrier, tracking."""
        owed = {int(b["line_no"]): str(b["quantity"]) for b in backorder}
        return cls(dispatch_id, order_id, version,
                   _text(evidence.get("carrier")), _text(evidence.get("tracking_number")),
                   tuple(ShippedLine(int(x["line_no"]), str(x["quantity"]),
                                     owed.get(int(x["line_no"]), "0")) for x in lines))

    def corrected(self, version: int, changes: list[dict[str, Any]]) -> Shipment:
        """After `dispatch.corrected`: its `to` values; a line's backorder follows its quantity.

        What was ordered is what was shipped plus what is owed, so a corrected shipped quantity
        leaves `ordered - shipped` owed (never below zero).
        """
        carrier, tracking = self.carrier, self.tracking_number
        lines = {line.line_no: line for line in self.lines}
        for change in changes:
            name, to = change["field"], change.get("to")
            if name == "carrier":
                carrier = _text(to)
            elif name == "tracking_number":
                tracking = _text(to)
            elif name == "shipped_quantity" and change.get("line_no") is not None:
                no = int(change["line_no"])
                old = lines.get(no, ShippedLine(no, "0", "0"))
                ordered = Decimal(old.shipped_quantity) + Decimal(old.backorder_quantity)
                owed = max(ordered - Decimal(str(to)), Decimal(0))
                lines[no] = ShippedLine(no, str(to), _quantity(owed))
        return Shipment(self.dispatch_id, self.order_id, version, carrier, tracking,
                        tuple(lines[no] for no in sorted(lines)))

    def fields(self) -> dict[str, Any]:
        """The values a confirmation carries and reconciliation compares."""
        return {"order_id": self.order_id, "dispatch_id": self.dispatch_id,
                "carrier": self.carrier, "tracking_number": self.tracking_number,
                "lines": [line.as_dict() for line in self.lines]}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _quantity(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def document(kind: Kind, event_id: uuid.UUID, shipment: Shipment, *, occurred_at: str,
             changes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Exactly what the connector sends: the same in every mode, so shadow shows the truth."""
    doc: dict[str, Any] = {"confirmation": kind.value, "idempotency_key": str(event_id),
                           "dispatch_version": shipment.version, "occurred_at": occurred_at,
                           **shipment.fields()}
    if changes is not None:
        doc["corrections"] = changes
    return doc


@dataclass(frozen=True, kw_only=True)
class ConnectorModeChanged(DomainEvent):
    """Audited only: who switched which connector from what to what."""

    name: str
    before: Mode
    after: Mode

    def audit(self) -> AuditFact:
        return AuditFact(action="erp.connector.mode_changed", entity_type="connector",
                         entity_id=self.name, from_state=self.before.value,
                         to_state=self.after.value)


# --- the confirmation aggregate ---------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _ConfirmationEvent(DomainEvent):
    confirmation: Confirmation
    from_status: Status | None = None
    reason: str | None = None
    actor: Any = None
    name: str = ""

    def audit(self) -> AuditFact:
        c = self.confirmation
        return AuditFact(
            action=f"erp.confirmation.{self.name}", entity_type="confirmation",
            entity_id=str(c.id), from_state=self.from_status.value if self.from_status else None,
            to_state=c.status.value, reason=self.reason,
            details={"event_id": str(c.event_id), "dispatch_id": c.dispatch_id,
                     "order_id": c.order_id, "connector": c.connector, "kind": c.kind.value,
                     "attempts": c.attempts})


@dataclass(frozen=True, kw_only=True)
class ConfirmationRecorded(_ConfirmationEvent):
    name: str = "recorded"


@dataclass(frozen=True, kw_only=True)
class ConfirmationApproved(_ConfirmationEvent):
    name: str = "approved"


@dataclass(frozen=True, kw_only=True)
class ConfirmationRetried(_ConfirmationEvent):
    name: str = "retried"


@dataclass(frozen=True, kw_only=True)
class ConfirmationPosted(_ConfirmationEvent):
    """Sent and taken by the ERP (`erp.confirmation.posted` on the wire)."""

    name: str = "posted"


@dataclass(frozen=True, kw_only=True)
class ConfirmationAcknowledged(_ConfirmationEvent):
    name: str = "acknowledged"


@dataclass(frozen=True, kw_only=True)
class ConfirmationFailed(_ConfirmationEvent):
    """Given up on (`erp.confirmation.failed` on the wire)."""

    name: str = "failed"


@dataclass(frozen=True)
class Backoff:
    """When a failed attempt is tried again: exponential, capped, with jitter; `limit` attempts."""

    base_s: float = 2.0
    cap_s: float = 600.0
    limit: int = 8

    def delay(self, attempts: int, rand: random.Random | None = None) -> float:
        """Seconds before attempt `attempts + 1`: base·2^(n-1), capped, ±25 % jitter."""
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempts - 1, 0))
        jitter = (rand or random).uniform(0.75, 1.25)  # nosec B311 # spreading, not secrecy
        return float(ceiling * jitter)


@dataclass
class Confirmation(Aggregate):
    id: uuid.UUID
    event_id: uuid.UUID
    kind: Kind
    dispatch_id: str
    order_id: str
    dispatch_version: int
    connector: str
    status: Status
    document: dict[str, Any]
    correlation_id: uuid.UUID
    seq: int | None = None
    created_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    response: dict[str, Any] | None = None
    approved_by: str | None = None
    version: int = 1
    changed: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @classmethod
    def record_new(cls, *, event_id: uuid.UUID, kind: Kind, shipment: Shipment, connector: str,
                   mode: Mode, document: dict[str, Any],
                   correlation_id: uuid.UUID) -> Confirmation:
        found = cls(uuid.uuid4(), event_id, kind, shipment.dispatch_id, shipment.order_id,
                    shipment.version, connector, FIRST_STATUS[mode], document, correlation_id)
        found.record(ConfirmationRecorded(confirmation=found,
                                          reason=f"connector {connector} in mode {mode.value}"))
        return found

    def _move(self, to: Status, event: type[_ConfirmationEvent], *, reason: str | None = None,
              actor: Any = None) -> None:
        source, self.status = self.status, to
        self.version += 1
        self.record(event(confirmation=self, from_status=source, reason=reason, actor=actor))

    def approve(self, by: Any) -> None:
        """`by`: the actor (id, role) who lets it go."""
        if self.status is not Status.AWAITING_APPROVAL:
            raise workflow.Conflict(f"confirmation {self.id} is {self.status.value}; only one "
                                    "awaiting_approval can be approved")
        self.approved_by = by.id
        self._move(Status.PENDING, ConfirmationApproved, actor=by)

    def retry(self, by: Any) -> None:
        if self.status is not Status.FAILED:
            raise workflow.Conflict(f"confirmation {self.id} is {self.status.value}; only a "
                                    "failed one can be retried")
        self.attempts, self.last_error = 0, None
        self._move(Status.PENDING, ConfirmationRetried, reason=f"retried by {by.id}", actor=by)

    def sent(self, response: dict[str, Any], *, acknowledged: bool) -> None:
        """The connector delivered it; the ERP's answer acknowledges it, or a file will."""
        self.response, self.last_error = response, None
        self._move(Status.ACKNOWLEDGED if acknowledged else Status.POSTED, ConfirmationPosted)

    def acknowledge(self, answer: dict[str, Any]) -> None:
        """The ERP's acknowledgement file for a posted confirmation."""
        if self.status is Status.ACKNOWLEDGED:
            return
        self.response = answer
        self._move(Status.ACKNOWLEDGED, ConfirmationAcknowledged)

    def attempt_failed(self, error: str, *, permanent: bool, backoff: Backoff) -> float | None:
        """Seconds until the next attempt, or None: it failed for good (event published)."""
        self.last_error = error
        if permanent or self.attempts >= backoff.limit:
            self._move(Status.FAILED, ConfirmationFailed, reason=error)
            return None
        self.version += 1
        return backoff.delay(self.attempts)


def file_stem(created_at: datetime, seq: int, event_id: uuid.UUID) -> str:
    """`<UTC timestamp>-<seq>-<event id>`: sorts in the order the ERP should import them."""
    return f"{created_at.strftime('%Y%m%dT%H%M%S%fZ')}-{seq:012d}-{event_id}"


def due(now: datetime, seconds: float) -> datetime:
    return now + timedelta(seconds=seconds)
