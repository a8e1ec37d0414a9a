"""`spine dlq list|show|replay|purge`: dead letters read without taking them, put back, or deleted.

The work is `shared.messaging.dead_letters` (the services' HTTP routes do the same); this module
is the wording and the asking.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from spine_cli.errors import CliError, exit_with
from spine_cli.groups import OrderedGroup
from spine_cli.params import POSITIVE_INT

if TYPE_CHECKING:
    from aio_pika.abc import AbstractConnection

    from shared.messaging.dead_letters import DeadLetter
    from spine_cli.settings import CliSettings

# shared.messaging.topology (the queue names) imports FastStream, which takes seconds on a small
# machine; it is imported where it is used, so `--help` stays instant.
T = TypeVar("T")


def dlq_name(namespace: str, queue: str) -> str:
    """Accept `ns.svc.purpose.dlq`, `ns.svc.purpose` or `svc.purpose`; return the DLQ's name."""
    if not queue.startswith(f"{namespace}."):
        queue = f"{namespace}.{queue}"
    return queue if queue.endswith(".dlq") else f"{queue}.dlq"


def confirm(question: str) -> None:
    """Ask on a terminal; refuse when there is nobody to ask."""
    if not sys.stdin.isatty():
        raise CliError(f"{question} — not confirmed; add --yes", code=2)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled", code=1)


def known_dead_letter_queues(namespace: str) -> list[str]:
    """Every consuming queue's DLQ in `namespace`, as the registry lists them."""
    from shared.messaging.topology import known_queues

    return [f"{q}.dlq" for q in known_queues(namespace)]


@asynccontextmanager
async def _broker(settings: CliSettings) -> AsyncIterator[AbstractConnection]:
    """A connection whose missing queues and refusals become one-line errors."""
    from shared.messaging.dead_letters import QueueMissing, ReplayRefused
    from spine_cli.amqp import amqp

    async with amqp(settings) as conn:
        try:
            yield conn
        except (QueueMissing, ReplayRefused) as exc:
            raise CliError(str(exc)) from exc


def _run(settings: CliSettings, work: Callable[[AbstractConnection], Awaitable[T]]) -> T:
    async def run() -> T:
        async with _broker(settings) as conn:
            return await work(conn)

    return asyncio.run(run())


def _echo_letter(letter: DeadLetter, dlq: str) -> None:
    click.echo(f"  {letter.message_id or '(none)'}  {letter.routing_key}  at {letter.dead_lettered_at}")
    if letter.original_queue != dlq.removesuffix(".dlq"):
        click.echo(f"    from:   {letter.original_queue}")
    click.echo(f"    reason: {letter.reason}")
    click.echo(f"    body:   {letter.preview}")


@click.group("dlq", cls=OrderedGroup)
def dlq() -> None:
    """List, show, replay or purge dead letters."""


@dlq.command("list")
@click.option("--queue", help="One queue, e.g. order.order-submitted.")
@click.option("--limit", type=POSITIVE_INT, metavar="N", default=20, show_default=True,
              help="Messages shown per queue.")
def list_(queue: str | None, limit: int) -> None:
    """Show the dead letters of every known queue, each with its reason (nothing is removed).

    Also counts the unrouted queue: events no queue was bound for.
    """
    from shared.messaging import dead_letters
    from spine_cli.settings import load_settings

    settings = load_settings()
    names = [dlq_name(settings.namespace, queue)] if queue else known_dead_letter_queues(
        settings.namespace)

    async def list_all(conn: AbstractConnection) -> None:
        total = 0
        for name in names:
            try:
                waiting, letters = await dead_letters.peek(conn, name, limit)
            except dead_letters.QueueMissing:
                if queue:
                    raise
                continue
            total += waiting
            click.echo(f"{name}: {waiting} dead letter(s)")
            for letter in letters:
                _echo_letter(letter, name)
            if waiting > len(letters):
                click.echo(f"  … and {waiting - len(letters)} more (--limit)")
        if not queue:
            click.echo(f"{total} dead letter(s) in {len(names)} known dead-letter queue(s)")
            unrouted = f"{settings.namespace}.unrouted"
            try:
                kept = await dead_letters.count(conn, unrouted)
            except dead_letters.QueueMissing:
                return
            click.echo(f"{unrouted}: {kept} event(s) no queue was bound for")

    _run(settings, list_all)


