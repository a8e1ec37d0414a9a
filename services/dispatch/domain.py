"""Dispatch domain: the transition table, the rules that decide a transition, domain errors. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any


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


class Evidence(StrEnum):
    NONE = "none"
    PACKED_LINES = "packed_lines"  # {"lines": [{"line_no", "quantity"}]}
    SHIPMENT = "shipment"  # {"carrier", "tracking_number"}
    HOLD = "hold"  # {"reason_code", "owner", "due_at"}


@dataclass(frozen=True)
class Rule:
    """One allowed edge of the workflow: who may take it and what it needs."""

    source: Status
    target: Status
    roles: frozenset[str]
    evidence: Evidence = Evidence.NONE
    reason_required: bool = False
    four_eyes: bool = False
    guard: str = ""


def _rule(source: Status, target: Status, roles: set[str], **kw: Any) -> Rule:
    return Rule(source, target, frozenset(roles), **kw)


# The workflow as data (DESIGN.md). API permissions, the audit trail, notification event names
# and the tests all read this one table.
TRANSITIONS: dict[tuple[Status, Status], Rule] = {
    (r.source, r.target): r
    for r in [
        _rule(Status.PENDING, Status.RELEASED, {"planner"}, guard="no open blocking exception"),
        _rule(Status.RELEASED, Status.PICKING, {"warehouse"}),
        _rule(Status.PICKING, Status.PACKED, {"warehouse"}, evidence=Evidence.PACKED_LINES,
              guard="a short line needs an open exception or a supervisor"),
        _rule(Status.PACKED, Status.SHIPPED, {"shipping"}, evidence=Evidence.SHIPMENT),
        *(
            _rule(s, Status.ON_HOLD, set(HOLD_ROLES), evidence=Evidence.HOLD,
                  reason_required=True)
            for s in sorted(OPEN_STATES)
        ),
        *(
            _rule(Status.ON_HOLD, s, {"supervisor", "exception_owner"},
                  guard="returns to the state it left; all blocking exceptions resolved")
            for s in sorted(OPEN_STATES)
        ),
        _rule(Status.PENDING, Status.CANCELLED, {"supervisor", "system"}, reason_required=True),
        _rule(Status.RELEASED, Status.CANCELLED, {"supervisor", "system"}, reason_required=True),
        _rule(Status.PICKING, Status.CANCELLED, {"supervisor"}, reason_required=True,
              four_eyes=True),
        _rule(Status.PACKED, Status.CANCELLED, {"supervisor"}, reason_required=True,
              four_eyes=True),
    ]
}


def roles_for_target(target: Status) -> frozenset[str]:
    """Every role that may move some dispatch into `target` (for a 403 before state is read)."""
    return frozenset().union(*(r.roles for r in TRANSITIONS.values() if r.target == target))


# ---------------------------------------------------------------------------- errors


class DispatchError(Exception):
    """Base of the domain's refusals; each maps to one HTTP status at the edge."""


class NotFound(DispatchError):
    pass


class Forbidden(DispatchError):
    pass


class StaleVersion(DispatchError):
    pass


class NotAllowedFromState(DispatchError):
    pass


class GuardFailed(DispatchError):
    pass


