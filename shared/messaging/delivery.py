"""What happens to a consumed message: ack on success, dead-letter with a reason, or retry."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aio_pika
from faststream import BaseMiddleware
from faststream.exceptions import SubscriberNotFound
from faststream.rabbit import RabbitQueue
from pydantic import ValidationError

from shared import crashpoints
from shared.messaging.topology import (
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    ROUTING_KEY_HEADER,
    Topology,
    bindings_overlap,
    topic_matches,
)
from shared.uow import Duplicate

log = logging.getLogger("spine.delivery")


class PermanentError(Exception):
    """The message can never succeed (it breaks the contract): dead-letter it now, no retries."""


PERMANENT = (PermanentError, ValidationError, json.JSONDecodeError, UnicodeDecodeError,
             SubscriberNotFound)


def describe(exc: BaseException) -> str:
    """A one-line reason a person can read in the dead-letter queue."""
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors()[:10]
        ]
        return "contract violation: " + "; ".join(parts)
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        # Bytes starting with NUL make json guess UTF-16/32; say what is wrong, not just the codec.
        return f"{exc.__class__.__name__}: body is not JSON: {exc}"[:1000]
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:1000]


class DeliveryPolicy:
    """Broker middleware factory; one `_Delivery` per message.

    `queues` are the queues the broker's subscribers consume, all bound on the events exchange.
    A delivery does not say which queue it came from, so the policy tells from its routing key:
    no two of the queues may share a routing key, or their dead letters could not be told apart.
    """

    def __init__(
        self, topology: Topology, queues: Sequence[RabbitQueue], *, retry_base_s: float = 0.2
    ) -> None:
        self.topology = topology
        self.retry_base_s = retry_base_s
        self.bindings = [(queue.name, queue.routing()) for queue in queues]
        for (one, key), (other, other_key) in itertools.combinations(self.bindings, 2):
            if bindings_overlap(key, other_key):
                raise ValueError(f"queues {one} ({key}) and {other} ({other_key}) can both "
                                 "receive one routing key")

    def __call__(self, msg: Any, /, *, context: Any) -> _Delivery:
        return _Delivery(msg, context=context, policy=self)

    def queue_of(self, raw: aio_pika.abc.AbstractIncomingMessage) -> str:
        """The queue that delivered `raw`."""
        routing_key = raw.routing_key or ""
        if not raw.exchange:
            # The default exchange routes to the queue its routing key names (a replay does this).
            return routing_key
        for name, binding_key in self.bindings:
            if topic_matches(binding_key, routing_key):
                return name
        return "unknown"


class _Delivery(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, policy: DeliveryPolicy) -> None:
        super().__init__(msg, context=context)
        self.policy = policy

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool:
        raw: aio_pika.abc.AbstractIncomingMessage = self.msg  # type: ignore[assignment]
        if exc_val is None or isinstance(exc_val, Duplicate):
            crashpoints.reached("after-commit-before-ack")
            if not raw.processed:
                await raw.ack()
            return True
        if not isinstance(exc_val, Exception):
            return False  # cancellation: leave the message unacked so the broker redelivers it
        queue = self.policy.queue_of(raw)
        attempts = _delivery_count(raw) + 1
        if isinstance(exc_val, PERMANENT) or attempts >= self.policy.topology.delivery_limit:
            reason = describe(exc_val)
            if not isinstance(exc_val, PERMANENT):
                reason = f"gave up after {attempts} attempts: {reason}"
            await dead_letter(self.context.get("broker"), self.policy.topology, raw, queue, reason)
            log.warning("dead-lettered message %s from %s: %s", raw.message_id, queue, reason)
            await raw.ack()
            return True
        # A transient failure: back off a little, then let the broker redeliver it. The queue's
        # x-delivery-limit is the backstop if this process dies before it can dead-letter.
        log.warning("retrying message %s from %s (attempt %d): %s",
                    raw.message_id, queue, attempts, describe(exc_val))
        await asyncio.sleep(min(self.policy.retry_base_s * 2 ** (attempts - 1), 5.0))
        await raw.nack(requeue=True)
        return True


def _delivery_count(raw: aio_pika.abc.AbstractIncomingMessage) -> int:
    """Earlier deliveries of this message, as counted by the quorum queue."""
    value = (raw.headers or {}).get("x-delivery-count", 0)
    return value if isinstance(value, int) else 0


async def dead_letter(
    broker: Any,
    topology: Topology,
    raw: aio_pika.abc.AbstractIncomingMessage,
    queue: str,
    reason: str,
) -> None:
    """Put a copy of `raw` on `queue`'s dead-letter queue with our reason headers (confirmed)."""
    headers = dict(raw.headers or {})
    # A replayed message arrives with the queue name as its routing key; keep the event's own.
    headers.setdefault(ROUTING_KEY_HEADER, raw.routing_key or "")
    headers.update(
        {
            ERROR_HEADER: reason,
            QUEUE_HEADER: queue,
            DEAD_LETTERED_AT_HEADER: datetime.now(UTC).isoformat(),
        }
    )
    await broker.publish(
        raw.body,
        exchange=topology.dead_letters,
        routing_key=queue,
        persist=True,
        mandatory=True,
        message_id=raw.message_id,
        correlation_id=raw.correlation_id,
        content_type=raw.content_type,
        headers=headers,
        user_id=None,
    )
