"""The CLI's RabbitMQ plumbing: fail fast with a reason, publish with confirms and `mandatory`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from spine_cli.errors import CliError, debugging
from spine_cli.settings import CliSettings, redact

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue


@asynccontextmanager
async def amqp(settings: CliSettings) -> AsyncIterator[AbstractConnection]:
    """A plain (not robust) connection: a CLI should fail fast and say why."""
    import aio_pika
    from aio_pika.exceptions import AuthenticationError, ProbableAuthenticationError

    if not debugging():
        # aiormq logs a failed connect before raising it; the error below says it in one line.
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    where = redact(settings.amqp_url)
    try:
        conn = await aio_pika.connect(
            settings.amqp_url, timeout=10, client_properties={"connection_name": "spine-cli"}
        )
    except (AuthenticationError, ProbableAuthenticationError) as exc:
        raise CliError(f"RabbitMQ at {where} refused the login ({exc}); check SPINE_AMQP_URL") from exc
    except (OSError, TimeoutError, ConnectionError, aio_pika.exceptions.AMQPError) as exc:
        raise CliError(
            f"RabbitMQ at {where} does not answer ({exc.__class__.__name__}: {exc}). Start it "
            "with `make services-up`, or point SPINE_AMQP_URL at a broker that runs."
        ) from exc
    try:
        yield conn
    finally:
        await conn.close()


async def events_exchange(channel: AbstractChannel, namespace: str) -> Any:
    """The existing `{ns}.events` exchange; a readable error if nobody declared it yet."""
    from aio_pika.exceptions import ChannelNotFoundEntity

    name = f"{namespace}.events"
    try:
        return await channel.get_exchange(name, ensure=True)
    except ChannelNotFoundEntity as exc:
        raise CliError(
            f"exchange {name} does not exist — run `./spine topology declare` (or start a service)"
        ) from exc


async def existing_queue(conn: AbstractConnection, name: str) -> AbstractQueue | None:
    """Passive declare on a channel of its own (a missing queue closes the channel it was asked on)."""
    from aio_pika.exceptions import ChannelNotFoundEntity

    channel = await conn.channel(publisher_confirms=False)
    try:
        return await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        return None


def traceparent() -> str:
    """A fresh W3C trace context, so a journey started from the CLI is one trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


async def publish(exchange: Any, message: Any, routing_key: str, *, unroutable: str) -> None:
    """Publish `mandatory` with a confirm; returned or refused messages become readable errors."""
    from aio_pika.exceptions import AMQPChannelError, DeliveryError, PublishError

    try:
        await exchange.publish(message, routing_key=routing_key, mandatory=True, timeout=10)
    except PublishError as exc:
        raise CliError(unroutable) from exc
    except DeliveryError as exc:
        raise CliError(f"the broker refused {routing_key} ({exc}); is the queue full?") from exc
    except AMQPChannelError as exc:
        raise CliError(f"RabbitMQ closed the channel while publishing {routing_key}: {exc}") from exc
