"""What happens to a consumed message: ack it, hold it while a dependency is down, or dead-letter it.

Every delivery goes through one `_Delivery`, which decides in this order:

1. **Admission**, before any handler runs: the body is not too large, its sender may publish
   its routing key (provenance), its envelope is version 1 and its `type` is the routing key,
   and its AMQP `message_id` is set and is the envelope's `event_id`. A refusal is permanent.
   Last, on a queue with an intake limit (`limit_on`), its outside system is within its rate:
   one over it is refused like any other (answered, dead-lettered for a later replay). A
   replay, sent by ops through the default exchange, is not counted: ops chose its pace.
2. **The handler.** A transient infrastructure failure (the database or the broker unreachable,
   a connection closed, a serialization failure or a deadlock) never counts against the
   message: it is *held*, retried in this process with back-off until the dependency is back
   (`/readyz` reports held messages meanwhile). A permanent failure (a contract violation, a
   refusal, a body that is not JSON) is dead-lettered at once with its reason. Any other
   failure (a bug) is retried `retry_limit` times in-process, then dead-lettered with the last
   error. Nothing is requeued to the broker: the queue's `x-delivery-limit` counts only
   deliveries that a dying process or a lost connection never settled, as a backstop for a
   message that crashes the process.
3. **The answer.** A queue of outside systems' messages (`ext.<system>.*`) can register an
   `Answer`: before such a message is dead-lettered, the sender is answered with the reason
   (an `order.rejected`), so that it always hears back. A message whose sender may not speak
   for the system its routing key names is not answered: that system never sent it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import aio_pika
import aiormq
import asyncpg
import sqlalchemy.exc
from faststream import BaseMiddleware
from faststream.exceptions import SubscriberNotFound
from faststream.rabbit import RabbitQueue
from opentelemetry import trace
from prometheus_client import Counter, Gauge
from pydantic import ValidationError

from shared import crashpoints
from shared.contracts.envelope import CONTRACT_VERSION
from shared.contracts.ext import source_of
from shared.messaging.provenance import Senders, producer_refusal
from shared.messaging.topology import (
    DEAD_LETTERED_AT_HEADER,
    ERROR_HEADER,
    QUEUE_HEADER,
    ROUTING_KEY_HEADER,
    Topology,
    bindings_overlap,
    topic_matches,
)
from shared.ratelimit import RateLimiter
from shared.uow import Duplicate, InboxConflict, message_digest

log = logging.getLogger("spine.delivery")

HELD = Gauge(
    "spine_messages_held",
    "Messages held in this process, retried until a dependency (database, broker) is back",
)
RATE_LIMITED = Counter(
    "spine_messages_rate_limited_total",
    "Messages refused (answered and dead-lettered) because their outside system was over its "
    "intake limit in this process",
    ["queue", "system"],
)


class PermanentError(Exception):
    """The message can never succeed (it breaks the contract): dead-letter it now, no retries."""


class ProvenanceError(PermanentError):
    """The message's sender may not publish its routing key: never acted on, never answered."""


class Answered(PermanentError):
    """The handler answered the sender already (its refusal is committed): dead-letter only."""


class RateLimited(PermanentError):
    """The sender is over its intake limit: answered and dead-lettered, never handled."""


PERMANENT = (PermanentError, InboxConflict, ValidationError, json.JSONDecodeError,
             UnicodeDecodeError, RecursionError, SubscriberNotFound)

# SQLSTATEs that say "try again": serialization failure, deadlock, the server shutting down or
# starting up, too many connections, and the connection-exception class.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03", "53300"})
_TRANSIENT_TYPES = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, socket timeouts
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # the pool had no connection to give in time
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelClosed,
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says a dependency is down or busy, not that the message is wrong."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        sqlstate = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(sqlstate, str) and (sqlstate in _TRANSIENT_SQLSTATES
                                          or sqlstate.startswith("08")):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


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
    if isinstance(exc, RecursionError):
        return "body is not acceptable JSON: nested too deeply to read"
    if isinstance(exc, GaveUp | Answered | RateLimited):
        return str(exc)
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}"[:1000]


