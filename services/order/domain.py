"""Order domain: the aggregate, its workflow table, order validation, its domain events. No I/O.

Imports only the standard library and the project's own stdlib-only kernel (`shared.workflow`,
`shared.domain`), which every domain shares so that the table's shape is written once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from shared.domain import Actor, Aggregate, AuditFact, DomainEvent
from shared.workflow import SYSTEM, Decision, Rule, Workflow

ENTITY = "order"


class Status(StrEnum):
    RECEIVED = "received"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


# The order service itself, acting on a message (an outside sales system's submission, which
# may say the order is confirmed already). No token may claim it: see `person_roles`.
SYSTEM_ROLES = frozenset({SYSTEM})


def _rule(source: Status | None, target: Status, roles: set[str], **kw: Any) -> Rule[Status, Order]:
    return Rule(source, target, frozenset(roles), **kw)


# The lifecycle as data. API permissions, the audit trail and the tests read this one table.
WORKFLOW: Workflow[Status, Order] = Workflow(ENTITY, [
    # An order typed in by sales, or a submission taken in by the service.
    _rule(None, Status.RECEIVED, {"sales", SYSTEM}),
    # The service confirms on intake what the outside sales system confirmed already.
    _rule(Status.RECEIVED, Status.CONFIRMED, {"sales", "supervisor", SYSTEM}),
    _rule(Status.RECEIVED, Status.CANCELLED, {"sales", "supervisor"}, reason_required=True),
    _rule(Status.CONFIRMED, Status.CANCELLED, {"sales", "supervisor"}, reason_required=True),
])


def person_roles(roles: Iterable[str]) -> frozenset[str]:
    """A caller's roles as the table sees them: a token never acts as the service itself."""
    return frozenset(roles) - SYSTEM_ROLES


def person_roles_for_target(target: Status) -> frozenset[str]:
    """The roles a caller's token may use to move an order into `target` (never `system`)."""
    return person_roles(WORKFLOW.roles_for_target(target))


# ---------------------------------------------------------------------------- the aggregate


# Quantities are kept to three decimals (numeric(14, 3)); every copy of a line shows that scale,
# so an event built from a fresh submission reads the same as one built from the database.
QUANTITY_STEP = Decimal("0.001")


@dataclass(frozen=True)
class OrderLine:
    line_no: int
    product_id: str
    quantity: Decimal
    uom: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", Decimal(self.quantity).quantize(QUANTITY_STEP))


@dataclass(frozen=True)
class OrderDraft:
    """An order as someone asked for it, before it is checked against the replicas."""

    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: Mapping[str, str]
    lines: Sequence[OrderLine]
    external_ref: str | None = None
    source: str | None = None

    @property
    def product_ids(self) -> list[str]:
        return sorted({line.product_id for line in self.lines})


