"""Dead-letter operations: read a DLQ without taking from it, replay, purge. For the CLI and HTTP.

Reading: a dead letter is fetched unacked (`basic.get`) on a channel of its own, which is then
closed without an ack or a nack: the broker returns every message it handed out, in their
order, and nothing is taken. (A `nack(requeue=True)` per message would also return it, but one
at a time while the scan goes on, so a long scan would meet its own returns again.) The queue
takes them back a moment after the channel's close is confirmed, so a read waits (up to
SETTLE_S) until the queue holds them again: the next operation sees them all. Each read
counts as a delivery for the quorum queue (`x-delivery-count` grows); a dead-letter queue has
no delivery limit, so that is all it does. Two people reading one DLQ at once each see only
what the other is not holding.

Replaying: a copy goes to the default exchange addressed to the queue the message died in,
with its `message_id` and the event's routing key (`x-spine-routing-key`), so the consumer's
inbox decides as for any delivery: a message whose effect was already committed is a
duplicate and is acked with no second effect. The copy is confirmed before the dead letter is
acked, so a crash in between leaves the dead letter where it was (and at worst one more copy,
which the inbox absorbs). The copy cannot keep the original sender's `user_id`: the broker
refuses any `user_id` but the publishing connection's login, and the dead-letter copy kept
none. It carries the replaying login's instead, which consumers accept only from a user
allowed every Spine prefix (`*` in SPINE_BROKER_USERS: `spine-ops`, or development's shared
`guest`), and the envelope's producer must still own the routing key. Replaying is therefore
ops's decision, made with the reason in front of them.

aio-pika only (and the header names): the CLI imports this without FastStream's start-up cost.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

# The header names live with the topology; repeated here, checked equal by a unit test, because
# importing shared.messaging.topology loads FastStream (seconds, for a CLI `--help`).
ERROR_HEADER = "x-spine-error"
QUEUE_HEADER = "x-spine-queue"
ROUTING_KEY_HEADER = "x-spine-routing-key"
DEAD_LETTERED_AT_HEADER = "x-spine-dead-lettered-at"
UNKNOWN = "?"
PREVIEW_CHARS = 100
SETTLE_S = 3.0


class QueueMissing(LookupError):
    """The dead-letter queue does not exist (no `spine topology declare`, or a wrong name)."""


class ReplayRefused(RuntimeError):
    """The broker would not take the replayed copy; the dead letter stays where it was."""


def jsonable(value: Any) -> Any:
    """AMQP header values (bytes, timestamps, decimals, nested tables) as JSON values."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return {}


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter as a person needs it: why, from where, when, and what it said."""

    message_id: str
    routing_key: str
    reason: str
    dead_lettered_at: str
    original_queue: str
    body: bytes = field(repr=False)
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, message: AbstractIncomingMessage, dlq: str) -> DeadLetter:
        """Read its provenance from Spine's headers, else from the broker's `x-death`."""
        headers = dict(message.headers or {})
        death = _first_death(headers)
        keys = death.get("routing-keys") or []
        return cls(
            message_id=message.message_id or "",
            routing_key=str(jsonable(headers.get(ROUTING_KEY_HEADER) or (keys[0] if keys else UNKNOWN))),
            # Ours first: `x-death` says only `rejected` or `delivery_limit`, never why.
            reason=str(jsonable(headers.get(ERROR_HEADER) or death.get("reason") or UNKNOWN)),
            dead_lettered_at=str(jsonable(headers.get(DEAD_LETTERED_AT_HEADER)
                                          or death.get("time") or UNKNOWN)),
            original_queue=str(jsonable(headers.get(QUEUE_HEADER) or death.get("queue")
                                        or dlq.removesuffix(".dlq"))),
            body=message.body,
            content_type=message.content_type,
            headers=jsonable(headers),
        )

    @property
    def text(self) -> str:
        """The body as text (invalid UTF-8 shown as U+FFFD)."""
        return self.body.decode("utf-8", errors="replace")

    @property
    def is_text(self) -> bool:
        try:
            self.body.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    @property
    def body_base64(self) -> str:
        return base64.b64encode(self.body).decode()

    @property
    def preview(self) -> str:
        """The body on one line, cut at PREVIEW_CHARS."""
        flat = " ".join(self.text.split())
        return flat if len(flat) <= PREVIEW_CHARS else flat[:PREVIEW_CHARS - 1] + "…"

    def summary(self) -> dict[str, Any]:
        """What a list shows of it."""
        return {"message_id": self.message_id or None, "routing_key": self.routing_key,
                "reason": self.reason, "dead_lettered_at": self.dead_lettered_at,
                "original_queue": self.original_queue, "preview": self.preview}

    def detail(self) -> dict[str, Any]:
        """Everything about it: every header, and the body (as text, and exactly as base64)."""
        return {**self.summary(), "content_type": self.content_type,
                "headers": dict(self.headers), "body": self.text, "body_is_utf8": self.is_text,
                "body_base64": self.body_base64}


def replay_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Headers for a replay: the error and dead-lettering history removed, provenance kept."""
    dropped = {ERROR_HEADER, QUEUE_HEADER, DEAD_LETTERED_AT_HEADER, "x-death", "x-delivery-count"}
    # x-spine-routing-key stays: after a replay the AMQP routing key is the queue's name, and
    # this header is where a consumer (or a second dead-lettering) finds the original event key.
    return {
        key: value
        for key, value in headers.items()
        if key not in dropped and not key.startswith(("x-first-death-", "x-last-death-"))
    }


