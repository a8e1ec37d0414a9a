"""Dispatch domain: the aggregate, its workflow table, its domain events. No I/O.

Imports only the standard library and the project's own stdlib-only kernel (`shared.workflow`,
`shared.domain`), which every domain shares so that the table's shape is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from shared.domain import Actor, Aggregate, AuditFact, DomainEvent
from shared.workflow import (
    SYSTEM,
    Evidence,
    Forbidden,
    Guard,
    InvalidInput,
    NotAllowedFromState,
    Rule,
    Workflow,
)

ENTITY = "dispatch"


class Status(StrEnum):
    PENDING = "pending"
    RELEASED = "released"
    PICKING = "picking"
    PACKED = "packed"
    SHIPPED = "shipped"
    ON_HOLD = "on_hold"
    CANCELLED = "cancelled"


OPEN_STATES = frozenset({Status.PENDING, Status.RELEASED, Status.PICKING, Status.PACKED})
HOLD_ROLES = frozenset({"planner", "warehouse", "shipping", "supervisor"})
# Not a role anyone's token carries: the caller owns an exception on this dispatch.
EXCEPTION_OWNER = "exception_owner"
# The dispatch service acting on its own (order.confirmed, order.cancelled).
SYSTEM_ACTOR = Actor(id="dispatch", role=SYSTEM)


# ---------------------------------------------------------------------------- the aggregate


@dataclass(frozen=True)
class Line:
    line_no: int
    product_id: str
    quantity: Decimal
    uom: str


@dataclass(frozen=True)
class OrderSnapshot:
    """What `order.confirmed` says of the order: the dispatch keeps it as its own copy."""

    order_id: str
    external_ref: str | None
    source: str | None
    customer_id: str
    requested_ship_date: Any
    priority: str
    ship_to: dict[str, Any]
    lines: list[dict[str, Any]]


@dataclass
class Dispatch(Aggregate):
    id: str
    order_id: str
    status: Status
    version: int
    lines: list[Line]
    held_from: Status | None = None
    open_exceptions: int = 0
    open_blocking_exceptions: int = 0
    exception_owners: frozenset[str] = field(default_factory=frozenset)
    facts: dict[str, Any] = field(default_factory=dict)
    correlation_id: Any = None  # the order journey's: carried through, never decided on
    order: OrderSnapshot | None = None  # set on a new dispatch only, for its first write

    @classmethod
    def open_for(cls, order: OrderSnapshot, *, dispatch_id: str, correlation_id: Any) -> Dispatch:
        """The one dispatch of a confirmed order, as the table's creation edge allows."""
        WORKFLOW.decide_creation(Status.PENDING, roles=frozenset({SYSTEM}))
        created = cls(
            id=dispatch_id, order_id=order.order_id, status=Status.PENDING, version=1,
            lines=[_line(x) for x in order.lines], correlation_id=correlation_id, order=order,
        )
        created.record(DispatchCreated(dispatch_id=dispatch_id, order_id=order.order_id,
                                       version=1, status=Status.PENDING))
        return created

    def move(
        self,
        target: Status,
        *,
        actor_id: str,
        roles: frozenset[str],
        expected_version: int | None,
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> None:
        """Take one edge of the table, or raise the refusal that applies (nothing changes)."""
        if actor_id in self.exception_owners:
            roles = roles | {EXCEPTION_OWNER}
        decision = WORKFLOW.decide(self, target, roles=roles, expected_version=expected_version,
                                   reason=reason, evidence=evidence)
        source = self.status
        self.held_from = source if target == Status.ON_HOLD else None
        self.status = target
        self.version += 1
        self.facts = {**self.facts, **_facts_of(decision.rule.evidence, decision.evidence)}
        self.record(DispatchMoved(
            dispatch_id=self.id, order_id=self.order_id, version=self.version,
            from_status=source, status=target, reason=reason, evidence=decision.evidence,
            short_lines=_short_lines(self, decision.evidence),
            actor=Actor(id=actor_id, role=decision.acting_role),
        ))

    def cancel_for_order(self, reason: str) -> None:
        """The order was cancelled: cancel as the system if the table lets it, else say why not."""
        try:
            self.move(Status.CANCELLED, actor_id=SYSTEM_ACTOR.id, roles=frozenset({SYSTEM}),
                      expected_version=None, reason=reason.strip() or "order cancelled")
        except (Forbidden, NotAllowedFromState):
            self.record(DispatchCancelRefused(
                dispatch_id=self.id, status=self.status,
                reason=f"order cancelled while dispatch is {self.status}: "
                       "a supervisor must cancel it with a second approval",
            ))


def _line(raw: Mapping[str, Any]) -> Line:
    return Line(int(raw["line_no"]), raw["product_id"], Decimal(str(raw["quantity"])), raw["uom"])


def _facts_of(kind: Evidence[Dispatch] | None, evidence: dict[str, Any]) -> dict[str, Any]:
    """What a transition's evidence leaves on the dispatch."""
    if kind is PACKED_LINES:
        return {"packed_lines": evidence["lines"]}
    if kind is SHIPMENT:
        return {"carrier": evidence["carrier"], "tracking_number": evidence["tracking_number"]}
    if kind is HOLD:
        return {"hold_reason_code": evidence["reason_code"], "hold_owner": evidence["owner"],
                "hold_due_at": evidence["due_at"]}
    return {}


def _short_lines(dispatch: Dispatch, evidence: dict[str, Any]) -> list[int]:
    ordered = {line.line_no: line.quantity for line in dispatch.lines}
    return sorted(int(x["line_no"]) for x in evidence.get("lines", [])
                  if Decimal(x["quantity"]) < ordered[int(x["line_no"])])


# ---------------------------------------------------------------------------- domain events


@dataclass(frozen=True, kw_only=True)
class DispatchCreated(DomainEvent):
    dispatch_id: str
    order_id: str
    version: int
    status: Status

    def audit(self) -> AuditFact:
        return AuditFact(action="dispatch.created", entity_type=ENTITY, entity_id=self.dispatch_id,
                         to_state=self.status, details={"order_id": self.order_id, "version": 1})


@dataclass(frozen=True, kw_only=True)
class DispatchMoved(DomainEvent):
    dispatch_id: str
    order_id: str
    version: int
    from_status: Status
    status: Status
    reason: str
    evidence: dict[str, Any]
    short_lines: list[int]
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        return AuditFact(
            action=f"dispatch.{self.status}", entity_type=ENTITY, entity_id=self.dispatch_id,
            from_state=self.from_status, to_state=self.status, reason=self.reason or None,
            details={"version": self.version, "evidence": self.evidence,
                     "short_lines": self.short_lines},
        )


@dataclass(frozen=True, kw_only=True)
class DispatchCancelRefused(DomainEvent):
    """order.cancelled arrived too late for the system to cancel: left for a supervisor."""

    dispatch_id: str
    status: Status
    reason: str

    def audit(self) -> AuditFact:
        return AuditFact(action="dispatch.cancel_refused", entity_type=ENTITY,
                         entity_id=self.dispatch_id, from_state=self.status,
                         to_state=self.status, reason=self.reason)


# ---------------------------------------------------------------------------- guards, evidence


def _no_open_blocking_exception(dispatch: Dispatch) -> str | None:
    if dispatch.open_blocking_exceptions:
        return f"{dispatch.open_blocking_exceptions} open blocking exception(s) must be resolved"
    return None


def _returns_to_the_state_it_left(target: Status) -> Guard[Dispatch]:
    def check(dispatch: Dispatch) -> str | None:
        if dispatch.held_from != target:
            return f"an on-hold dispatch returns to {dispatch.held_from}, not {target}"
        return None

    return Guard("returns to the state it left", check, refusal=NotAllowedFromState)


NO_OPEN_BLOCKING_EXCEPTION = Guard("no open blocking exception", _no_open_blocking_exception)


def _text_fields(evidence: Mapping[str, Any], keys: tuple[str, ...], *, required: str) -> dict[str, Any]:
    problems = [f"evidence.{key} is required{required}" for key in keys
                if not isinstance(evidence.get(key), str) or not evidence[key].strip()]
    if problems:
        raise InvalidInput(problems)
    return {key: evidence[key].strip() for key in keys}


def _shipment(_: Dispatch, evidence: Mapping[str, Any], __: frozenset[str]) -> dict[str, Any]:
    return _text_fields(evidence, ("carrier", "tracking_number"), required=" (non-empty text)")


def _hold(_: Dispatch, evidence: Mapping[str, Any], __: frozenset[str]) -> dict[str, Any]:
    stored = _text_fields(evidence, ("reason_code", "owner", "due_at"), required="")
    try:
        datetime.fromisoformat(stored["due_at"].replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(["evidence.due_at must be an ISO 8601 date-time"]) from None
    return stored


def _packed_lines(
    dispatch: Dispatch, evidence: Mapping[str, Any], roles: frozenset[str]
) -> dict[str, Any]:
    given = evidence.get("lines")
    if not isinstance(given, list) or not given:
        raise InvalidInput(["evidence.lines must list the packed quantity of every line"])
    ordered = {line.line_no: line for line in dispatch.lines}
    packed: dict[int, Decimal] = {}
    problems: list[str] = []
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            problems.append(f"evidence.lines[{i}] must be an object with line_no and quantity")
            continue
        problems += [f"evidence.lines[{i}].{key} is unknown: a line takes line_no and quantity"
                     for key in sorted(set(item) - {"line_no", "quantity"})]
        line_no, quantity = item.get("line_no"), item.get("quantity")
        if not isinstance(line_no, int) or line_no not in ordered:
            problems.append(f"evidence.lines[{i}].line_no {line_no!r} is not a line of this order")
            continue
        if line_no in packed:
            problems.append(f"line {line_no} is listed twice")
            continue
        try:
            qty = Decimal(str(quantity))
        except (InvalidOperation, ValueError):
            problems.append(f"line {line_no}: quantity {quantity!r} is not a number")
            continue
        if not qty.is_finite() or qty < 0:
            problems.append(f"line {line_no}: quantity must be zero or more")
        elif qty > ordered[line_no].quantity:
            problems.append(
                f"line {line_no}: packed {qty} is more than the ordered {ordered[line_no].quantity}"
            )
        packed[line_no] = qty
    missing = sorted(set(ordered) - set(packed))
    if missing:
        problems.append(f"lines {missing} have no packed quantity")
    if problems:
        raise InvalidInput(problems)
    short = sorted(n for n, q in packed.items() if q < ordered[n].quantity)
    if short and not dispatch.open_exceptions and "supervisor" not in roles:
        raise InvalidInput(
            [f"lines {short} are short: open an exception first or have a supervisor pack them"]
        )
    return {"lines": [{"line_no": n, "quantity": str(packed[n])} for n in sorted(packed)]}


PACKED_LINES: Evidence[Dispatch] = Evidence(
    "packed lines", '{"lines": [{"line_no", "quantity"}]}', _packed_lines,
    fields=frozenset({"lines"}))
SHIPMENT: Evidence[Dispatch] = Evidence("shipment", '{"carrier", "tracking_number"}', _shipment,
                                        fields=frozenset({"carrier", "tracking_number"}))
HOLD: Evidence[Dispatch] = Evidence("hold", '{"reason_code", "owner", "due_at"}', _hold,
                                    fields=frozenset({"reason_code", "owner", "due_at"}))


# ---------------------------------------------------------------------------- the table


def _rule(source: Status | None, target: Status, roles: set[str], **kw: Any) -> Rule[Status, Dispatch]:
    return Rule(source, target, frozenset(roles), **kw)


# The workflow as data (DESIGN.md). API permissions, the audit trail, event names and the
# tests all read this one table.
WORKFLOW: Workflow[Status, Dispatch] = Workflow(ENTITY, [
    _rule(None, Status.PENDING, {SYSTEM}),  # (order.confirmed): exactly one dispatch per order
    _rule(Status.PENDING, Status.RELEASED, {"planner"}, guards=(NO_OPEN_BLOCKING_EXCEPTION,)),
    _rule(Status.RELEASED, Status.PICKING, {"warehouse"}),
    _rule(Status.PICKING, Status.PACKED, {"warehouse"}, evidence=PACKED_LINES),
    _rule(Status.PACKED, Status.SHIPPED, {"shipping"}, evidence=SHIPMENT),
    *(_rule(s, Status.ON_HOLD, set(HOLD_ROLES), evidence=HOLD, reason_required=True)
      for s in sorted(OPEN_STATES)),
    *(_rule(Status.ON_HOLD, s, {"supervisor", EXCEPTION_OWNER},
            guards=(_returns_to_the_state_it_left(s), NO_OPEN_BLOCKING_EXCEPTION))
      for s in sorted(OPEN_STATES)),
    _rule(Status.PENDING, Status.CANCELLED, {"supervisor", SYSTEM}, reason_required=True),
    _rule(Status.RELEASED, Status.CANCELLED, {"supervisor", SYSTEM}, reason_required=True),
    _rule(Status.PICKING, Status.CANCELLED, {"supervisor"}, reason_required=True, approval="cancel"),
    _rule(Status.PACKED, Status.CANCELLED, {"supervisor"}, reason_required=True, approval="cancel"),
])
