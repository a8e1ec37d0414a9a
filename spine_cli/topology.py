"""`spine topology declare`: the exchanges and every consumer queue, before any service starts."""

from __future__ import annotations

import asyncio

import click

from spine_cli.errors import CliError
from spine_cli.groups import OrderedGroup


@click.group("topology", cls=OrderedGroup)
def topology() -> None:
    """Broker topology."""


@topology.command("declare")
def declare() -> None:
    """Declare the exchanges and every consumer queue with its DLQ.

    The events exchange (topic) with its alternate exchange and the unrouted queue it keeps,
    the dead-letter exchange (direct), and each quorum queue with its bindings: run it before
    any service starts, so no early event misses its consumer.
    """
    from aio_pika.exceptions import AMQPChannelError

    from shared.messaging.topology import Topology, declare_all
    from spine_cli.amqp import amqp
    from spine_cli.settings import load_settings

    settings = load_settings()
    spec = Topology(settings.namespace)

    async def run() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel()
            try:
                queues = await declare_all(channel, spec)
            except AMQPChannelError as exc:
                raise CliError(f"cannot declare the topology: {exc}") from exc
        click.echo(f"declared {spec.events.name} (topic, alternate exchange "
                   f"{spec.unrouted.name}), {spec.dead_letters.name} (direct), "
                   f"{spec.unrouted.name} (fanout) and {len(queues)} queues: {', '.join(queues)}")

    asyncio.run(run())