async def _declared(conn: AbstractConnection, name: str) -> AbstractQueue:
    """The queue, passively, on a channel of its own (a missing one closes the channel)."""
    channel = await conn.channel(publisher_confirms=False)
    try:
        return await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:
        raise QueueMissing(f"queue {name} does not exist") from exc


async def _settled(conn: AbstractConnection, dlq: str, held: int, before: int) -> None:
    """After closing a channel that held `held` of the `before` waiting: until they are back."""
    if held == 0:
        return
    deadline = time.monotonic() + SETTLE_S
    # At least as many as before: others may add meanwhile, and someone purging or replaying at
    # the same time is why this gives up after SETTLE_S rather than wait for ever. (Polled: the
    # broker sends no event when a queue takes messages back.)
    while time.monotonic() < deadline:
        if await count(conn, dlq) >= before:
            return
        await asyncio.sleep(0.02)


async def count(conn: AbstractConnection, dlq: str) -> int:
    """How many dead letters wait in `dlq` (not counting any someone holds right now)."""
    queue = await _declared(conn, dlq)
    try:
        return int(queue.declaration_result.message_count or 0)
    finally:
        await queue.channel.close()


async def peek(conn: AbstractConnection, dlq: str, limit: int) -> tuple[int, list[DeadLetter]]:
    """The number waiting in `dlq` and the first `limit` of them; nothing is taken."""
    queue = await _declared(conn, dlq)
    waiting = int(queue.declaration_result.message_count or 0)
    letters: list[DeadLetter] = []
    try:
        for _ in range(min(waiting, limit)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letters.append(DeadLetter.of(message, dlq))
    finally:
        await queue.channel.close()  # unacked: every message returns to the queue
    await _settled(conn, dlq, len(letters), waiting)
    return waiting, letters


async def find(conn: AbstractConnection, dlq: str, message_id: str) -> DeadLetter | None:
    """The dead letter with this `message_id` (the first, if there are copies); nothing is taken."""
    queue = await _declared(conn, dlq)
    waiting = int(queue.declaration_result.message_count or 0)
    found, held = None, 0
    try:
        for _ in range(waiting):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held += 1
            if message.message_id == message_id:
                found = DeadLetter.of(message, dlq)
                break
    finally:
        await queue.channel.close()
    await _settled(conn, dlq, held, waiting)
    return found


@dataclass
class Replayed:
    """What a replay did: the ids put back, the ones the broker refused, how many were looked at."""

    replayed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    seen: int = 0


async def replay(conn: AbstractConnection, dlq: str, *, user_id: str,
                 message_id: str | None = None) -> Replayed:
    """Put dead letters of `dlq` back into the queue they died in: all, or those with `message_id`.

    Bounded by what was there at the start, so a message that dies again during the replay is
    not replayed twice in one run. Every copy of a `message_id` is replayed: the inbox keeps
    their effect to one, and a copy left behind would only confuse the next person.
    """
    # Confirms and returns on the channel that holds the dead letters: a copy the broker does
    # not confirm (or returns: its queue is gone) leaves its dead letter unacked, so it stays.
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
    result = Replayed()
    waiting = 0
    try:
        try:
            queue = await channel.declare_queue(dlq, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise QueueMissing(f"queue {dlq} does not exist") from exc
        waiting = int(queue.declaration_result.message_count or 0)
        for _ in range(waiting):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            result.seen += 1
            if message_id is not None and message.message_id != message_id:
                continue  # unacked: it returns to the DLQ when the channel closes
            letter = DeadLetter.of(message, dlq)
            if letter.original_queue != dlq.removesuffix(".dlq"):
                # Only the delivery policy names a queue, and always this DLQ's own: a copy
                # naming another was put here by hand, and is not sent on into someone else's.
                result.refused.append(f"{letter.message_id}: it names another queue, "
                                      f"{letter.original_queue}")
                continue
            try:
                await channel.default_exchange.publish(
                    _copy(message, letter, user_id), routing_key=letter.original_queue,
                    mandatory=True, timeout=10)
            except aio_pika.exceptions.PublishError:
                result.refused.append(f"{letter.message_id}: queue {letter.original_queue} "
                                      "does not exist")
                continue
            except (aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                # The broker closed the channel (e.g. ACCESS_REFUSED): nothing more can be
                # acked on it, and everything it held goes back.
                raise ReplayRefused(f"the broker refused the replay of {letter.message_id} to "
                                    f"{letter.original_queue}: {exc}") from exc
            await message.ack()
            result.replayed.append(letter.message_id)
    finally:
        with contextlib.suppress(Exception):  # already closed by the broker after a refusal
            await channel.close()
        kept = result.seen - len(result.replayed)
        with contextlib.suppress(Exception):
            await _settled(conn, dlq, kept, waiting - len(result.replayed))
    return result


def _copy(message: AbstractIncomingMessage, letter: DeadLetter, user_id: str) -> aio_pika.Message:
    headers = replay_headers(dict(message.headers or {}))
    if letter.routing_key != UNKNOWN:
        headers.setdefault(ROUTING_KEY_HEADER, letter.routing_key)
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
        # The sender still hears the outcome where it asked (a refused one was told "send
        # again later" there).
        reply_to=message.reply_to,
        # The replayer's, not the original sender's: see the module's docstring.
        user_id=user_id,
    )


async def purge(conn: AbstractConnection, dlq: str) -> int:
    """Delete every dead letter waiting in `dlq`; returns how many. Final: there is no undo."""
    queue = await _declared(conn, dlq)
    try:
        purged = await queue.purge()
        return int(getattr(purged, "message_count", 0) or 0)
    finally:
        await queue.channel.close()
