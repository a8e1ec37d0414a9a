"""Does the broker do real work? A quorum-queue round trip, bounded in time.

A RabbitMQ node can accept TCP, and even AMQP logins, while its quorum-queue machinery (Ra) is
wedged: every declare of a quorum queue then hangs and every stack start times out (seen twice on
our 3.10 development node). A port check or a login cannot tell; this round trip can: declare a
quorum queue, publish one persistent message with publisher confirms, get it back, delete it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aio_pika


async def quorum_round_trip(amqp_url: str, timeout_s: float = 20.0) -> str | None:
    """None when the round trip completes within `timeout_s`, else the step that failed and why."""
    step = "connect"
    connection: aio_pika.abc.AbstractConnection | None = None

    async def trip() -> None:
        nonlocal step, connection
        connection = await aio_pika.connect(amqp_url, timeout=timeout_s)
        step = "open a channel"
        channel = await connection.channel(publisher_confirms=True)
        name = f"spine.health.{uuid.uuid4().hex[:12]}"
        step = f"declare the quorum queue {name}"
        queue = await channel.declare_queue(name, durable=True,
                                            arguments={"x-queue-type": "quorum"})
        try:
            step = "publish a persistent message and wait for its confirm"
            await channel.default_exchange.publish(
                aio_pika.Message(b"ping", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name)
            step = "get the message back"
            # A confirmed message is in the queue: the first get finds it.
            message = await queue.get(no_ack=True)
            if message.body != b"ping":
                raise RuntimeError(f"got {message.body[:40]!r} instead of the message sent")
        finally:
            step = f"delete the quorum queue {name}"
            await queue.delete(if_unused=False, if_empty=False)

    try:
        await asyncio.wait_for(trip(), timeout_s)
    except TimeoutError:
        return f"{step}: no answer within {timeout_s:.0f} s"
    except Exception as exc:
        return f"{step}: {exc.__class__.__name__}: {exc}"
    finally:
        if connection is not None:
            with contextlib.suppress(Exception):  # a failed probe's connection may be dead
                await asyncio.wait_for(connection.close(), 5)
    return None
