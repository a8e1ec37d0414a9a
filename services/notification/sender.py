"""The sender: a database-driven worker per outbound channel that sends due deliveries.

Nothing is kept in memory: each round claims due `pending` rows of its channel (`FOR UPDATE
SKIP LOCKED`, so replicas share the work), sends each one concurrently, and records `sent`
(with `notification.delivered`) or schedules the next attempt with backoff and jitter, and
after the last one records `failed` (with `notification.failed`). A delivery is scheduled on
its own, so one failing receiver delays only its own deliveries; a channel per worker, so a
mail server that hangs does not hold up webhooks. Retries survive restarts: they are rows.
"""

from __future__ import annotations

import asyncio
import logging
import random

from prometheus_client import Counter

from services.notification.channels import Notifier
from services.notification.domain import Claimed, RetryPolicy
from services.notification.handlers import (
    ClaimDue,
    RecordAttemptFailed,
    RecordSent,
    handle,
)
from services.notification.unit_of_work import NotificationUnitOfWork
from shared import crashpoints
from shared.messaging.delivery import describe

log = logging.getLogger("spine.notification.sender")

ATTEMPTS = Counter("spine_notification_attempts", "Delivery attempts by channel and outcome",
                   ["channel", "outcome"])


async def run_sender(channel: str, notifier: Notifier, uow: NotificationUnitOfWork, *,
                     policy: RetryPolicy, interval_s: float, batch: int, lease_s: float) -> None:
    """Send `channel`'s due deliveries until cancelled; an outage ends a round, not the loop."""
    while True:
        claimed: list[Claimed] = []
        try:
            claimed = await handle(ClaimDue(channel, batch, lease_s), uow)
            outcomes = await asyncio.gather(*(_attempt(d, notifier, uow, policy) for d in claimed),
                                            return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):  # not recorded: sent again after its lease
                    log.warning("%s delivery not recorded (%s)", channel, describe(outcome))
        except Exception as exc:
            log.warning("%s sender round failed (%s); trying again in %.1f s", channel,
                        describe(exc), interval_s)
        if len(claimed) < batch:  # a full batch: more may be due at once
            await asyncio.sleep(interval_s)


async def _attempt(delivery: Claimed, notifier: Notifier, uow: NotificationUnitOfWork,
                   policy: RetryPolicy) -> None:
    try:
        await notifier.send(delivery)
    except Exception as exc:  # any refusal or outage of the receiver is this attempt's failure
        error = describe(exc) or type(exc).__name__
        delay = policy.delay(delivery.attempts, random.random())  # nosec B311 # jitter, not crypto
        ATTEMPTS.labels(delivery.channel, "retry" if delay is not None else "failed").inc()
        log.info("delivery %s (%s to %s) attempt %d failed: %s%s", delivery.id,
                 delivery.channel, delivery.recipient, delivery.attempts, error,
                 f"; next in {delay:.1f} s" if delay is not None else "; giving up")
        await handle(RecordAttemptFailed(delivery, error, delay), uow)
        return
    # The receiver has it and the row does not say so yet: a crash here sends it again after
    # the lease (at least once; the Message-ID / delivery-id header lets the receiver dedupe).
    crashpoints.reached("after-outbound-before-record")
    ATTEMPTS.labels(delivery.channel, "sent").inc()
    await handle(RecordSent(delivery), uow)
