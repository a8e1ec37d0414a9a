"""Use cases of outbound confirmations: record them from dispatch events, approve, retry, push.

Each takes a command and the unit of work and commits its effect with its audit rows, its
integration-log rows and its `erp.confirmation.*` outbox rows in one transaction. The push
sends outside any transaction (`push_due`): a claim commits first, the outcome afterwards.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from services.erp_adapter.confirmations import (
    Backoff,
    Confirmation,
    ConnectorModeChanged,
    Kind,
    Mode,
    Shipment,
    Status,
    document,
    file_stem,
)
from services.erp_adapter.connectors import Ack, Connector, Rejected
from services.erp_adapter.domain import LogEntry
from services.erp_adapter.unit_of_work import ErpTransaction, ErpUnitOfWork
from shared import crashpoints, workflow
from shared.contracts.envelope import Actor
from shared.messaging.delivery import describe

log = logging.getLogger("spine.erp_adapter.outbound")

SYSTEM_ACTOR = Actor(id="erp_adapter", role=workflow.SYSTEM)


class NotShippedYet(Exception):
    """A correction of a dispatch whose shipment the adapter has not recorded yet: retried."""


@dataclass(frozen=True)
class RecordShipment:
    """`dispatch.shipped`: keep Spine's values, and confirm the shipment to the ERP."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    occurred_at: str
    shipment: Shipment
    connector: str


@dataclass(frozen=True)
class RecordCorrection:
    """`dispatch.corrected`: the corrected values, and a corrected confirmation."""

    event_id: str
    consumer: str
    correlation_id: uuid.UUID
    occurred_at: str
    dispatch_id: str
    version: int
    changes: list[dict[str, Any]]
    connector: str


async def record_shipment(cmd: RecordShipment, uow: ErpUnitOfWork) -> Confirmation | None:
    """None when a newer version of the dispatch is known already (a stale event)."""
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        stored, mode = await tx.shipments.ship(cmd.shipment, cmd.connector)
        if not stored:
            return None
        return await _confirm(tx, cmd.event_id, Kind.SHIPPED, cmd.shipment, mode, cmd.connector,
                              cmd.occurred_at, None)


async def record_correction(cmd: RecordCorrection, uow: ErpUnitOfWork) -> Confirmation | None:
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=cmd.correlation_id,
                         causation_id=uuid.UUID(cmd.event_id),
                         inbox=(cmd.consumer, cmd.event_id)) as tx:
        shipped, mode = await tx.shipments.current(cmd.dispatch_id, cmd.connector)
        if shipped is None:
            # Rolled back with its inbox row: the delivery policy tries it again shortly.
            raise NotShippedYet(f"dispatch {cmd.dispatch_id} corrected before its shipment was "
                                "recorded here")
        if shipped.version >= cmd.version:
            return None
        corrected = shipped.corrected(cmd.version, cmd.changes)
        await tx.shipments.correct(corrected)
        return await _confirm(tx, cmd.event_id, Kind.CORRECTED, corrected, mode, cmd.connector,
                              cmd.occurred_at, cmd.changes)


async def _confirm(tx: ErpTransaction, event_id: str, kind: Kind, shipment: Shipment, mode: Mode,
                   connector: str, occurred_at: str, changes: list[dict[str, Any]] | None
                   ) -> Confirmation:
    key = uuid.UUID(event_id)
    doc = document(kind, key, shipment, occurred_at=occurred_at, changes=changes)
    found = Confirmation.record_new(event_id=key, kind=kind, shipment=shipment,
                                    connector=connector, mode=mode, document=doc,
                                    correlation_id=tx.correlation_id)
    await tx.confirmations.add(found)
    if found.status is Status.SHADOWED:
        # Shadow mode: the log shows exactly what would have crossed; nothing does.
        await tx.integration_log.add([LogEntry(
            "confirmation", "shadowed", str(found.id), f"{kind.value} confirmation of dispatch "
            f"{shipment.dispatch_id} not sent: connector {connector} is in shadow mode",
            direction="out", connector=connector, order_id=shipment.order_id, payload=doc,
            attempts=0)], tx.correlation_id)
    return found


@dataclass(frozen=True)
class ApproveConfirmation:
    confirmation_id: uuid.UUID
    actor: Actor


@dataclass(frozen=True)
class RetryConfirmation:
    confirmation_id: uuid.UUID
    actor: Actor


async def approve_confirmation(cmd: ApproveConfirmation, uow: ErpUnitOfWork) -> Confirmation:
    async with uow.begin(actor=cmd.actor) as tx:
        found = await _get(tx, cmd.confirmation_id)
        found.approve(cmd.actor)
        await tx.confirmations.update(found)
        return found


async def retry_confirmation(cmd: RetryConfirmation, uow: ErpUnitOfWork) -> Confirmation:
    async with uow.begin(actor=cmd.actor) as tx:
        found = await _get(tx, cmd.confirmation_id)
        found.retry(cmd.actor)
        await tx.confirmations.update(found)
        return found


async def _get(tx: ErpTransaction, confirmation_id: uuid.UUID) -> Confirmation:
    found = await tx.confirmations.get(confirmation_id)
    if found is None:
        raise workflow.NotFound(f"no confirmation {confirmation_id}")
    return found


