"""The dispatch workflow table, checked over every (state, target, role) against DESIGN.md."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.dispatch.domain import (
    EXCEPTION_OWNER,
    WORKFLOW,
    Approval,
    ApprovalKind,
    Dispatch,
    DispatchMoved,
    ExceptionRecord,
    Line,
    Status,
)
from shared.workflow import (
    SYSTEM,
    Forbidden,
    GuardFailed,
    InvalidInput,
    NotAllowedFromState,
    StaleVersion,
)

ROLES = ["sales", "planner", "warehouse", "shipping", "supervisor", "integration", "ops"]
OPEN = [Status.PENDING, Status.RELEASED, Status.PICKING, Status.PACKED]

# Written out by hand from DESIGN.md's table, independently of TRANSITIONS, so that a change to
# the table that the design does not make fails here.
EXPECTED: dict[tuple[Status, Status], set[str]] = {
    (Status.PENDING, Status.RELEASED): {"planner"},
    (Status.RELEASED, Status.PICKING): {"warehouse"},
    (Status.PICKING, Status.PACKED): {"warehouse"},
    (Status.PACKED, Status.SHIPPED): {"shipping"},
    **{(s, Status.ON_HOLD): {"planner", "warehouse", "shipping", "supervisor"} for s in OPEN},
    **{(Status.ON_HOLD, s): {"supervisor"} for s in OPEN},
    (Status.PENDING, Status.CANCELLED): {"supervisor"},
    (Status.RELEASED, Status.CANCELLED): {"supervisor"},
    (Status.PICKING, Status.CANCELLED): {"supervisor"},
    (Status.PACKED, Status.CANCELLED): {"supervisor"},
}
FOUR_EYES = {(Status.PICKING, Status.CANCELLED), (Status.PACKED, Status.CANCELLED)}
# Edges only some requests of which need a second person: packing less than ordered.
SOMETIMES_FOUR_EYES = {(Status.PICKING, Status.PACKED)}

GOOD_EVIDENCE = {
    Status.PACKED: {"lines": [{"line_no": 1, "quantity": "5"}, {"line_no": 2, "quantity": "2.5"}]},
    Status.SHIPPED: {"carrier": "DHL", "tracking_number": "JD014600003"},
    Status.ON_HOLD: {"reason_code": "quality_hold", "owner": "u-7",
                     "due_at": "2026-12-01T12:00:00Z"},
}


def a_dispatch(status: Status, *, held_from: Status | None = None, version: int = 3) -> Dispatch:
    return Dispatch(
        id="d-1",
        order_id="o-1",
        status=status,
        version=version,
        lines=[Line(1, "P-1", Decimal("5"), "EA"), Line(2, "P-2", Decimal("2.5"), "KG")],
        held_from=held_from,
    )


def decide(dispatch: Dispatch, target: Status, *, roles: frozenset[str], actor_id: str,
           expected_version: int, reason: str = "", evidence: dict[str, object] | None = None
           ) -> DispatchMoved:
    """Ask the aggregate to move; the move it recorded says what was decided."""
    requested = dispatch.move(target, actor_id=actor_id, roles=roles,
                              expected_version=expected_version, reason=reason, evidence=evidence)
    assert requested is None, f"asked for approval {requested}"
    [event] = [e for e in dispatch.pull_events() if isinstance(e, DispatchMoved)]
    return event


def an_exception(owner: str = "u-7", *, blocking: bool = True) -> ExceptionRecord:
    return ExceptionRecord(id="x-1", reason_code="stock_shortage", description="", owner=owner,
                           due_at=datetime(2026, 12, 1, tzinfo=UTC), blocking=blocking,
                           opened_by="u-1")


def test_the_table_holds_exactly_the_edges_of_the_design() -> None:
    actual = {edge: set(rule.roles) - {SYSTEM, EXCEPTION_OWNER}
              for edge, rule in WORKFLOW.rules.items() if edge[0] is not None}
    assert actual == EXPECTED
    assert {edge: rule.approval for edge, rule in WORKFLOW.rules.items() if rule.approval} == {
        **dict.fromkeys(FOUR_EYES, ApprovalKind.CANCEL),
        **dict.fromkeys(SOMETIMES_FOUR_EYES, ApprovalKind.SHORT_PACK)}
    assert all(WORKFLOW.rules[edge].approval_when is None for edge in FOUR_EYES)


def test_a_dispatch_is_created_only_by_the_system_and_only_as_pending() -> None:
    assert [edge for edge in WORKFLOW.rules if edge[0] is None] == [(None, Status.PENDING)]
    creation = WORKFLOW.rule(None, Status.PENDING)
    assert creation is not None and creation.roles == {SYSTEM}
    with pytest.raises(Forbidden):
        WORKFLOW.decide_creation(Status.PENDING, roles=frozenset({"supervisor"}))


def test_only_the_system_may_cancel_without_a_person_and_only_before_picking() -> None:
    system_cancels = {edge for edge, rule in WORKFLOW.rules.items()
                      if SYSTEM in rule.roles and edge[1] == Status.CANCELLED}
    assert system_cancels == {(Status.PENDING, Status.CANCELLED),
                              (Status.RELEASED, Status.CANCELLED)}


@pytest.mark.parametrize(
    ("state", "target", "role"),
    list(itertools.product(list(Status), list(Status), ROLES)),
    ids=lambda v: str(v),
)
def test_every_state_target_and_role_is_decided_as_the_design_says(
    state: Status, target: Status, role: str
) -> None:
    held_from = target if state == Status.ON_HOLD and target in OPEN else None
    dispatch = a_dispatch(state, held_from=held_from)
    allowed = EXPECTED.get((state, target))
    may_reach_target = any(role in roles for (_, t), roles in EXPECTED.items() if t == target)

    # Returning from hold takes no evidence (its guard is the exceptions), so none is sent.
    evidence = {} if state == Status.ON_HOLD else GOOD_EVIDENCE.get(target, {})

    def attempt() -> object:
        return decide(
            dispatch, target, roles=frozenset({role}), actor_id="u-1", expected_version=3,
            reason="because", evidence=evidence,
        )

    if not may_reach_target:
        with pytest.raises(Forbidden):
            attempt()
    elif allowed is None:
        with pytest.raises(NotAllowedFromState):
            attempt()
    elif role not in allowed:
        with pytest.raises(Forbidden):
            attempt()
    elif (state, target) in FOUR_EYES:
        requested = dispatch.move(target, actor_id="u-1", roles=frozenset({role}),
                                  expected_version=3, reason="because", evidence=evidence)
        assert isinstance(requested, Approval) and requested.kind == ApprovalKind.CANCEL
        assert dispatch.status == state, "a request changes no state"
    else:
        moved = attempt()
        assert (moved.from_status, moved.status) == (state, target)
        assert (dispatch.status, dispatch.version) == (target, 4)


def test_a_transition_names_the_version_it_read() -> None:
    with pytest.raises(StaleVersion):
        decide(a_dispatch(Status.PENDING, version=4), Status.RELEASED,
               roles=frozenset({"planner"}), actor_id="u-1", expected_version=3)


def test_release_is_refused_while_a_blocking_exception_is_open() -> None:
    dispatch = a_dispatch(Status.PENDING)
    dispatch.exceptions = [an_exception()]
    with pytest.raises(GuardFailed, match="blocking"):
        decide(dispatch, Status.RELEASED, roles=frozenset({"planner"}), actor_id="u-1",
               expected_version=3)


def test_an_on_hold_dispatch_returns_only_to_the_state_it_left() -> None:
    dispatch = a_dispatch(Status.ON_HOLD, held_from=Status.PICKING)
    with pytest.raises(NotAllowedFromState, match="returns to picking"):
        decide(dispatch, Status.RELEASED, roles=frozenset({"supervisor"}), actor_id="u-1",
               expected_version=3)


def test_the_owner_of_an_exception_may_resume_a_dispatch_without_being_supervisor() -> None:
    dispatch = a_dispatch(Status.ON_HOLD, held_from=Status.PICKING)
    dispatch.exceptions = [an_exception("u-7", blocking=False)]
    with pytest.raises(Forbidden):
        decide(dispatch, Status.PICKING, roles=frozenset({"warehouse"}), actor_id="u-8",
               expected_version=3)
    moved = decide(dispatch, Status.PICKING, roles=frozenset({"warehouse"}), actor_id="u-7",
                   expected_version=3)
    assert moved.status == Status.PICKING


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ([{"line_no": 1, "quantity": "5"}], "have no packed quantity"),
        ([{"line_no": 1, "quantity": "6"}, {"line_no": 2, "quantity": "2.5"}], "more than"),
        ([{"line_no": 1, "quantity": "-1"}, {"line_no": 2, "quantity": "2.5"}], "zero or more"),
        ([{"line_no": 9, "quantity": "1"}, {"line_no": 1, "quantity": "5"},
          {"line_no": 2, "quantity": "2.5"}], "not a line of this order"),
        ([{"line_no": 1, "quantity": "five"}, {"line_no": 2, "quantity": "2.5"}], "not a number"),
        ([{"line_no": 1, "quantity": "5"}, {"line_no": 1, "quantity": "5"},
          {"line_no": 2, "quantity": "2.5"}], "listed twice"),
    ],
)
def test_packing_evidence_must_account_for_every_line(lines: list[object], problem: str) -> None:
    with pytest.raises(InvalidInput, match=problem):
        decide(a_dispatch(Status.PICKING), Status.PACKED, roles=frozenset({"warehouse"}),
               actor_id="u-1", expected_version=3, evidence={"lines": lines})


def test_a_short_pack_is_a_request_even_from_a_supervisor_and_records_the_backorder() -> None:
    short = {"lines": [{"line_no": 1, "quantity": "4"}, {"line_no": 2, "quantity": "2.5"}]}
    for roles in ({"warehouse"}, {"warehouse", "supervisor"}):
        dispatch = a_dispatch(Status.PICKING)
        requested = dispatch.move(Status.PACKED, roles=frozenset(roles), actor_id="u-1",
                                  expected_version=3, evidence=short)
        assert isinstance(requested, Approval) and requested.kind == ApprovalKind.SHORT_PACK
        assert (dispatch.status, dispatch.version) == (Status.PICKING, 4)
        assert requested.request["evidence"] == {"lines": [{"line_no": 1, "quantity": "4"},
                                                           {"line_no": 2, "quantity": "2.5"}]}
        dispatch.pull_events()
        dispatch.decide_approval(requested.id, approve=True, actor_id="u-2",
                                 roles=frozenset({"supervisor"}), note="4 is all we have")
        [moved] = [e for e in dispatch.pull_events() if isinstance(e, DispatchMoved)]
        assert (dispatch.status, moved.short_lines) == (Status.PACKED, [1])
        assert moved.backorder == [{"line_no": 1, "quantity": "1"}]
        assert moved.approval is not None and moved.approval["approved_by"] == "u-2"


@pytest.mark.parametrize("missing", ["carrier", "tracking_number"])
def test_shipping_needs_carrier_and_tracking_number(missing: str) -> None:
    evidence = dict(GOOD_EVIDENCE[Status.SHIPPED])
    evidence[missing] = "  "
    with pytest.raises(InvalidInput, match=missing):
        decide(a_dispatch(Status.PACKED), Status.SHIPPED, roles=frozenset({"shipping"}),
               actor_id="u-1", expected_version=3, evidence=evidence)


def test_cancelling_needs_a_reason() -> None:
    with pytest.raises(InvalidInput, match="reason"):
        decide(a_dispatch(Status.PENDING), Status.CANCELLED, roles=frozenset({"supervisor"}),
               actor_id="u-1", expected_version=3, reason=" ")


def test_shipped_and_cancelled_are_terminal() -> None:
    for state in (Status.SHIPPED, Status.CANCELLED):
        assert not [edge for edge in WORKFLOW.rules if edge[0] == state]


@pytest.mark.parametrize(("state", "target", "role", "evidence", "problem"), [
    (Status.PACKED, Status.SHIPPED, "shipping",
     {**GOOD_EVIDENCE[Status.SHIPPED], "trackingnumber": "x"},
     "evidence.trackingnumber is unknown for packed → shipped: it takes shipment evidence "
     '{"carrier", "tracking_number"}'),
    (Status.PENDING, Status.ON_HOLD, "planner", {**GOOD_EVIDENCE[Status.ON_HOLD], "blocking": True},
     "evidence.blocking is unknown for pending → on_hold: it takes hold evidence"),
    (Status.PENDING, Status.RELEASED, "planner", {"note": "rush"},
     "evidence.note is unknown for pending → released: it takes no evidence"),
    (Status.PICKING, Status.PACKED, "warehouse",
     {"lines": [{"line_no": 1, "quantity": "5", "qty": "5"}, {"line_no": 2, "quantity": "2.5"}]},
     "evidence.lines[0].qty is unknown: a line takes line_no and quantity"),
])
def test_evidence_with_a_key_the_edge_does_not_take_is_refused_naming_the_key(
    state: Status, target: Status, role: str, evidence: dict[str, object], problem: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        decide(a_dispatch(state), target, roles=frozenset({role}), actor_id="u-1",
               expected_version=3, reason="because", evidence=evidence)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