# Answers a refused message of an outside system: (the raw message, its decoded body or None
# when it could not be read, the reason) → an `order.rejected` committed through the outbox.
Answer = Callable[[aio_pika.abc.AbstractIncomingMessage, Any, str], Awaitable[None]]


class DeliveryPolicy:
    """Broker middleware factory; one `_Delivery` per message.

    `queues` are the queues the broker's subscribers consume, all bound on the events exchange.
    A delivery does not say which queue it came from, so the policy tells from its routing key:
    no two of the queues may share a routing key, or their dead letters could not be told apart.
    `senders` says which broker user may publish which routing keys (None: no provenance check,
    for plumbing tests whose keys belong to no Spine producer). A held message is retried
    after `retry_base_s`, doubling up to `hold_max_s`.
    """

    def __init__(
        self,
        topology: Topology,
        queues: Sequence[RabbitQueue],
        *,
        senders: Senders | None = None,
        retry_limit: int = 5,
        max_message_bytes: int = 1024 * 1024,
        retry_base_s: float = 0.1,
        hold_max_s: float = 2.0,
    ) -> None:
        self.topology = topology
        self.senders = senders
        self.retry_limit = retry_limit
        self.max_message_bytes = max_message_bytes
        self.retry_base_s = retry_base_s
        self.hold_max_s = hold_max_s
        self.bindings: list[tuple[str, str]] = []
        for queue in queues:
            self.add_bindings(queue.name, [queue.routing()])
        self.answers: dict[str, Answer] = {}
        self.limits: dict[str, RateLimiter] = {}
        # Messages held right now, waiting for a dependency; `/readyz` reads it.
        self.held = 0
        self.last_hold_reason = ""

    def __call__(self, msg: Any, /, *, context: Any) -> _Delivery:
        return _Delivery(msg, context=context, policy=self)

    def add_bindings(self, queue: str, keys: Iterable[str]) -> None:
        """Binding keys of `queue` (a queue may be bound to several event types)."""
        for key in keys:
            for other, other_key in self.bindings:
                if other != queue and bindings_overlap(key, other_key):
                    raise ValueError(f"queues {queue} ({key}) and {other} ({other_key}) can "
                                     "both receive one routing key")
            if (queue, key) not in self.bindings:
                self.bindings.append((queue, key))

    def answer_on(self, queue: str, answer: Answer) -> None:
        """Answer the senders of messages refused on `queue` (an outside systems' queue)."""
        if queue not in dict(self.bindings):
            raise ValueError(f"{queue} is not one of this broker's queues")
        self.answers[queue] = answer

    def limit_on(self, queue: str, limiter: RateLimiter) -> None:
        """Hold each outside system sending on `queue` to its rate in `limiter` (by system)."""
        if queue not in dict(self.bindings):
            raise ValueError(f"{queue} is not one of this broker's queues")
        if limiter.limits_anything:
            self.limits[queue] = limiter

    def over_limit(self, raw: aio_pika.abc.AbstractIncomingMessage, routing_key: str) -> str | None:
        """Why `raw`'s system may not send it now (it is over its intake limit), or None."""
        if not self.limits or not raw.exchange:
            return None  # no limit here, or a replay
        queue = self.queue_of(raw)
        limiter = self.limits.get(queue)
        system = source_of(routing_key)
        if limiter is None or system is None or not limiter.take(system):
            return None
        RATE_LIMITED.labels(queue, system).inc()
        return (f"rate limit exceeded: system {system} is over its intake limit of "
                f"{limiter.rate_of(system)}: send again later")

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

    def readiness(self) -> str | None:
        """What `/readyz` says of held messages; None when nothing is held."""
        if not self.held:
            return None
        return f"{self.held} message(s) held until a dependency is back ({self.last_hold_reason})"

    def hold_delay(self, holds: int) -> float:
        """Seconds to wait before the `holds`-th retry of a held message (with jitter)."""
        delay: float = min(self.retry_base_s * 2.0 ** min(holds, 10), self.hold_max_s)
        return delay * random.uniform(0.8, 1.2)  # noqa: S311  # nosec B311 # jitter, not a secret