@dataclass
class Order(Aggregate):
    id: uuid.UUID
    status: Status
    version: int
    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: dict[str, str]
    lines: list[OrderLine]
    correlation_id: uuid.UUID
    created_by: str
    source: str | None = None
    external_ref: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def receive(
        cls,
        draft: OrderDraft,
        *,
        order_id: uuid.UUID,
        correlation_id: uuid.UUID,
        created_by: str,
        roles: frozenset[str],
    ) -> Order:
        """A new order from a checked draft, as the table's creation edge allows `roles`."""
        decision = WORKFLOW.decide_creation(Status.RECEIVED, roles=roles)
        order = cls(
            id=order_id, status=Status.RECEIVED, version=1, customer_id=draft.customer_id,
            requested_ship_date=draft.requested_ship_date, priority=draft.priority,
            ship_to=dict(draft.ship_to), lines=list(draft.lines), correlation_id=correlation_id,
            created_by=created_by, source=draft.source, external_ref=draft.external_ref,
        )
        order.record(OrderReceived(
            order_id=str(order_id), version=1, source=draft.source,
            external_ref=draft.external_ref, customer_id=draft.customer_id,
            line_count=len(order.lines), actor=_actor(created_by, decision),
        ))
        return order

    def confirm(self, *, actor_id: str, roles: frozenset[str],
                expected_version: int | None = None) -> None:
        """received → confirmed, or raise the refusal that applies (nothing changes)."""
        decision, source = self._move(Status.CONFIRMED, roles, expected_version, reason="")
        self.record(OrderConfirmed(
            order_id=str(self.id), version=self.version, from_status=source,
            source=self.source, external_ref=self.external_ref, customer_id=self.customer_id,
            requested_ship_date=self.requested_ship_date, priority=self.priority,
            ship_to=dict(self.ship_to), lines=tuple(self.lines), actor=_actor(actor_id, decision),
        ))

    def cancel(self, *, actor_id: str, roles: frozenset[str], reason: str,
               expected_version: int | None = None) -> None:
        """received or confirmed → cancelled, with a reason; or raise the refusal that applies."""
        decision, source = self._move(Status.CANCELLED, roles, expected_version, reason=reason)
        self.record(OrderCancelled(
            order_id=str(self.id), version=self.version, from_status=source,
            source=self.source, external_ref=self.external_ref, reason=reason.strip(),
            actor=_actor(actor_id, decision),
        ))

    def _move(self, target: Status, roles: frozenset[str], expected_version: int | None,
              *, reason: str) -> tuple[Decision[Status, Order], Status]:
        decision = WORKFLOW.decide(self, target, roles=roles, expected_version=expected_version,
                                   reason=reason)
        source = self.status
        self.status = target
        self.version += 1
        return decision, source


def _actor(actor_id: str, decision: Decision[Status, Order]) -> Actor | None:
    # The service deciding as the system acts on a message: the audit row and the event name
    # the message's sender (the unit of work's actor), not the service.
    return None if decision.acting_role == SYSTEM else Actor(id=actor_id, role=decision.acting_role)


# ---------------------------------------------------------------------------- domain events


@dataclass(frozen=True, kw_only=True)
class OrderReceived(DomainEvent):
    order_id: str
    version: int
    source: str | None
    external_ref: str | None
    customer_id: str
    line_count: int
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        return AuditFact(
            action="order.received", entity_type=ENTITY, entity_id=self.order_id,
            to_state=Status.RECEIVED,
            details={"version": self.version, "source": self.source,
                     "external_ref": self.external_ref, "customer_id": self.customer_id,
                     "lines": self.line_count},
        )


@dataclass(frozen=True, kw_only=True)
class OrderConfirmed(DomainEvent):
    """Carries the whole order: the dispatch service works from it and never asks back."""

    order_id: str
    version: int
    from_status: Status
    source: str | None
    external_ref: str | None
    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: dict[str, str]
    lines: tuple[OrderLine, ...]
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        return AuditFact(action="order.confirmed", entity_type=ENTITY, entity_id=self.order_id,
                         from_state=self.from_status, to_state=Status.CONFIRMED,
                         details={"version": self.version})


@dataclass(frozen=True, kw_only=True)
class OrderCancelled(DomainEvent):
    order_id: str
    version: int
    from_status: Status
    source: str | None
    external_ref: str | None
    reason: str
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        return AuditFact(action="order.cancelled", entity_type=ENTITY, entity_id=self.order_id,
                         from_state=self.from_status, to_state=Status.CANCELLED,
                         reason=self.reason or None, details={"version": self.version})


@dataclass(frozen=True, kw_only=True)
class SubmissionRejected(DomainEvent):
    """An outside system's submission that creates nothing; `reasons` go back to it."""

    source: str
    external_ref: str | None
    event_id: uuid.UUID
    reasons: list[str]

    def audit(self) -> AuditFact:
        # No order exists, so the row is about the submission: system and reference.
        return AuditFact(
            action="order.rejected", entity_type="order_submission",
            entity_id=f"{self.source}:{self.external_ref or self.event_id}",
            reason="; ".join(self.reasons),
            details={"source": self.source, "external_ref": self.external_ref,
                     "reasons": self.reasons, "event_id": str(self.event_id)},
        )


