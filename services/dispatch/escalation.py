"""The escalation timer: overdue exceptions go to the supervisors, once, whatever restarts.

Nothing is kept in memory: each tick asks the database what is due (`due_at` of the open and
acknowledged exceptions) and escalates it under the dispatch's row lock. A tick lost to a crash
is made up by the next one, after a restart as well; two replicas ticking together escalate
each exception once, because the second re-reads it under the lock and finds it escalated.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from services.dispatch.handlers import EscalateOverdue, handle
from services.dispatch.unit_of_work import DispatchUnitOfWork
from shared.messaging.delivery import describe

log = logging.getLogger("spine.dispatch.escalation")

ESCALATED = Counter("spine_exceptions_escalated", "Overdue exceptions escalated to supervisors")
# Dispatches per tick: more wait for the next tick.
BATCH = 100


async def run_escalation_timer(uow: DispatchUnitOfWork, interval_s: float) -> None:
    """Tick every `interval_s` until cancelled; a failed tick (the database down) is retried."""
    while True:
        try:
            escalated = await handle(EscalateOverdue(limit=BATCH), uow)
            if escalated:
                ESCALATED.inc(escalated)
                log.info("escalated %d overdue exception(s) to role:supervisor", escalated)
        except Exception as exc:  # an outage ends this tick, not the timer
            log.warning("escalation tick failed (%s); trying again in %.1f s", describe(exc),
                        interval_s)
        await asyncio.sleep(interval_s)
