"""The dispatch use cases against a fake unit of work: what each commits, and what it refuses."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.dispatch.domain import Dispatch, OrderSnapshot, Status
from services.dispatch.handlers import (
    HANDLERS,
    AcknowledgeException,
    CancelForOrder,
    CreateDispatch,
    DecideApproval,
    EscalateOverdue,
    Moved,
    OpenException,
    RejectReport,
    ReportProductionException,
    ReportProgress,
    RequestCorrection,
    ResolveException,
    TransitionDispatch,
    handle,
)
from shared.uow import Duplicate
from shared.workflow import Forbidden, NotFound, StaleVersion
from tests.unit.dispatch.fakes import fake_unit_of_work
from tests.unit.fakes import FakeStore, FakeUnitOfWork

JOURNEY = uuid.uuid4()


def confirmed(order_id: str = "o-1", event_id: str | None = None) -> CreateDispatch:
    return CreateDispatch(
        event_id=event_id or str(uuid.uuid4()), consumer="spine.dispatch.order-confirmed",
        correlation_id=JOURNEY,
        order=OrderSnapshot(
            order_id=order_id, external_ref="EXT-1", source="mes", customer_id="C-100",
            requested_ship_date="2026-12-24", priority="normal",
            ship_to={"name": "Plant 2", "street": "Road 1", "city": "Linz", "postal_code": "4020",
                     "country": "AT"},
            lines=[{"line_no": 1, "product_id": "P-200", "quantity": "4", "uom": "EA"}],
        ),
    )


def move(dispatch_id: str, to: Status, role: str, version: int, **kw: Any) -> TransitionDispatch:
    return TransitionDispatch(dispatch_id=uuid.UUID(dispatch_id), to=to, expected_version=version,
                              actor_id=f"u-{role}", roles=frozenset({role}), **kw)


@pytest.fixture
def fake() -> tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]]:
    return fake_unit_of_work()


async def test_a_confirmed_order_opens_one_pending_dispatch_with_its_audit_row_and_event(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    dispatch_id = await handle(confirmed(), uow)

    [stored] = store.rows.values()
    assert (stored.id, stored.status, stored.version) == (dispatch_id, Status.PENDING, 1)
    [(actor, fact)] = uow.audit
    assert (actor.role, fact.action, fact.to_state) == ("system", "dispatch.created", "pending")
    [(_, correlation_id, wire)] = uow.published
    assert wire.type == "dispatch.created" and correlation_id == JOURNEY
    assert wire.data == {"dispatch_id": dispatch_id, "order_id": "o-1", "version": 1,
                         "status": "pending"}


async def test_the_same_message_twice_is_refused_by_the_inbox_and_changes_nothing(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    cmd = confirmed()
    await handle(cmd, uow)
    with pytest.raises(Duplicate):
        await handle(cmd, uow)
    assert len(store.rows) == 1 and uow.published_types() == ["dispatch.created"]


async def test_a_second_confirmation_of_the_same_order_opens_no_second_dispatch(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    await handle(confirmed("o-1"), uow)
    assert await handle(confirmed("o-1"), uow) is None
    assert len(store.rows) == 1 and uow.published_types() == ["dispatch.created"]


async def test_a_transition_moves_the_dispatch_and_publishes_its_status_event_in_the_journey(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    dispatch_id = await handle(confirmed(), uow)
    moved = await handle(move(dispatch_id, Status.RELEASED, "planner", 1), uow)

    assert moved == Moved(dispatch_id, "o-1", Status.RELEASED, 2)
    assert store.rows[dispatch_id].status == Status.RELEASED
    actor, fact = uow.audit[-1]
    assert (actor.id, actor.role) == ("u-planner", "planner")
    assert (fact.from_state, fact.to_state, fact.details["version"]) == ("pending", "released", 2)
    _, correlation_id, wire = uow.published[-1]
    assert wire.type == "dispatch.released" and correlation_id == JOURNEY
    assert wire.data["version"] == 2 and wire.data["from_status"] == "pending"


async def test_a_refused_transition_writes_nothing(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    dispatch_id = await handle(confirmed(), uow)
    with pytest.raises(Forbidden):
        await handle(move(dispatch_id, Status.RELEASED, "warehouse", 1), uow)
    with pytest.raises(StaleVersion):
        await handle(move(dispatch_id, Status.RELEASED, "planner", 7), uow)
    assert store.rows[dispatch_id].status == Status.PENDING
    assert store.rows[dispatch_id].version == 1
    assert uow.published_types() == ["dispatch.created"] and len(uow.audit) == 1


async def test_a_transition_of_an_unknown_dispatch_is_not_found(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, _ = fake
    with pytest.raises(NotFound):
        await handle(move(str(uuid.uuid4()), Status.RELEASED, "planner", 1), uow)


async def test_a_cancelled_order_cancels_its_pending_dispatch_as_the_system(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    dispatch_id = await handle(confirmed(), uow)
    status = await handle(CancelForOrder(event_id=str(uuid.uuid4()), consumer="c",
                                         correlation_id=JOURNEY, order_id="o-1", reason=""), uow)
    assert status == Status.CANCELLED == store.rows[dispatch_id].status
    actor, fact = uow.audit[-1]
    assert (actor.role, fact.action, fact.reason) == ("system", "dispatch.cancelled",
                                                      "order cancelled")
    assert uow.published_types()[-1] == "dispatch.cancelled"


async def test_a_cancelled_order_leaves_a_dispatch_being_picked_to_a_supervisor_and_says_so(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    dispatch_id = await handle(confirmed(), uow)
    await handle(move(dispatch_id, Status.RELEASED, "planner", 1), uow)
    await handle(move(dispatch_id, Status.PICKING, "warehouse", 2), uow)
    published = uow.published_types()

    status = await handle(CancelForOrder(event_id=str(uuid.uuid4()), consumer="c",
                                         correlation_id=JOURNEY, order_id="o-1", reason="x"), uow)
    assert status == Status.ON_HOLD == store.rows[dispatch_id].status
    [exception] = store.rows[dispatch_id].exceptions
    assert (exception.owner, exception.blocking, exception.reason_code) == (
        "role:supervisor", True, "customer_request")
    assert "supervisor decides" in exception.description
    assert uow.published_types()[len(published):] == ["dispatch.exception.opened",
                                                       "dispatch.on_hold"]


async def test_a_cancellation_that_overtakes_its_confirmation_cancels_the_dispatch_as_it_opens(
    fake: tuple[FakeUnitOfWork[Any], FakeStore[str, Dispatch]],
) -> None:
    uow, store = fake
    cmd = CancelForOrder(event_id=str(uuid.uuid4()), consumer="c", correlation_id=JOURNEY,
                         order_id="o-1", reason="customer withdrew")
    assert await handle(cmd, uow) is None
    assert uow.audit[-1][1].action == "dispatch.cancellation_parked"
    dispatch_id = await handle(confirmed(), uow)
    assert store.rows[dispatch_id].status == Status.CANCELLED
    assert uow.published_types()[-2:] == ["dispatch.created", "dispatch.cancelled"]


def test_every_command_has_exactly_one_handler() -> None:
    assert set(HANDLERS) == {CreateDispatch, TransitionDispatch, CancelForOrder, OpenException,
                             AcknowledgeException, ResolveException, RequestCorrection,
                             DecideApproval, EscalateOverdue, ReportProductionException,
                             ReportProgress, RejectReport}