class InvalidEvidence(DispatchError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class ApprovalRequired(DispatchError):
    pass


# ---------------------------------------------------------------------------- entity


@dataclass(frozen=True)
class Line:
    line_no: int
    product_id: str
    quantity: Decimal
    uom: str


@dataclass
class Dispatch:
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
    correlation_id: Any = None  # carried through, never decided on


@dataclass(frozen=True)
class Decision:
    """An accepted transition: the rule taken and the evidence, normalised for storage."""

    rule: Rule
    evidence: dict[str, Any]
    short_lines: list[int]


def decide(
    dispatch: Dispatch,
    target: Status,
    *,
    roles: frozenset[str],
    actor_id: str,
    expected_version: int,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
) -> Decision:
    """Check one requested transition against the table; raise the first refusal that applies."""
    evidence = evidence or {}
    if not roles & (roles_for_target(target) | {"exception_owner"}) and "system" not in roles:
        raise Forbidden(f"no role of {sorted(roles)} may move a dispatch to {target}")
    if expected_version != dispatch.version:
        raise StaleVersion(
            f"dispatch {dispatch.id} is at version {dispatch.version}, not {expected_version}"
        )
    rule = TRANSITIONS.get((dispatch.status, target))
    if rule is None:
        raise NotAllowedFromState(f"cannot go from {dispatch.status} to {target}")
    effective = set(roles)
    if actor_id in dispatch.exception_owners:
        effective.add("exception_owner")
    if not rule.roles & effective:
        raise Forbidden(
            f"{dispatch.status} → {target} needs one of {sorted(rule.roles)}; "
            f"caller has {sorted(roles)}"
        )
    if rule.reason_required and not reason.strip():
        raise InvalidEvidence([f"a reason is required for {dispatch.status} → {target}"])
    if rule.four_eyes:
        raise ApprovalRequired(
            f"{dispatch.status} → {target} needs a second supervisor's approval"
        )
    _check_guard(dispatch, rule)
    normalised, short = _check_evidence(dispatch, rule, evidence, roles)
    return Decision(rule=rule, evidence=normalised, short_lines=short)


def _check_guard(dispatch: Dispatch, rule: Rule) -> None:
    if (rule.source, rule.target) == (Status.PENDING, Status.RELEASED) and (
        dispatch.open_blocking_exceptions
    ):
        raise GuardFailed(
            f"{dispatch.open_blocking_exceptions} open blocking exception(s) must be resolved"
        )
    if rule.source == Status.ON_HOLD:
        if rule.target != dispatch.held_from:
            raise NotAllowedFromState(
                f"an on-hold dispatch returns to {dispatch.held_from}, not {rule.target}"
            )
        if dispatch.open_blocking_exceptions:
            raise GuardFailed(
                f"{dispatch.open_blocking_exceptions} open blocking exception(s) must be resolved"
            )


def _check_evidence(
    dispatch: Dispatch, rule: Rule, evidence: dict[str, Any], roles: frozenset[str]
) -> tuple[dict[str, Any], list[int]]:
    if rule.evidence == Evidence.PACKED_LINES:
        return _packed_lines(dispatch, evidence, roles)
    if rule.evidence == Evidence.SHIPMENT:
        problems = [
            f"evidence.{key} is required (non-empty text)"
            for key in ("carrier", "tracking_number")
            if not isinstance(evidence.get(key), str) or not evidence[key].strip()
        ]
        if problems:
            raise InvalidEvidence(problems)
        return {k: evidence[k].strip() for k in ("carrier", "tracking_number")}, []
    if rule.evidence == Evidence.HOLD:
        problems = [
            f"evidence.{key} is required"
            for key in ("reason_code", "owner", "due_at")
            if not isinstance(evidence.get(key), str) or not evidence[key].strip()
        ]
        if not problems:
            try:
                datetime.fromisoformat(evidence["due_at"].replace("Z", "+00:00"))
            except ValueError:
                problems.append("evidence.due_at must be an ISO 8601 date-time")
        if problems:
            raise InvalidEvidence(problems)
        return {k: evidence[k].strip() for k in ("reason_code", "owner", "due_at")}, []
    return {}, []


def _packed_lines(
    dispatch: Dispatch, evidence: dict[str, Any], roles: frozenset[str]
) -> tuple[dict[str, Any], list[int]]:
    given = evidence.get("lines")
    if not isinstance(given, list) or not given:
        raise InvalidEvidence(["evidence.lines must list the packed quantity of every line"])
    ordered = {line.line_no: line for line in dispatch.lines}
    packed: dict[int, Decimal] = {}
    problems: list[str] = []
    for i, item in enumerate(given):
        if not isinstance(item, dict):
            problems.append(f"evidence.lines[{i}] must be an object with line_no and quantity")
            continue
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
        raise InvalidEvidence(problems)
    short = sorted(n for n, q in packed.items() if q < ordered[n].quantity)
    if short and not dispatch.open_exceptions and "supervisor" not in roles:
        raise InvalidEvidence(
            [f"lines {short} are short: open an exception first or have a supervisor pack them"]
        )
    lines = [{"line_no": n, "quantity": str(packed[n])} for n in sorted(packed)]
    return {"lines": lines}, short
