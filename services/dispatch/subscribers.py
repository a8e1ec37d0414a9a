"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, NoReturn

import aio_pika
from faststream.rabbit import RabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from services.dispatch.domain import OrderSnapshot
from services.dispatch.handlers import (
    CancelForOrder,
    CreateDispatch,
    RejectReport,
    ReportProductionException,
    ReportProgress,
    handle,
)
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.contracts.envelope import Envelope, ExternalEnvelope
from shared.contracts.ext import DispatchProgress, ProductionException, source_of
from shared.contracts.order import OrderCancelled, OrderConfirmed
from shared.domain import Actor
from shared.messaging.broker import delivery_policy
from shared.messaging.delivery import Answered, PermanentError, event_routing_key, refused_ids
from shared.messaging.topology import Topology, consumer_queue
from shared.uow import Duplicate, InboxConflict
from shared.workflow import SYSTEM, Refusal

SERVICE = "dispatch"


def register(broker: RabbitBroker, topology: Topology, uow: DispatchUnitOfWork, *,
             system_roles: Mapping[str, str] | None = None) -> None:
    """Subscribe the dispatch service's consumers, one quorum queue per purpose.

    `system_roles`: the role each outside system's progress reports act in (SPINE_SYSTEM_ROLES).
    """
    roles = dict(system_roles or {})
    confirmed_queue = consumer_queue(topology, SERVICE, "order-confirmed")
    cancelled_queue = consumer_queue(topology, SERVICE, "order-cancelled")
    production_queue = consumer_queue(topology, SERVICE, "production-exception")
    progress_queue = consumer_queue(topology, SERVICE, "dispatch-progress")

    @broker.subscriber(confirmed_queue, topology.events, no_reply=True,
                       title="dispatch/order.confirmed")
    async def on_order_confirmed(event: Envelope[OrderConfirmed]) -> None:
        """An order was confirmed: open its one dispatch."""
        order = event.data
        await handle(CreateDispatch(
            event_id=str(event.event_id),
            consumer=confirmed_queue.name,
            correlation_id=event.correlation_id,
            order=OrderSnapshot(
                order_id=order.order_id,
                external_ref=order.external_ref,
                source=order.source,
                customer_id=order.customer_id,
                requested_ship_date=order.requested_ship_date,
                priority=order.priority,
                ship_to=order.ship_to.model_dump(mode="json"),
                lines=[line.model_dump(mode="json") for line in order.lines],
            ),
        ), uow)

    @broker.subscriber(cancelled_queue, topology.events, no_reply=True,
                       title="dispatch/order.cancelled")
    async def on_order_cancelled(event: Envelope[OrderCancelled]) -> None:
        """An order was cancelled: cancel its dispatch where the workflow lets the system."""
        await handle(CancelForOrder(
            event_id=str(event.event_id),
            consumer=cancelled_queue.name,
            correlation_id=event.correlation_id,
            order_id=event.data.order_id,
            reason=event.data.reason,
        ), uow)

    @broker.subscriber(production_queue, topology.events, no_reply=True,
                       title="dispatch/ext.*.production.exception")
    async def on_production_exception(event: ExternalEnvelope, message: RabbitMessage) -> None:
        """The shop floor reports a problem with an order: an exception on its dispatch."""
        source, reply_to = _source(message), message.raw_message.reply_to or None
        try:
            report = ProductionException.model_validate(event.data)
        except ValidationError as exc:
            await _answer_broken(uow, event, source, "exception", production_queue.name, exc,
                                 reply_to)
        try:
            await handle(ReportProductionException(
                event_id=str(event.event_id), consumer=production_queue.name,
                correlation_id=event.correlation_id, source=source,
                actor=Actor(event.actor.id, event.actor.role) if event.actor
                else Actor(id=source, role=SYSTEM),
                reason_code=report.reason_code, description=report.description,
                blocking=report.blocking, order_id=report.order_id,
                order_external_ref=report.order_external_ref, owner=report.owner,
                due_at=report.due_at, reply_to=reply_to), uow)
        except Refusal as refusal:
            raise Answered(f"refused: {refusal.detail}") from refusal

    @broker.subscriber(progress_queue, topology.events, no_reply=True,
                       title="dispatch/ext.*.dispatch.progress")
    async def on_dispatch_progress(event: ExternalEnvelope, message: RabbitMessage) -> None:
        """A plant system moved a dispatch: applied as its configured role, or answered why not."""
        source, reply_to = _source(message), message.raw_message.reply_to or None
        try:
            progress = DispatchProgress.model_validate(event.data)
        except ValidationError as exc:
            await _answer_broken(uow, event, source, "progress", progress_queue.name, exc,
                                 reply_to)
        await handle(ReportProgress(
            event_id=str(event.event_id), consumer=progress_queue.name,
            correlation_id=event.correlation_id, source=source, role=roles.get(source),
            to=progress.to, evidence=dict(progress.evidence), reason=progress.reason,
            dispatch_id=progress.dispatch_id, order_external_ref=progress.order_external_ref,
            reply_to=reply_to), uow)

    for queue, report in ((production_queue, "exception"), (progress_queue, "progress")):
        delivery_policy(broker).answer_on(queue.name, _refused_answer(uow, queue.name, report))


def _source(message: RabbitMessage) -> str:
    routing_key = event_routing_key(message.raw_message)
    source = source_of(routing_key)
    if source is None:
        # Nobody could match an answer to it: the dead-letter queue is where ops will look.
        raise PermanentError(f"routing key {routing_key!r} names no valid outside system")
    return source


async def _answer_broken(uow: DispatchUnitOfWork, event: ExternalEnvelope, source: str,
                         report: str, consumer: str, exc: ValidationError,
                         reply_to: str | None) -> NoReturn:
    """A report whose data breaks its contract: answered with the reasons, then dead-lettered."""
    reasons = [f"{'.'.join(str(p) for p in e['loc']) or 'data'}: {e['msg']}"
               for e in exc.errors(include_url=False)]
    with contextlib.suppress(Duplicate):  # answered at an earlier delivery
        await handle(RejectReport(event_id=str(event.event_id), consumer=consumer,
                                  correlation_id=event.correlation_id, source=source,
                                  report=report, reasons=reasons, reply_to=reply_to), uow)
    raise Answered("contract violation: " + "; ".join(reasons))


def _refused_answer(uow: DispatchUnitOfWork, consumer: str, report: str) -> Any:
    """The answer hook of an ext queue: a report refused before it could be read is answered."""
    async def answer(raw: aio_pika.abc.AbstractIncomingMessage, body: Any, reason: str) -> None:
        source = source_of(event_routing_key(raw))
        if source is None:
            return
        event_id, correlation_id = refused_ids(raw, body)
        with contextlib.suppress(Duplicate, InboxConflict):
            await handle(RejectReport(
                event_id=str(event_id), consumer=f"{consumer}.refused",
                correlation_id=correlation_id,
                source=source, report=report, reasons=[reason],
                reply_to=raw.reply_to or None), uow)

    return answer
