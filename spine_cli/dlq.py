"""`spine dlq list|replay`: read dead letters without taking them, or put them back where they died."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from spine_cli.errors import CliError, exit_with
from spine_cli.groups import OrderedGroup
from spine_cli.params import POSITIVE_INT

if TYPE_CHECKING:
    from aio_pika.abc import AbstractIncomingMessage

# shared.messaging.topology (the header names, the queue names) imports FastStream, which takes
# seconds on a small machine; it is imported where it is used, so `--help` stays instant.


def dlq_name(namespace: str, queue: str) -> str:
    """Accept `ns.svc.purpose.dlq`, `ns.svc.purpose` or `svc.purpose`; return the DLQ's name."""
    if not queue.startswith(f"{namespace}."):
        queue = f"{namespace}.{queue}"
    return queue if queue.endswith(".dlq") else f"{queue}.dlq"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return deaths[0]
    return {}


@dataclass(frozen=True)
class DeadLetter:
    """What a person needs to decide about one dead letter."""

    message_id: str
    routing_key: str
    reason: str
    dead_lettered_at: str
    original_queue: str
    preview: str

    @classmethod
    def of(cls, message: AbstractIncomingMessage, dlq: str) -> DeadLetter:
        """Read a dead letter's provenance from Spine's headers, else from the broker's x-death."""
        from shared.messaging.topology import (
            DEAD_LETTERED_AT_HEADER,
            ERROR_HEADER,
            QUEUE_HEADER,
            ROUTING_KEY_HEADER,
        )

        headers = dict(message.headers or {})
        death = _first_death(headers)
        keys = death.get("routing-keys") or []
        routing_key = headers.get(ROUTING_KEY_HEADER) or (keys[0] if keys else "?")
        reason = headers.get(ERROR_HEADER) or death.get("reason") or "?"
        at = headers.get(DEAD_LETTERED_AT_HEADER) or death.get("time") or "?"
        if isinstance(at, datetime):
            at = at.astimezone(UTC).isoformat()
        original = headers.get(QUEUE_HEADER) or death.get("queue") or dlq.removesuffix(".dlq")
        body = message.body.decode("utf-8", errors="replace")
        preview = " ".join(body.split())
        return cls(
            message_id=message.message_id or "(none)",
            routing_key=_text(routing_key),
            reason=_text(reason),
            dead_lettered_at=_text(at),
            original_queue=_text(original),
            preview=preview if len(preview) <= 100 else preview[:99] + "…",
        )