@dataclass(frozen=True, kw_only=True)
class SubmissionIgnored(DomainEvent):
    """A resubmission of a reference that already names an order: audited, answered by nothing."""

    order_id: uuid.UUID | None
    source: str
    external_ref: str | None
    event_id: uuid.UUID

    def audit(self) -> AuditFact:
        return AuditFact(
            action="order.submission_duplicate", entity_type=ENTITY, entity_id=str(self.order_id),
            reason=f"duplicate submission ignored: {self.source} reference "
                   f"{self.external_ref!r} is already order {self.order_id}",
            details={"source": self.source, "external_ref": self.external_ref,
                     "event_id": str(self.event_id)},
        )


ReplicaOutcome = Literal["inserted", "updated"]


@dataclass(frozen=True, kw_only=True)
class CustomerReplicated(DomainEvent):
    """The replica took a newer version of an ERP customer."""

    customer_id: str
    name: str
    active: bool
    version: int
    outcome: ReplicaOutcome

    def audit(self) -> AuditFact:
        return AuditFact(action=f"customer.{self.outcome}", entity_type="customer",
                         entity_id=self.customer_id, to_state=_activity(self.active),
                         details={"name": self.name, "version": self.version})


@dataclass(frozen=True, kw_only=True)
class ProductReplicated(DomainEvent):
    """The replica took a newer version of an ERP product."""

    product_id: str
    name: str
    uom: str
    active: bool
    version: int
    outcome: ReplicaOutcome

    def audit(self) -> AuditFact:
        return AuditFact(action=f"product.{self.outcome}", entity_type="product",
                         entity_id=self.product_id, to_state=_activity(self.active),
                         details={"name": self.name, "uom": self.uom, "version": self.version})


def _activity(active: bool) -> str:
    return "active" if active else "inactive"


# ---------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class CustomerReplica:
    id: str
    active: bool


@dataclass(frozen=True)
class ProductReplica:
    id: str
    active: bool
    uom: str


@dataclass(frozen=True)
class LineRef:
    """What a line names, even when the rest of the line broke the contract."""

    line_no: int | None
    product_id: str
    uom: str | None


def check_order(
    draft: OrderDraft,
    customer: CustomerReplica | None,
    products: Mapping[str, ProductReplica],
) -> list[str]:
    """Everything wrong with `draft` given what the ERP told us; empty when it may be accepted."""
    reasons: list[str] = []
    if draft.ship_to.get("country") not in ISO_3166_ALPHA_2:
        reasons.append(
            f"ship_to.country: {draft.ship_to.get('country')!r} is not an ISO 3166 country code"
        )
    refs = [LineRef(line.line_no, line.product_id, line.uom) for line in draft.lines]
    return reasons + check_references(draft.customer_id, refs, customer, products)


def check_references(
    customer_id: str | None,
    lines: Sequence[LineRef],
    customer: CustomerReplica | None,
    products: Mapping[str, ProductReplica],
) -> list[str]:
    """What is wrong with the customer and products an order names, against the ERP replicas."""
    reasons: list[str] = []
    if customer_id is not None:
        if customer is None:
            reasons.append(f"customer {customer_id} is unknown")
        elif not customer.active:
            reasons.append(f"customer {customer_id} is inactive")
    for line in sorted(lines, key=lambda x: (x.line_no is None, x.line_no or 0)):
        where = f"line {line.line_no}" if line.line_no is not None else "a line"
        product = products.get(line.product_id)
        if product is None:
            reasons.append(f"{where}: product {line.product_id} is unknown")
            continue
        if not product.active:
            reasons.append(f"{where}: product {line.product_id} is inactive")
        if line.uom is not None and product.uom != line.uom:
            reasons.append(
                f"{where}: unit {line.uom} does not match product "
                f"{line.product_id}, which is sold in {product.uom}"
            )
    return reasons


def provenance_problems(source: str, producer: str) -> list[str]:
    """An outside system may submit orders only under its own name (ext.<itself>.…)."""
    if producer == source:
        return []
    return [
        f"producer {producer!r} may not submit orders for system {source!r}: "
        f"an outside system publishes only under ext.<its own name>"
    ]


# ISO 3166-1 alpha-2, the officially assigned codes (user-assigned ones such as XK are not).
# A block of text reads and diffs far better than 249 quoted literals.
ISO_3166_ALPHA_2 = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905
)
