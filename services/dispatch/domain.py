"""Dispatch domain: the aggregate, its workflow tables, its domain events. No I/O.

Imports only the standard library and the project's own stdlib-only kernel (`shared.workflow`,
`shared.domain`), which every domain shares so that the table's shape is written once.

The dispatch is the aggregate; its exceptions and approval requests are records inside it. Every
change to any of them goes through the dispatch (one row lock, one version), so two people
acting on the same dispatch, exception or approval are serialised and exactly one wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from shared.domain import ROLES, Actor, Aggregate, AuditFact, DomainEvent
from shared.workflow import (
    SYSTEM,
    Conflict,
    Evidence,
    Forbidden,
    Guard,
    InvalidInput,
    NotAllowedFromState,
    NotFound,
    Rule,
    StaleVersion,
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
# Where an exception may still be opened: a shipped dispatch takes a non-blocking one (the
# customer cancelled after shipping: someone must arrange the return), a cancelled one none.
EXCEPTION_STATES = OPEN_STATES | {Status.ON_HOLD, Status.SHIPPED}
HOLD_ROLES = frozenset({"planner", "warehouse", "shipping", "supervisor"})
# Who may own an exception (a person, or `role:<one of these>`): anyone who works on orders.
# `ops` reads everything and operates the dead-letter queues (DESIGN.md, Roles); it changes
# no dispatch.
EXCEPTION_OWNER_ROLES = frozenset(ROLES) - {"ops"}
# Who may ask for a correction of a shipped dispatch (a supervisor of another name approves it).
CORRECTION_ROLES = frozenset({"warehouse", "shipping", "supervisor"})
APPROVER_ROLE = "supervisor"
# Not a role anyone's token carries: the caller owns the exception in question (its owner
# user, a holder of its owner role, or whoever owned it before it was escalated).
EXCEPTION_OWNER = "exception_owner"
# The dispatch service acting on its own (order.confirmed, order.cancelled, the timer).
SYSTEM_ACTOR = Actor(id="dispatch", role=SYSTEM)
ROLE_OWNER_PREFIX = "role:"
ESCALATION_OWNER = f"{ROLE_OWNER_PREFIX}{APPROVER_ROLE}"

REASON_CODES = ("stock_shortage", "damaged_goods", "quality_hold", "address_problem",
                "customer_request", "production_delay", "other")


class ExceptionStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"
    RESOLVED = "resolved"


_VERB = {ExceptionStatus.ACKNOWLEDGED: "acknowledge", ExceptionStatus.RESOLVED: "resolve"}


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class ApprovalKind(StrEnum):
    CANCEL = "cancel"
    SHORT_PACK = "short_pack"
    CORRECTION = "correction"


class CorrectedField(StrEnum):
    CARRIER = "carrier"
    TRACKING_NUMBER = "tracking_number"
    SHIPPED_QUANTITY = "shipped_quantity"


# ---------------------------------------------------------------------------- records


@dataclass
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
class ExceptionRecord:
    """An owned follow-up with a deadline: open → acknowledged → resolved, or escalated."""

    id: str
    reason_code: str
    description: str
    owner: str  # a user id, or `role:<role>`
    due_at: datetime
    blocking: bool
    opened_by: str
    status: ExceptionStatus = ExceptionStatus.OPEN
    version: int = 1
    escalated_from: str | None = None
    resolution: str | None = None

    def owned_by(self, actor_id: str, roles: frozenset[str]) -> bool:
        """The caller is its owner: the user named, a holder of the role named, or the owner
        it had before it was escalated (who keeps working on it)."""
        return any(_names(owner, actor_id, roles) for owner in (self.owner, self.escalated_from)
                   if owner)

    @property
    def unresolved(self) -> bool:
        return self.status != ExceptionStatus.RESOLVED


def _names(owner: str, actor_id: str, roles: frozenset[str]) -> bool:
    if owner.startswith(ROLE_OWNER_PREFIX):
        return owner.removeprefix(ROLE_OWNER_PREFIX) in roles
    return owner == actor_id


@dataclass
class Approval:
    """A request one person made that a different supervisor approves or rejects.

    `request` is what is applied on approval (kind `cancel`: the reason; `short_pack`: the
    packed lines as checked; `correction`: the changes with their values before), and
    `dispatch_version` the version it was asked on: if the dispatch moved on, it is refused.
    """

    id: str
    kind: ApprovalKind
    requested_by: str
    requested_roles: frozenset[str]
    request: dict[str, Any]
    dispatch_version: int
    status: ApprovalStatus = ApprovalStatus.PENDING
    version: int = 1
    decided_by: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Parked:
    """A message about an order whose dispatch does not exist yet, kept to be applied to it."""

    id: str
    kind: str  # ORDER_CANCELLED or PRODUCTION_EXCEPTION
    payload: dict[str, Any]
    event_id: str
    order_id: str | None = None
    source: str | None = None
    external_ref: str | None = None


PARKED_CANCELLATION = "order.cancelled"
PARKED_EXCEPTION = "production.exception"


# ---------------------------------------------------------------------------- the aggregate


@dataclass
class Dispatch(Aggregate):
    id: str
    order_id: str
    status: Status
    version: int
    lines: list[Line]
    held_from: Status | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    # All its exceptions and approval requests (a handful each): decisions read them.
    exceptions: list[ExceptionRecord] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)
    correlation_id: Any = None  # the order journey's: carried through, never decided on
    order: OrderSnapshot | None = None  # set on a new dispatch only, for its first write
    _bumped: bool = field(default=False, init=False, repr=False, compare=False)

    def _bump(self) -> None:
        """One new version per unit of work, however many records one command changes (a
        blocking exception and the hold it causes; an approval and the move it applies)."""
        if not self._bumped:
            self.version += 1
            self._bumped = True

    def pull_events(self) -> list[DomainEvent]:
        self._bumped = False  # what is pulled is committed: the next change is a new version
        return super().pull_events()

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

    # ------------------------------------------------------------------ derived facts

    @property
    def open_blocking_exceptions(self) -> int:
        return sum(1 for x in self.exceptions if x.blocking and x.unresolved)

    def exception(self, exception_id: str) -> ExceptionRecord:
        found = next((x for x in self.exceptions if x.id == exception_id), None)
        if found is None:
            raise NotFound(f"no exception {exception_id} on dispatch {self.id}")
        return found

    def approval(self, approval_id: str) -> Approval:
        found = next((a for a in self.approvals if a.id == approval_id), None)
        if found is None:
            raise NotFound(f"no approval {approval_id} on dispatch {self.id}")
        return found

    def _read_at(self, expected_version: int | None) -> None:
        """The caller decided on the current version (None: they did not say)."""
        if expected_version is not None and expected_version != self.version:
            raise StaleVersion(f"dispatch is at version {self.version}, not {expected_version}")

    def _as_owner(self, actor_id: str, roles: frozenset[str]) -> frozenset[str]:
        """The caller's roles, plus `EXCEPTION_OWNER` if they own an unresolved exception."""
        if any(x.owned_by(actor_id, roles) for x in self.exceptions if x.unresolved):
            return roles | {EXCEPTION_OWNER}
        return roles

    # ------------------------------------------------------------------ transitions

    def move(
        self,
        target: Status,
        *,
        actor_id: str,
        roles: frozenset[str],
        expected_version: int | None,
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> Approval | None:
        """Take one edge of the table, or raise the refusal that applies (nothing changes).

        Going on hold opens a blocking exception (the same effect as the exceptions door). An
        edge that needs a second person records an approval request instead and returns it.
        """
        if target == Status.ON_HOLD:
            self._decide(target, actor_id=actor_id, roles=roles, expected_version=expected_version,
                         reason=reason, evidence=evidence)
            ev = evidence or {}
            self.open_exception(
                actor_id=actor_id, roles=roles, expected_version=expected_version,
                reason_code=str(ev["reason_code"]), owner=str(ev["owner"]),
                due_at=_parse_due(str(ev["due_at"])), description=reason, blocking=True)
            return None
        decision = self._decide(target, actor_id=actor_id, roles=roles,
                                expected_version=expected_version, reason=reason, evidence=evidence)
        if decision.approval:
            return self._request_approval(
                ApprovalKind(decision.approval), actor=Actor(actor_id, decision.acting_role),
                roles=roles,
                request={"to": target.value, "reason": reason, "evidence": decision.evidence})
        self._take(target, decision_evidence=decision.evidence, kind=decision.rule.evidence,
                   reason=reason, actor=Actor(id=actor_id, role=decision.acting_role))
        return None

    def _decide(self, target: Status, *, actor_id: str, roles: frozenset[str],
                expected_version: int | None, reason: str, evidence: Mapping[str, Any] | None,
                approved: bool = False) -> Any:
        return WORKFLOW.decide(self, target, roles=self._as_owner(actor_id, roles),
                               expected_version=expected_version, reason=reason,
                               evidence=evidence, approved=approved)

    def _take(self, target: Status, *, decision_evidence: dict[str, Any],
              kind: Evidence[Dispatch] | None, reason: str, actor: Actor,
              approval: dict[str, Any] | None = None) -> None:
        source = self.status
        self.held_from = source if target == Status.ON_HOLD else None
        self.status = target
        self._bump()
        self.facts = {**self.facts, **_facts_of(self, kind, decision_evidence)}
        # Packing and shipping carry the quantities per line and what is still owed.
        lines = {Status.PACKED: "packed_lines", Status.SHIPPED: "shipped_lines"}.get(target)
        backorder = list(self.facts.get("backorder", [])) if lines else []
        self.record(DispatchMoved(
            dispatch_id=self.id, order_id=self.order_id, version=self.version,
            from_status=source, status=target, reason=reason, evidence=decision_evidence,
            short_lines=[int(x["line_no"]) for x in backorder] if target == Status.PACKED else [],
            lines=list(self.facts.get(lines, [])) if lines else [], backorder=backorder,
            approval=approval, actor=actor,
        ))

    def cancel_for_order(self, reason: str, *, now: datetime, due_at: datetime) -> None:
        """The order was cancelled: cancel as the system where the table lets it; once picking
        has begun (or the dispatch is held or shipped), open an exception for a supervisor."""
        reason = reason.strip() or "order cancelled"
        if self.status == Status.CANCELLED:
            return
        rule = WORKFLOW.rule(self.status, Status.CANCELLED)
        if rule is not None and SYSTEM in rule.roles and not rule.approval:
            self.move(Status.CANCELLED, actor_id=SYSTEM_ACTOR.id, roles=frozenset({SYSTEM}),
                      expected_version=None, reason=reason)
            return
        self.open_exception(
            actor_id=SYSTEM_ACTOR.id, roles=frozenset({SYSTEM}), expected_version=None,
            reason_code="customer_request", owner=ESCALATION_OWNER, due_at=due_at,
            description=f"the order was cancelled ({reason}) while its dispatch is "
                        f"{self.status}: a supervisor decides (cancel with a second approval, "
                        "or arrange a return)",
            blocking=self.status != Status.SHIPPED)

    # ------------------------------------------------------------------ exceptions

    def open_exception(
        self, *, actor_id: str, roles: frozenset[str], expected_version: int | None,
        reason_code: str, owner: str, due_at: datetime, description: str, blocking: bool,
        exception_id: str | None = None,
    ) -> ExceptionRecord:
        """Open an owned exception; a blocking one puts an open dispatch on hold."""
        EXCEPTIONS.decide_creation(ExceptionStatus.OPEN, roles=roles)
        self._read_at(expected_version)
        problems = _exception_problems(reason_code, owner, due_at)
        if problems:
            raise InvalidInput(problems)
        if self.status not in EXCEPTION_STATES:
            raise NotAllowedFromState(f"a {self.status} dispatch takes no exception")
        if blocking and self.status == Status.SHIPPED:
            raise NotAllowedFromState("a shipped dispatch cannot be held: open a non-blocking "
                                      "exception, or ask for a correction")
        reason = description.strip() or f"{reason_code} exception"
        hold = None
        if blocking and self.status in OPEN_STATES:
            # The same edge, checks and evidence as the transitions door to on_hold.
            hold = WORKFLOW.decide(self, Status.ON_HOLD, roles=roles, expected_version=None,
                                   reason=reason, evidence={
                                       "reason_code": reason_code, "owner": owner,
                                       "due_at": due_at.isoformat()})
        record = ExceptionRecord(
            id=exception_id or _new_id(), reason_code=reason_code,
            description=description.strip(), owner=owner, due_at=due_at, blocking=blocking,
            opened_by=actor_id)
        actor = Actor(actor_id, EXCEPTIONS.decide_creation(ExceptionStatus.OPEN,
                                                           roles=roles).acting_role)
        self.exceptions.append(record)
        self._bump()
        self.record(self._exception_event(record, "opened", actor, from_status=None))
        if hold is not None:
            self._take(Status.ON_HOLD, decision_evidence=hold.evidence, kind=HOLD, reason=reason,
                       actor=actor)
        return record

    def acknowledge_exception(self, exception_id: str, *, actor_id: str,
                              roles: frozenset[str]) -> ExceptionRecord:
        record = self.exception(exception_id)
        self._step(record, ExceptionStatus.ACKNOWLEDGED, actor_id=actor_id, roles=roles)
        return record

    def resolve_exception(self, exception_id: str, *, actor_id: str, roles: frozenset[str],
                          resolution: str) -> ExceptionRecord:
        """Resolve it; the last blocking one returns a held dispatch to the state it left."""
        record = self.exception(exception_id)
        acting = self._step(record, ExceptionStatus.RESOLVED, actor_id=actor_id, roles=roles,
                            reason=resolution)
        if self.status == Status.ON_HOLD and record.blocking and not self.open_blocking_exceptions:
            back = self.held_from
            assert back is not None  # nosec B101 # an on-hold dispatch knows where it came from
            # The table's edge back, taken as this exception's owner (or the supervisor).
            WORKFLOW.decide(self, back, roles=roles | {EXCEPTION_OWNER}, expected_version=None)
            self._take(back, decision_evidence={}, kind=None, actor=Actor(actor_id, acting),
                       reason=f"last blocking exception resolved: {resolution.strip()}")
        return record

    def escalate_overdue(self, now: datetime) -> list[ExceptionRecord]:
        """Every open or acknowledged exception past its due time goes to the supervisors, once."""
        escalated = []
        for record in self.exceptions:
            if record.status in (ExceptionStatus.OPEN, ExceptionStatus.ACKNOWLEDGED) \
                    and record.due_at <= now:
                self._step(record, ExceptionStatus.ESCALATED, actor_id=SYSTEM_ACTOR.id,
                           roles=frozenset({SYSTEM}))
                escalated.append(record)
        return escalated

    def _step(self, record: ExceptionRecord, target: ExceptionStatus, *, actor_id: str,
              roles: frozenset[str], reason: str = "") -> str:
        """One edge of the exception table; returns the role the caller acted in."""
        owner = record.owned_by(actor_id, roles)
        if target != ExceptionStatus.ESCALATED and not owner and APPROVER_ROLE not in roles:
            raise Forbidden(f"exception {record.id} is owned by {record.owner}: only its owner "
                            f"or a {APPROVER_ROLE} may {_VERB[target]} it")
        decision = EXCEPTIONS.decide(record, target, expected_version=None, reason=reason,
                                     roles=roles | {EXCEPTION_OWNER} if owner else roles)
        source = record.status
        record.status = target
        record.version += 1
        if target == ExceptionStatus.ESCALATED:
            record.escalated_from, record.owner = record.owner, ESCALATION_OWNER
        if target == ExceptionStatus.RESOLVED:
            record.resolution = reason.strip()
        self._bump()
        acting = decision.acting_role if decision.acting_role != EXCEPTION_OWNER else (
            min(roles, default="none"))
        self.record(self._exception_event(record, target.value, Actor(actor_id, acting),
                                          from_status=source, reason=reason.strip()))
        return acting

    def _exception_event(self, record: ExceptionRecord, what: str, actor: Actor, *,
                         from_status: ExceptionStatus | None, reason: str = "") -> ExceptionChanged:
        return ExceptionChanged(
            what=what, dispatch_id=self.id, order_id=self.order_id, version=self.version,
            record=replace(record), from_status=from_status, reason=reason, actor=actor)

    # ------------------------------------------------------------------ approvals

    def request_correction(self, changes: Sequence[Mapping[str, Any]], *, actor_id: str,
                           roles: frozenset[str], reason: str,
                           expected_version: int | None = None) -> Approval:
        """Ask for a correction of a shipped dispatch: an approval request, nothing changed yet."""
        if not roles & CORRECTION_ROLES:
            raise Forbidden(f"a correction is asked for by one of {sorted(CORRECTION_ROLES)}; "
                            f"caller has {sorted(roles)}")
        self._read_at(expected_version)
        if self.status != Status.SHIPPED:
            raise NotAllowedFromState(f"only a shipped dispatch is corrected; this one is "
                                      f"{self.status}: use its transitions")
        if not reason.strip():
            raise InvalidInput(["a correction needs a reason"])
        checked = _checked_changes(self, changes)
        return self._request_approval(
            ApprovalKind.CORRECTION, actor=Actor(actor_id, min(roles & CORRECTION_ROLES)),
            roles=roles, request={"changes": checked, "reason": reason.strip()})

    def _request_approval(self, kind: ApprovalKind, *, actor: Actor, roles: frozenset[str],
                          request: dict[str, Any]) -> Approval:
        self._bump()
        approval = Approval(id=_new_id(), kind=kind, requested_by=actor.id,
                            requested_roles=roles, request=request,
                            dispatch_version=self.version)
        self.approvals.append(approval)
        self.record(ApprovalChanged(what="requested", dispatch_id=self.id, order_id=self.order_id,
                                    version=self.version, approval=replace(approval),
                                    actor=actor))
        return approval

    def decide_approval(self, approval_id: str, *, approve: bool, actor_id: str,
                        roles: frozenset[str], note: str) -> Approval:
        """Approve (apply the request in this same change) or reject; never by the requester."""
        approval = self.approval(approval_id)
        target = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
        if approval.status != ApprovalStatus.PENDING:
            raise Conflict(f"approval {approval.id} was already {approval.status} by "
                           f"{approval.decided_by}")
        decision = APPROVALS.decide(approval, target, roles=roles, expected_version=None,
                                    reason=note)
        if actor_id == approval.requested_by:
            raise Forbidden(f"{actor_id} asked for approval {approval.id}: a different "
                            f"{APPROVER_ROLE} must decide it")
        if approve and self.version != approval.dispatch_version:
            raise Conflict(f"dispatch {self.id} moved on since approval {approval.id} was asked "
                           f"for (version {approval.dispatch_version}, now {self.version}): "
                           "reject it and ask again")
        approval.status = target
        approval.version += 1
        approval.decided_by, approval.note = actor_id, note.strip()
        actor = Actor(actor_id, decision.acting_role)
        self._bump()
        self.record(ApprovalChanged(what=target.value, dispatch_id=self.id,
                                    order_id=self.order_id, version=self.version,
                                    approval=replace(approval), actor=actor))
        if approve:
            self._apply(approval, actor)
        return approval

    def _apply(self, approval: Approval, actor: Actor) -> None:
        trace = {"id": approval.id, "kind": approval.kind.value,
                 "requested_by": approval.requested_by, "approved_by": approval.decided_by,
                 "comment": approval.note}
        request = approval.request
        if approval.kind == ApprovalKind.CORRECTION:
            self._correct(request["changes"], reason=request["reason"], approval=trace,
                          actor=actor)
            return
        target = Status(request["to"])
        # The request is checked again as its requester made it: the table may have moved on.
        decision = WORKFLOW.decide(self, target, roles=approval.requested_roles,
                                   expected_version=None, reason=request["reason"],
                                   evidence=request["evidence"], approved=True)
        self._take(target, decision_evidence=decision.evidence, kind=decision.rule.evidence,
                   reason=request["reason"], actor=actor, approval=trace)

    def _correct(self, changes: list[dict[str, Any]], *, reason: str, approval: dict[str, Any],
                 actor: Actor) -> None:
        facts = {**self.facts}
        shipped = [dict(x) for x in facts.get("shipped_lines", [])]
        for change in changes:
            if change["field"] == CorrectedField.SHIPPED_QUANTITY:
                for line in shipped:
                    if int(line["line_no"]) == change["line_no"]:
                        line["quantity"] = change["to"]
            else:
                facts[change["field"]] = change["to"]
        facts["shipped_lines"] = shipped
        facts["backorder"] = _backorder(self, shipped)
        self._bump()
        correction = {"approval_id": approval["id"], "version": self.version,
                      "changes": changes, "reason": reason,
                      "requested_by": approval["requested_by"],
                      "approved_by": approval["approved_by"]}
        facts["corrections"] = [*facts.get("corrections", []), correction]
        self.facts = facts
        self.record(DispatchCorrected(dispatch_id=self.id, order_id=self.order_id,
                                      version=self.version, status=self.status, changes=changes,
                                      reason=reason, requested_by=approval["requested_by"],
                                      approved_by=approval["approved_by"] or "",
                                      approval_id=approval["id"], actor=actor))


def _new_id() -> str:
    import uuid  # the ids are the domain's own: a record is named before it is stored

    return str(uuid.uuid4())


def _line(raw: Mapping[str, Any]) -> Line:
    return Line(int(raw["line_no"]), raw["product_id"], Decimal(str(raw["quantity"])), raw["uom"])


def _parse_due(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _exception_problems(reason_code: str, owner: str, due_at: datetime) -> list[str]:
    problems = []
    if reason_code not in REASON_CODES:
        problems.append(f"reason_code {reason_code!r} is not one of {list(REASON_CODES)}")
    if not owner.strip() or len(owner) > 200:
        problems.append("owner must be a user id or role:<role>")
    elif owner.startswith(ROLE_OWNER_PREFIX) and \
            owner.removeprefix(ROLE_OWNER_PREFIX) not in EXCEPTION_OWNER_ROLES:
        problems.append(f"owner {owner!r} names no role that may own an exception: use "
                        f"role:<one of {sorted(EXCEPTION_OWNER_ROLES)}>")
    if due_at.tzinfo is None:
        problems.append("due_at must say its time zone (e.g. 2026-12-01T12:00:00Z)")
    return problems


def _backorder(dispatch: Dispatch, given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per line, what was ordered and not packed (or shipped): the quantity still owed."""
    ordered = {line.line_no: line.quantity for line in dispatch.lines}
    return [{"line_no": int(x["line_no"]),
             "quantity": _quantity(ordered[int(x["line_no"])] - Decimal(x["quantity"]))}
            for x in given if Decimal(x["quantity"]) < ordered[int(x["line_no"])]]


def _quantity(value: Decimal) -> str:
    """A quantity as text without trailing zeros (4.000 - 3 owes "1", not "1.000")."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def _facts_of(dispatch: Dispatch, kind: Evidence[Dispatch] | None,
              evidence: dict[str, Any]) -> dict[str, Any]:
    """What a transition's evidence leaves on the dispatch."""
    if kind is PACKED_LINES:
        return {"packed_lines": evidence["lines"],
                "backorder": _backorder(dispatch, evidence["lines"])}
    if kind is SHIPMENT:
        return {"carrier": evidence["carrier"], "tracking_number": evidence["tracking_number"],
                "shipped_lines": dispatch.facts.get("packed_lines", [])}
    return {}


def _checked_changes(dispatch: Dispatch, changes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The changes as they will be applied, each with the value it replaces; or every problem."""
    if not changes:
        raise InvalidInput(["changes must name at least one change"])
    shipped = {int(x["line_no"]): Decimal(x["quantity"])
               for x in dispatch.facts.get("shipped_lines", [])}
    ordered = {line.line_no: line.quantity for line in dispatch.lines}
    problems: list[str] = []
    checked: list[dict[str, Any]] = []
    seen: set[tuple[str, int | None]] = set()
    for i, change in enumerate(changes):
        name, line_no, to = change.get("field"), change.get("line_no"), change.get("to")
        if name not in set(CorrectedField):
            problems.append(f"changes[{i}].field {name!r} is not one of "
                            f"{[f.value for f in CorrectedField]}")
            continue
        key = (str(name), line_no if name == CorrectedField.SHIPPED_QUANTITY else None)
        if key in seen:
            problems.append(f"changes[{i}] changes {name} {'of line ' + str(line_no) if key[1] else ''}"
                            "twice".replace("  ", " "))
            continue
        seen.add(key)
        if name == CorrectedField.SHIPPED_QUANTITY:
            if not isinstance(line_no, int) or line_no not in shipped:
                problems.append(f"changes[{i}].line_no {line_no!r} is not a shipped line")
                continue
            try:
                qty = Decimal(str(to))
            except (InvalidOperation, ValueError):
                problems.append(f"changes[{i}].to {to!r} is not a quantity")
                continue
            if not qty.is_finite() or qty < 0 or qty > ordered[line_no]:
                problems.append(f"changes[{i}].to must be from 0 to the ordered "
                                f"{ordered[line_no]}")
                continue
            if qty == shipped[line_no]:
                problems.append(f"changes[{i}]: line {line_no} already shows {qty} shipped")
                continue
            checked.append({"field": name, "line_no": line_no, "from": str(shipped[line_no]),
                            "to": str(qty)})
        else:
            if line_no is not None:
                problems.append(f"changes[{i}].line_no is only for shipped_quantity")
                continue
            if not isinstance(to, str) or not to.strip():
                problems.append(f"changes[{i}].to must be non-empty text")
                continue
            before = dispatch.facts.get(str(name))
            if to.strip() == before:
                problems.append(f"changes[{i}]: {name} already is {before!r}")
                continue
            checked.append({"field": name, "line_no": None, "from": before, "to": to.strip()})
    if problems:
        raise InvalidInput(problems)
    return checked


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
    lines: list[dict[str, Any]] = field(default_factory=list)
    backorder: list[dict[str, Any]] = field(default_factory=list)
    approval: dict[str, Any] | None = None
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        details: dict[str, Any] = {"version": self.version, "evidence": self.evidence,
                                   "short_lines": self.short_lines}
        if self.backorder:
            details["backorder"] = self.backorder
        if self.approval:
            details["approval"] = self.approval
        return AuditFact(
            action=f"dispatch.{self.status}", entity_type=ENTITY, entity_id=self.dispatch_id,
            from_state=self.from_status, to_state=self.status, reason=self.reason or None,
            details=details,
        )


@dataclass(frozen=True, kw_only=True)
class ExceptionChanged(DomainEvent):
    """An exception was opened, acknowledged, escalated or resolved (`what`)."""

    what: str
    dispatch_id: str
    order_id: str
    version: int
    record: ExceptionRecord
    from_status: ExceptionStatus | None
    reason: str = ""
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        r = self.record
        return AuditFact(
            action=f"dispatch.exception.{self.what}", entity_type=ENTITY,
            entity_id=self.dispatch_id, from_state=self.from_status, to_state=r.status,
            reason=self.reason or r.description or None,
            details={"version": self.version, "exception_id": r.id,
                     "reason_code": r.reason_code, "owner": r.owner, "blocking": r.blocking,
                     "due_at": r.due_at.isoformat(), "escalated_from": r.escalated_from},
        )


@dataclass(frozen=True, kw_only=True)
class ApprovalChanged(DomainEvent):
    """An approval was requested, approved or rejected (`what`)."""

    what: str
    dispatch_id: str
    order_id: str
    version: int
    approval: Approval
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        a = self.approval
        return AuditFact(
            action=f"dispatch.approval.{self.what}", entity_type=ENTITY,
            entity_id=self.dispatch_id,
            from_state=None if self.what == "requested" else ApprovalStatus.PENDING,
            to_state=a.status, reason=a.note or a.request.get("reason") or None,
            details={"version": self.version, "approval_id": a.id, "kind": a.kind,
                     "requested_by": a.requested_by, "decided_by": a.decided_by,
                     "request": a.request},
        )


@dataclass(frozen=True, kw_only=True)
class DispatchCorrected(DomainEvent):
    dispatch_id: str
    order_id: str
    version: int
    status: Status
    changes: list[dict[str, Any]]
    reason: str
    requested_by: str
    approved_by: str
    approval_id: str
    actor: Actor | None = None

    def audit(self) -> AuditFact:
        return AuditFact(
            action="dispatch.corrected", entity_type=ENTITY, entity_id=self.dispatch_id,
            from_state=self.status, to_state=self.status, reason=self.reason,
            details={"version": self.version, "changes": self.changes,
                     "approval_id": self.approval_id, "requested_by": self.requested_by,
                     "approved_by": self.approved_by},
        )


@dataclass(frozen=True, kw_only=True)
class OrderCancellationParked(DomainEvent):
    """order.cancelled arrived before its dispatch: kept, to cancel it as it opens."""

    order_id: str
    reason: str

    def audit(self) -> AuditFact:
        return AuditFact(action="dispatch.cancellation_parked", entity_type="order",
                         entity_id=self.order_id, reason=self.reason or None)


@dataclass(frozen=True, kw_only=True)
class ReportRejected(DomainEvent):
    """A report from an outside system (`exception`, `progress`) was not applied, and why."""

    report: str
    source: str
    message_id: str
    reasons: list[str]
    to: str | None = None
    dispatch_id: str | None = None
    order_id: str | None = None
    order_external_ref: str | None = None
    parked: bool = False

    def audit(self) -> AuditFact:
        return AuditFact(
            action=f"dispatch.{self.report}.rejected", entity_type="external_report",
            entity_id=self.message_id, reason="; ".join(self.reasons),
            details={"source": self.source, "to": self.to, "dispatch_id": self.dispatch_id,
                     "order_id": self.order_id, "order_external_ref": self.order_external_ref,
                     "parked": self.parked},
        )


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
        due = _parse_due(stored["due_at"])
    except ValueError:
        raise InvalidInput(["evidence.due_at must be an ISO 8601 date-time"]) from None
    problems = _exception_problems(stored["reason_code"], stored["owner"], due)
    if problems:
        raise InvalidInput([f"evidence.{p}" for p in problems])
    return stored


def _packed_lines(
    dispatch: Dispatch, evidence: Mapping[str, Any], _: frozenset[str]
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
    return {"lines": [{"line_no": n, "quantity": str(packed[n])} for n in sorted(packed)]}


def _is_short(dispatch: Dispatch, evidence: dict[str, Any]) -> bool:
    """a line is packed short of its ordered quantity"""
    return bool(_backorder(dispatch, evidence["lines"]))


PACKED_LINES: Evidence[Dispatch] = Evidence(
    "packed lines", '{"lines": [{"line_no", "quantity"}]}', _packed_lines,
    fields=frozenset({"lines"}))
SHIPMENT: Evidence[Dispatch] = Evidence("shipment", '{"carrier", "tracking_number"}', _shipment,
                                        fields=frozenset({"carrier", "tracking_number"}))
HOLD: Evidence[Dispatch] = Evidence("hold", '{"reason_code", "owner", "due_at"}', _hold,
                                    fields=frozenset({"reason_code", "owner", "due_at"}))


# ---------------------------------------------------------------------------- the tables


def _rule(source: Status | None, target: Status, roles: set[str], **kw: Any) -> Rule[Status, Dispatch]:
    return Rule(source, target, frozenset(roles), **kw)


# The workflow as data (DESIGN.md). API permissions, the audit trail, event names and the
# tests all read this one table.
WORKFLOW: Workflow[Status, Dispatch] = Workflow(ENTITY, [
    _rule(None, Status.PENDING, {SYSTEM}),  # (order.confirmed): exactly one dispatch per order
    _rule(Status.PENDING, Status.RELEASED, {"planner"}, guards=(NO_OPEN_BLOCKING_EXCEPTION,)),
    _rule(Status.RELEASED, Status.PICKING, {"warehouse"}),
    # Packing less than ordered on a line is a request a second person (a supervisor) approves.
    _rule(Status.PICKING, Status.PACKED, {"warehouse"}, evidence=PACKED_LINES,
          approval=ApprovalKind.SHORT_PACK, approval_when=_is_short),
    _rule(Status.PACKED, Status.SHIPPED, {"shipping"}, evidence=SHIPMENT),
    # Going on hold opens a blocking exception (owner, due date); `system` holds for an
    # order cancelled after picking began.
    *(_rule(s, Status.ON_HOLD, set(HOLD_ROLES) | {SYSTEM}, evidence=HOLD, reason_required=True)
      for s in sorted(OPEN_STATES)),
    # Back from hold: taken when the last blocking exception is resolved by its owner or a
    # supervisor (through the exceptions door, or this one once none is left open).
    *(_rule(Status.ON_HOLD, s, {"supervisor", EXCEPTION_OWNER},
            guards=(_returns_to_the_state_it_left(s), NO_OPEN_BLOCKING_EXCEPTION))
      for s in sorted(OPEN_STATES)),
    _rule(Status.PENDING, Status.CANCELLED, {"supervisor", SYSTEM}, reason_required=True),
    _rule(Status.RELEASED, Status.CANCELLED, {"supervisor", SYSTEM}, reason_required=True),
    _rule(Status.PICKING, Status.CANCELLED, {"supervisor"}, reason_required=True,
          approval=ApprovalKind.CANCEL),
    _rule(Status.PACKED, Status.CANCELLED, {"supervisor"}, reason_required=True,
          approval=ApprovalKind.CANCEL),
])


def _xrule(source: ExceptionStatus | None, target: ExceptionStatus, roles: set[str],
           **kw: Any) -> Rule[ExceptionStatus, ExceptionRecord]:
    return Rule(source, target, frozenset(roles), **kw)


_OWNER_OR_SUPERVISOR = {EXCEPTION_OWNER, APPROVER_ROLE}

# An exception's lifecycle, as data like the dispatch's: acknowledging and resolving are for
# its owner or a supervisor; escalating is the timer's (the system's) alone.
EXCEPTIONS: Workflow[ExceptionStatus, ExceptionRecord] = Workflow("exception", [
    _xrule(None, ExceptionStatus.OPEN, set(HOLD_ROLES) | {SYSTEM}),
    _xrule(ExceptionStatus.OPEN, ExceptionStatus.ACKNOWLEDGED, _OWNER_OR_SUPERVISOR),
    _xrule(ExceptionStatus.OPEN, ExceptionStatus.ESCALATED, {SYSTEM}),
    _xrule(ExceptionStatus.ACKNOWLEDGED, ExceptionStatus.ESCALATED, {SYSTEM}),
    *(_xrule(s, ExceptionStatus.RESOLVED, _OWNER_OR_SUPERVISOR, reason_required=True)
      for s in (ExceptionStatus.OPEN, ExceptionStatus.ACKNOWLEDGED, ExceptionStatus.ESCALATED)),
])


def _arule(target: ApprovalStatus, **kw: Any) -> Rule[ApprovalStatus, Approval]:
    return Rule(ApprovalStatus.PENDING, target, frozenset({APPROVER_ROLE}), **kw)


# A request is decided once, by a supervisor who is not the requester (checked by the aggregate:
# the table knows roles, not persons); a rejection says why.
APPROVALS: Workflow[ApprovalStatus, Approval] = Workflow("approval", [
    _arule(ApprovalStatus.APPROVED),
    _arule(ApprovalStatus.REJECTED, reason_required=True),
])