def replay_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers for a replay: the error and dead-lettering history removed, provenance kept."""
    from shared.messaging.topology import DEAD_LETTERED_AT_HEADER, ERROR_HEADER, QUEUE_HEADER

    dropped = {ERROR_HEADER, QUEUE_HEADER, DEAD_LETTERED_AT_HEADER, "x-death", "x-delivery-count"}
    # x-spine-routing-key stays: after a replay the AMQP routing key is the queue's name, and
    # this header is where a consumer (or a second dead-lettering) finds the original event key.
    return {
        key: value
        for key, value in headers.items()
        if key not in dropped and not key.startswith(("x-first-death-", "x-last-death-"))
    }


def confirm(question: str) -> None:
    """Ask on a terminal; refuse when there is nobody to ask."""
    if not sys.stdin.isatty():
        raise CliError(f"{question} — not confirmed; add --yes", code=2)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled", code=1)


@click.group("dlq", cls=OrderedGroup)
def dlq() -> None:
    """List or replay dead letters."""


@dlq.command("list")
@click.option("--queue", help="One queue, e.g. order.order-submitted.")
@click.option("--limit", type=POSITIVE_INT, metavar="N", default=20, show_default=True,
              help="Messages shown per queue.")
def list_(queue: str | None, limit: int) -> None:
    """Show dead letters of every known queue (nothing is removed)."""
    from shared.messaging.topology import known_queues
    from spine_cli.amqp import amqp, existing_queue
    from spine_cli.settings import load_settings

    settings = load_settings()
    names = (
        [dlq_name(settings.namespace, queue)]
        if queue
        else [f"{q}.dlq" for q in known_queues(settings.namespace)]
    )

    async def list_all() -> None:
        total = 0
        async with amqp(settings) as conn:
            for name in names:
                found = await existing_queue(conn, name)
                if found is None:
                    if queue:
                        raise CliError(f"queue {name} does not exist")
                    continue
                count = found.declaration_result.message_count or 0
                total += count
                click.echo(f"{name}: {count} dead letter(s)")
                # Fetched without ack on this one channel; closing it returns every message.
                for _ in range(min(count, limit)):
                    message = await found.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    letter = DeadLetter.of(message, name)
                    click.echo(f"  {letter.message_id}  {letter.routing_key}  at {letter.dead_lettered_at}")
                    if letter.original_queue != name.removesuffix(".dlq"):
                        click.echo(f"    from:   {letter.original_queue}")
                    click.echo(f"    reason: {letter.reason}")
                    click.echo(f"    body:   {letter.preview}")
                if count > limit:
                    click.echo(f"  … and {count - limit} more (--limit)")
                await found.channel.close()
        if not queue:
            click.echo(f"{total} dead letter(s) in {len(names)} known dead-letter queue(s)")

    asyncio.run(list_all())


@dlq.command("replay")
@click.option("--queue", required=True, help="E.g. order.order-submitted.")
@click.option("--message-id", help="Replay this one message.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every message in the DLQ.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
def replay(queue: str, message_id: str | None, replay_all: bool, yes: bool) -> None:
    """Move dead letters back to the queue they died in.

    Each is published with a confirm first and acked after, so none is lost on the way.
    """
    if message_id and replay_all:
        raise click.UsageError("--message-id is not allowed with --all")
    if not message_id and not replay_all:
        raise click.UsageError("one of --message-id or --all is required")
    from spine_cli.settings import load_settings

    settings = load_settings()
    exit_with(asyncio.run(_replay(settings, dlq_name(settings.namespace, queue), message_id, yes)))


async def _replay(settings: Any, name: str, message_id: str | None, yes: bool) -> int:
    import aio_pika

    from shared.messaging.permissions import broker_user
    from shared.messaging.topology import ROUTING_KEY_HEADER
    from spine_cli.amqp import amqp, publish

    async with amqp(settings) as conn:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity as exc:
            raise CliError(f"queue {name} does not exist") from exc
        # Bounded by what was there at the start, so a message that dies again while we
        # replay is not picked up a second time in the same run.
        count = queue.declaration_result.message_count or 0
        if count == 0:
            click.echo(f"{name} is empty; nothing to replay")
            return 0
        if not message_id and not yes:
            confirm(f"replay all {count} dead letter(s) from {name}?")
        replayed, problems, seen = 0, [], 0
        for _ in range(count):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            seen += 1
            if message_id and message.message_id != message_id:
                continue  # left unacked: it returns to the DLQ when the channel closes
            letter = DeadLetter.of(message, name)
            headers = replay_headers(dict(message.headers or {}))
            if letter.routing_key != "?":
                headers.setdefault(ROUTING_KEY_HEADER, letter.routing_key)
            copy = aio_pika.Message(
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
                # Ours, not the original sender's: the broker checks it against our login
                # (and would refuse another), and consumers accept what ops replays.
                user_id=broker_user(settings.amqp_url),
            )
            try:
                await publish(channel.default_exchange, copy, letter.original_queue,
                              unroutable=f"queue {letter.original_queue} does not exist")
            except CliError as exc:
                problems.append(f"{letter.message_id}: {exc}")
                continue  # not acked: it stays in the DLQ
            await message.ack()
            replayed += 1
            click.echo(f"replayed {letter.message_id} -> {letter.original_queue}")
            if message_id:
                break
        if message_id and not replayed and not problems:
            raise CliError(f"no message {message_id} among the {seen} in {name}")
        wanted = 1 if message_id else seen
        click.echo(f"replayed {replayed} of {wanted} from {name}")
        for problem in problems:
            click.echo(f"  not replayed: {problem}", err=True)
        return 1 if problems else 0