@dataclass(frozen=True)
class SetConnectorMode:
    name: str
    mode: Mode
    actor: Actor


async def set_connector_mode(cmd: SetConnectorMode, uow: ErpUnitOfWork) -> Mode:
    """The mode it had; the subscriber and the worker read the new one at their next use."""
    async with uow.begin(actor=cmd.actor) as tx:
        before = await tx.connectors.set_mode(cmd.name, cmd.mode, cmd.actor.id)
        if before is None:
            raise workflow.NotFound(f"no connector {cmd.name!r}")
        tx.collect(ConnectorModeChanged(name=cmd.name, before=before, after=cmd.mode))
        return before


# --- the push ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PushDue:
    """Send what is due through `connector`; how many were sent or failed."""

    connector: Connector
    limit: int = 20
    lease_s: float = 60.0
    backoff: Backoff = Backoff()


async def push_due(cmd: PushDue, uow: ErpUnitOfWork) -> int:
    async with uow.begin(actor=SYSTEM_ACTOR) as tx:
        claimed = await tx.confirmations.claim_due(cmd.limit, cmd.lease_s)
    for found in claimed:
        # Outside any transaction: a slow ERP holds no connection and no lock.
        request = cmd.connector.describe(found)
        try:
            ack: Ack | None = await cmd.connector.send(found, stem=_stem(found))
            error, permanent = None, False
        except Rejected as exc:
            ack, error, permanent = None, describe(exc), True
        except Exception as exc:  # a timeout, a 5xx, a full disk: tried again later
            ack, error, permanent = None, describe(exc), False
        crashpoints.reached("after-outbound-before-record")
        await _record_attempt(uow, found, cmd, request, ack, error, permanent)
    return len(claimed)


def _stem(found: Confirmation) -> str:
    assert found.created_at is not None and found.seq is not None  # nosec B101 # loaded rows
    return file_stem(found.created_at, found.seq, found.event_id)


async def _record_attempt(uow: ErpUnitOfWork, claimed: Confirmation, cmd: PushDue,
                          request: dict[str, Any], ack: Ack | None, error: str | None,
                          permanent: bool) -> None:
    async with uow.begin(actor=SYSTEM_ACTOR, correlation_id=claimed.correlation_id) as tx:
        found = await tx.confirmations.get(claimed.id)
        again: float | None = None
        if found is None or found.status is not Status.PENDING:
            # Settled meanwhile (its acknowledgement file came first, or another worker sent it
            # after our lease ran out): the attempt still crossed the boundary, so it is logged.
            found, outcome = claimed, "superseded"
        elif ack is not None:
            found.sent(ack.response, acknowledged=ack.acknowledged)
            outcome = found.status.value
        else:
            again = found.attempt_failed(error or "unknown", permanent=permanent,
                                         backoff=cmd.backoff)
            outcome = "failed" if again is None else "retrying"
        if outcome != "superseded":
            await tx.confirmations.update(found, next_attempt_in_s=again)
        await tx.integration_log.add([LogEntry(
            "confirmation", outcome, str(found.id),
            f"{found.kind.value} confirmation of dispatch {found.dispatch_id}, attempt "
            f"{found.attempts}" + (f": {error}" if error else ""),
            direction="out", connector=found.connector, order_id=found.order_id,
            payload=found.document, request=request,
            response=ack.response if ack is not None else None, attempts=found.attempts,
            last_error=error)], tx.correlation_id)


@dataclass(frozen=True)
class TakeAcknowledgement:
    """An acknowledgement the ERP sent back (a file): its confirmation is acknowledged."""

    event_id: uuid.UUID
    answer: dict[str, Any]
    connector: str


async def take_acknowledgement(cmd: TakeAcknowledgement, uow: ErpUnitOfWork) -> bool:
    """False when it names no confirmation (logged, so the unmatched file is seen)."""
    async with uow.begin(actor=SYSTEM_ACTOR) as tx:
        found = await tx.confirmations.get_by_event(cmd.event_id)
        if found is not None and found.status in (Status.POSTED, Status.PENDING,
                                                  Status.FAILED):
            # PENDING/FAILED: the file was written but recording it failed, or it was retried;
            # the ERP's acknowledgement is what counts.
            found.acknowledge(cmd.answer)
            await tx.confirmations.update(found)
        await tx.integration_log.add([LogEntry(
            "confirmation", "acknowledged" if found is not None else "unmatched",
            str(found.id) if found is not None else str(cmd.event_id),
            "acknowledgement file " + str(cmd.answer.get("file")) +
            ("" if found is not None else " names no confirmation"),
            direction="in", connector=cmd.connector,
            order_id=found.order_id if found is not None else None,
            response=cmd.answer)],
            found.correlation_id if found is not None else tx.correlation_id)
        return found is not None


async def ensure_connector(name: str, uow: ErpUnitOfWork) -> None:
    """A connector module new to this database gets its mode row (shadow)."""
    async with uow.begin(actor=SYSTEM_ACTOR) as tx:
        await tx.connectors.ensure(name)