def event_routing_key(raw: aio_pika.abc.AbstractIncomingMessage) -> str:
    """The event's own routing key, also for a replay (sent to the queue by name)."""
    if raw.exchange:
        return raw.routing_key or ""
    header = (raw.headers or {}).get(ROUTING_KEY_HEADER)
    return header.decode() if isinstance(header, bytes) else str(header or "")


class _Delivery(BaseMiddleware):
    def __init__(self, msg: Any, /, *, context: Any, policy: DeliveryPolicy) -> None:
        super().__init__(msg, context=context)
        self.policy = policy
        self.body: Any = None

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        raw: aio_pika.abc.AbstractIncomingMessage = msg.raw_message
        policy = self.policy
        if raw.exchange == policy.topology.dead_letters.name:
            # A dead letter read back (a test, ops): it was refused already and carries no sender.
            return await call_next(msg)
        message_digest.set(hashlib.sha256(raw.body).digest())
        try:
            await self.admit(raw, msg)
            await self.run(call_next, msg)
        except Duplicate:
            pass
        except Exception as exc:  # permanent, or retried to the limit: dead-letter it
            await self.refuse(raw, exc)
            return None
        # Handled (or found in the inbox: handled before), and not yet acked.
        crashpoints.reached("after-commit-before-ack")
        await _settle(raw)
        return None

    async def admit(self, raw: aio_pika.abc.AbstractIncomingMessage, msg: Any) -> None:
        """Refuse, before any handler runs, what no handler may see."""
        policy = self.policy
        if len(raw.body) > policy.max_message_bytes:
            raise PermanentError(f"message of {len(raw.body)} bytes is over the limit of "
                                 f"{policy.max_message_bytes} bytes; not read")
        routing_key = event_routing_key(raw)
        senders = policy.senders
        if senders is not None and (reason := senders.sender_refusal(raw.user_id, routing_key)):
            raise ProvenanceError(reason)
        # Decoded once: FastStream caches the body for the handler's own parsing.
        self.body = body = await msg.decode()
        if not raw.message_id:
            raise PermanentError("no message_id: the wire contract sets it to the envelope's "
                                 "event_id, which is how a redelivery is told from a new message")
        if not isinstance(body, dict):
            raise PermanentError("body is not a JSON object (an envelope)")
        if senders is not None and (reason := producer_refusal(routing_key, body.get("producer"))):
            raise ProvenanceError(reason)
        version = body.get("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION or isinstance(version, bool):
            raise PermanentError(f"envelope version {version!r} is not supported "
                                 f"(this consumer reads version {CONTRACT_VERSION})")
        kind = body.get("type")
        if isinstance(kind, str) and kind != routing_key:
            raise PermanentError(f"envelope type {kind!r} differs from its routing key "
                                 f"{routing_key!r}")
        event_id = body.get("event_id")
        if raw.message_id and isinstance(event_id, str) and raw.message_id != event_id:
            raise PermanentError(f"message_id {raw.message_id!r} differs from the envelope's "
                                 f"event_id {event_id!r}")
        # Last, so that only a message that could be handled takes one of its sender's tokens.
        if reason := policy.over_limit(raw, routing_key):
            raise RateLimited(reason)

    async def run(self, call_next: Any, msg: Any) -> None:
        """The handler, held through transient failures and retried through others."""
        policy = self.policy
        failures = holds = 0
        try:
            while True:
                try:
                    await call_next(msg)
                    return
                except (Duplicate, *PERMANENT):
                    raise
                except Exception as exc:
                    if is_transient(exc):
                        if not holds:
                            policy.held += 1
                            HELD.inc()
                            log.warning("holding message %s until its dependency is back: %s",
                                        msg.raw_message.message_id, describe(exc))
                        policy.last_hold_reason = describe(exc)
                        holds += 1
                        await asyncio.sleep(policy.hold_delay(holds))
                        continue
                    failures += 1
                    if failures >= policy.retry_limit:
                        raise GaveUp(failures, exc) from exc
                    log.warning("retrying message %s (attempt %d of %d): %s",
                                msg.raw_message.message_id, failures, policy.retry_limit,
                                describe(exc))
                    await asyncio.sleep(min(policy.retry_base_s * 2 ** (failures - 1), 5.0))
        finally:
            if holds:
                policy.held -= 1
                HELD.dec()

    async def refuse(self, raw: aio_pika.abc.AbstractIncomingMessage, exc: Exception) -> None:
        """Answer the sender where it has a right to an answer, dead-letter, then ack."""
        policy = self.policy
        queue = policy.queue_of(raw)
        reason = describe(exc)
        trace.get_current_span().record_exception(exc)
        try:
            answer = policy.answers.get(queue)
            if answer is not None and not isinstance(exc, ProvenanceError | Answered):
                await self.hold(lambda: answer(raw, self.body, reason))
            await self.hold(lambda: dead_letter(self.context.get("broker"), policy.topology, raw,
                                                queue, reason))
        except asyncio.CancelledError:
            raise
        except Exception as failure:
            # Not settled: the broker redelivers it (to this process or the next) and it is
            # refused again; its x-delivery-limit dead-letters it if that keeps failing.
            log.error("could not dead-letter message %s from %s (%s): %s", raw.message_id, queue,
                      reason, describe(failure))
            await _settle(raw, requeue=True)
            return
        log.warning("dead-lettered message %s from %s: %s", raw.message_id, queue, reason)
        await _settle(raw)

    async def hold(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` until it succeeds or fails for a reason other than a dependency outage."""
        holds = 0
        while True:
            try:
                await step()
                return
            except Exception as exc:
                holds += 1
                if not is_transient(exc) or holds > 60:
                    raise
                await asyncio.sleep(self.policy.hold_delay(holds))

    async def after_processed(
        self,
        exc_type: type[BaseException] | None = None,
        exc_val: BaseException | None = None,
        exc_tb: TracebackType | None = None,
    ) -> bool:
        # Only what escaped `consume_scope`: FastStream failed to parse or route the message
        # before any handler ran. Cancellation leaves the message unsettled, for redelivery.
        if isinstance(exc_val, Exception):
            raw: aio_pika.abc.AbstractIncomingMessage = self.msg  # type: ignore[assignment]
            await self.refuse(raw, exc_val)
            return True
        return False


class GaveUp(Exception):
    """A handler kept failing for a reason not known to be transient."""

    def __init__(self, attempts: int, last: Exception) -> None:
        super().__init__(f"gave up after {attempts} attempts: {describe(last)}")


async def _settle(raw: aio_pika.abc.AbstractIncomingMessage, *, requeue: bool = False) -> None:
    """Ack (or requeue) `raw`; if its channel is gone, the broker redelivers it anyway."""
    if raw.processed:
        return
    try:
        if requeue:
            await raw.nack(requeue=True)
        else:
            await raw.ack()
    except Exception as exc:
        log.info("message %s not settled (%s): the broker will deliver it again",
                 raw.message_id, describe(exc))


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
        reply_to=raw.reply_to or "",
        user_id=None,
    )


def refused_ids(raw: aio_pika.abc.AbstractIncomingMessage, body: Any) -> tuple[uuid.UUID, uuid.UUID]:
    """(message id, correlation id) to answer a message refused before it could be read.

    Whatever the envelope still says is used: its `event_id`, else the AMQP `message_id`, else
    the body's digest, so that a redelivery is answered once; its correlation id, else the
    AMQP one, else a new one.
    """
    envelope = body if isinstance(body, dict) else {}
    event_id = (_as_uuid(envelope.get("event_id")) or _as_uuid(raw.message_id)
                or uuid.UUID(bytes=hashlib.sha256(raw.body).digest()[:16]))
    correlation_id = (_as_uuid(envelope.get("correlation_id")) or _as_uuid(raw.correlation_id)
                      or uuid.uuid4())
    return event_id, correlation_id


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
