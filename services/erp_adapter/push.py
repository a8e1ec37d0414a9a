"""The push worker: due confirmations go to the ERP, acknowledgement files come back.

Nothing is kept in memory: each tick asks the database what is due (`pending`, its
`next_attempt_at` passed, its connector not in shadow mode — the mode is read at every tick,
so a switch takes effect without a restart), claims it with `FOR UPDATE SKIP LOCKED` (two
replicas never take the same one), sends it outside any transaction, then records the outcome
with its integration-log row in one transaction.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from services.erp_adapter.confirmations import Backoff
from services.erp_adapter.connectors import Connector
from services.erp_adapter.connectors.file import FileConnector
from services.erp_adapter.outbound import (
    PushDue,
    TakeAcknowledgement,
    ensure_connector,
    push_due,
    take_acknowledgement,
)
from services.erp_adapter.unit_of_work import ErpUnitOfWork
from shared.messaging.delivery import describe

log = logging.getLogger("spine.erp_adapter.push")

PUSHED = Counter("spine_erp_confirmations_pushed", "Confirmation send attempts to the ERP")


async def tick(uow: ErpUnitOfWork, connector: Connector, backoff: Backoff,
               lease_s: float = 60.0) -> int:
    """One round: acknowledgements read back, then what is due sent; attempts made."""
    if isinstance(connector, FileConnector):
        for ack in await asyncio.to_thread(connector.acknowledgements):
            await take_acknowledgement(TakeAcknowledgement(ack.event_id, ack.answer,
                                                           connector.name), uow)
            await asyncio.to_thread(connector.done, ack)
    sent = await push_due(PushDue(connector=connector, backoff=backoff, lease_s=lease_s), uow)
    PUSHED.inc(sent)
    return sent


async def run_push_worker(uow: ErpUnitOfWork, connector: Connector, backoff: Backoff,
                          interval_s: float, lease_s: float = 60.0) -> None:
    """Tick every `interval_s` (at once again while there is more) until cancelled."""
    ready = False
    while True:
        try:
            if not ready:
                await ensure_connector(connector.name, uow)
                ready = True
            if await tick(uow, connector, backoff, lease_s):
                continue  # more may be due: no pause while there is a backlog
        except Exception as exc:  # an outage ends this tick, not the worker
            log.warning("ERP push tick failed (%s); trying again in %.1f s", describe(exc),
                        interval_s)
        await asyncio.sleep(interval_s)