@dlq.command("show")
@click.option("--queue", required=True, help="E.g. order.order-submitted.")
@click.option("--message-id", required=True, help="The dead letter to show.")
@click.option("--json", "as_json", is_flag=True, help="Print it as one JSON document.")
def show(queue: str, message_id: str, as_json: bool) -> None:
    """Show one dead letter in full: every header, the reason, the body (nothing is removed)."""
    from shared.messaging import dead_letters
    from spine_cli.settings import load_settings

    settings = load_settings()
    name = dlq_name(settings.namespace, queue)
    letter = _run(settings, lambda conn: dead_letters.find(conn, name, message_id))
    if letter is None:
        raise CliError(f"no message {message_id} in {name}")
    if as_json:
        click.echo(json.dumps(letter.detail(), indent=2, ensure_ascii=False))
        return
    click.echo(f"message_id:       {letter.message_id}")
    click.echo(f"queue:            {letter.original_queue}")
    click.echo(f"routing key:      {letter.routing_key}")
    click.echo(f"dead-lettered at: {letter.dead_lettered_at}")
    click.echo(f"reason:           {letter.reason}")
    click.echo(f"content type:     {letter.content_type or '(none)'}")
    click.echo("headers:")
    for key, value in sorted(letter.headers.items()):
        click.echo(f"  {key}: {json.dumps(value, ensure_ascii=False)}")
    click.echo("body:" if letter.is_text else "body (not UTF-8; base64):")
    click.echo(letter.text if letter.is_text else letter.body_base64)


@dlq.command("replay")
@click.option("--queue", required=True, help="E.g. order.order-submitted.")
@click.option("--message-id", help="Replay this one message.")
@click.option("--all", "replay_all", is_flag=True, help="Replay every message in the DLQ.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
def replay(queue: str, message_id: str | None, replay_all: bool, yes: bool) -> None:
    """Put dead letters back into the queue they died in, through the consumer's inbox.

    Each copy keeps its message_id, so a message whose effect was already committed is a
    duplicate there and has no second effect. Each is published with a confirm first and
    acked after, so none is lost on the way.
    """
    if message_id and replay_all:
        raise click.UsageError("--message-id is not allowed with --all")
    if not message_id and not replay_all:
        raise click.UsageError("one of --message-id or --all is required")
    from shared.messaging import dead_letters
    from shared.messaging.permissions import broker_user
    from spine_cli.settings import load_settings

    settings = load_settings()
    name = dlq_name(settings.namespace, queue)

    async def run(conn: AbstractConnection) -> int:
        waiting = await dead_letters.count(conn, name)
        if waiting == 0:
            click.echo(f"{name} is empty; nothing to replay")
            return 0 if replay_all else _not_found(message_id, name)
        if replay_all and not yes:
            confirm(f"replay all {waiting} dead letter(s) from {name}?")
        done = await dead_letters.replay(conn, name, user_id=broker_user(settings.amqp_url),
                                         message_id=message_id)
        to = name.removesuffix(".dlq")
        for replayed in done.replayed:
            click.echo(f"replayed {replayed or '(none)'} -> {to}")
        if message_id and not done.replayed and not done.refused:
            return _not_found(message_id, name, done.seen)
        wanted = len(done.replayed) + len(done.refused) if message_id else done.seen
        click.echo(f"replayed {len(done.replayed)} of {wanted} from {name}")
        for problem in done.refused:
            click.echo(f"  not replayed: {problem}", err=True)
        return 1 if done.refused else 0

    exit_with(_run(settings, run))


def _not_found(message_id: str | None, name: str, seen: int = 0) -> NoReturn:
    raise CliError(f"no message {message_id} among the {seen} in {name}")


@dlq.command("purge")
@click.option("--queue", required=True, help="E.g. order.order-submitted.")
@click.option("--yes", is_flag=True, help="Do not ask first.")
def purge(queue: str, yes: bool) -> None:
    """Delete every dead letter of one queue, for good; prints how many.

    Asks first (a purge cannot be undone; `spine dlq list` or `show` them before).
    """
    from shared.messaging import dead_letters
    from spine_cli.settings import load_settings

    settings = load_settings()
    name = dlq_name(settings.namespace, queue)

    async def run(conn: AbstractConnection) -> None:
        waiting = await dead_letters.count(conn, name)
        if waiting and not yes:
            confirm(f"delete all {waiting} dead letter(s) in {name} for good?")
        purged = await dead_letters.purge(conn, name)
        click.echo(f"purged {purged} dead letter(s) from {name}")

    _run(settings, run)
