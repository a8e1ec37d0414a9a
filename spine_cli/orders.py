"""`spine submit-order`, `publish-raw` and `watch`: talk to the event bus as an outside system would."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import click

from spine_cli.errors import CliError
from spine_cli.params import POSITIVE_FLOAT, POSITIVE_INT

SAMPLE_SHIP_TO = "Werk Nord Receiving;Industriestrasse 12;Augsburg;86150;DE"


@dataclass(frozen=True)
class Line:
    """One `--line` of an order."""

    product_id: str
    quantity: str
    uom: str


class OrderLine(click.ParamType["Line", Any]):
    """`PRODUCT:QTY[:UOM]`, e.g. `P-200:5` or `P-200:2.5:KG`."""

    name = "PRODUCT:QTY[:UOM]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Line:
        if isinstance(value, Line):
            return value
        parts = str(value).split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            self.fail(f"{value!r}: expected PRODUCT:QTY[:UOM], e.g. P-200:5", param, ctx)
        try:
            Decimal(parts[1])
        except InvalidOperation:
            self.fail(f"{value!r}: quantity {parts[1]!r} is not a number", param, ctx)
        return Line(parts[0], parts[1], parts[2] if len(parts) == 3 else "EA")


def parse_ship_to(value: str) -> dict[str, str]:
    """`Name;Street;City;Postcode;CC` as the contract's ship_to object."""
    parts = [p.strip() for p in value.split(";")]
    if len(parts) != 5:
        raise ValueError(f"{value!r}: expected 'Name;Street;City;Postcode;CC' (5 parts, got {len(parts)})")
    name, street, city, postal_code, country = parts
    return {"name": name, "street": street, "city": city, "postal_code": postal_code,
            "country": country.upper()}


class ShipTo(click.ParamType[dict[str, str], Any]):
    """`--ship-to 'Name;Street;City;Postcode;CC'`."""

    name = "'Name;Street;City;Postcode;CC'"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, str]:
        if isinstance(value, dict):
            return value
        try:
            return parse_ship_to(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class SystemName(click.ParamType[str, Any]):
    """The name of an outside system, as its routing keys `ext.<system>.*` carry it."""

    name = "SYSTEM"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        # Imported here: the contracts pull in pydantic, and `--help` should not wait for it.
        from shared.contracts.ext import SYSTEM_NAME

        if not SYSTEM_NAME.match(str(value)):
            self.fail(f"{value!r}: a system name is {SYSTEM_NAME.pattern}", param, ctx)
        return str(value)


def contract_problems(exc: Exception) -> str:
    """A pydantic validation error as `field: problem; field: problem`."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
    return str(exc)


@click.command("submit-order")
@click.option("--system", required=True, type=SystemName(), help="E.g. mes.")
@click.option("--customer", required=True, help="Customer id, e.g. C-100.")
@click.option("--line", "lines", multiple=True, required=True, type=OrderLine(),
              help="An order line; repeat for several.")
@click.option("--ref", help="external_ref (default: EXT-<6 hex>).")
@click.option("--ship-date", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD",
              help="Requested ship date (default: in 14 days).")
@click.option("--rush", is_flag=True, help="Priority rush.")
@click.option("--confirmed/--no-confirmed", default=True, show_default=True,
              help="Already confirmed in the sales system.")
@click.option("--times", type=POSITIVE_INT, metavar="N", default=1, show_default=True,
              help="Publish the same event N times (idempotency demo).")
@click.option("--ship-to", type=ShipTo(), metavar=ShipTo.name, help=f"Default: {SAMPLE_SHIP_TO!r}.")
@click.option("--unchecked", is_flag=True, help="Send even if the contract rejects it (dead-letter demo).")
def submit_order(system: str, customer: str, lines: tuple[Line, ...], ref: str | None,
                 ship_date: datetime | None, rush: bool, confirmed: bool, times: int,
                 ship_to: dict[str, str] | None, unchecked: bool) -> None:
    """Publish ext.<system>.order.submitted as an outside system.

    The order is checked against the contract first (--unchecked sends it anyway).
    """
    import aio_pika
    from pydantic import ValidationError

    from shared.contracts.envelope import Actor, new_envelope
    from shared.contracts.ext import OrderSubmitted
    from shared.messaging.permissions import broker_user
    from spine_cli.amqp import amqp, events_exchange, publish, traceparent
    from spine_cli.settings import load_settings

    routing_key = f"ext.{system}.order.submitted"
    data: dict[str, Any] = {
        "external_ref": ref or f"EXT-{secrets.token_hex(3).upper()}",
        "customer_id": customer,
        "requested_ship_date": (ship_date.date() if ship_date else date.today() + timedelta(days=14))
        .isoformat(),
        "priority": "rush" if rush else "normal",
        "ship_to": ship_to or parse_ship_to(SAMPLE_SHIP_TO),
        "lines": [
            {"line_no": n, "product_id": line.product_id, "quantity": line.quantity, "uom": line.uom}
            for n, line in enumerate(lines, start=1)
        ],
        "confirmed": confirmed,
    }
    try:
        OrderSubmitted.model_validate(data)
    except ValidationError as exc:
        if not unchecked:
            raise CliError(f"the order breaks the contract: {contract_problems(exc)} "
                           "(add --unchecked to send it anyway)", code=2) from exc
    settings = load_settings()
    envelope = new_envelope(type=routing_key, producer=system, data=data,
                            actor=Actor(id=system, role="integration"))
    message = aio_pika.Message(
        json.dumps(envelope, separators=(",", ":")).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=envelope["event_id"],
        correlation_id=envelope["correlation_id"],
        app_id=system,
        user_id=broker_user(settings.amqp_url),
        timestamp=datetime.now(UTC),
        headers={"traceparent": traceparent()},
    )

    async def send() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await events_exchange(channel, settings.namespace)
            for _ in range(times):
                await publish(exchange, message, routing_key,
                              unroutable=f"no queue took {routing_key}, not even "
                              f"{settings.namespace}.unrouted — run `./spine topology declare`")

    asyncio.run(send())
    copies = f" x{times} (the same event each time)" if times > 1 else ""
    click.echo(f"published {routing_key}{copies}")
    click.echo(f"  event_id        {envelope['event_id']}")
    click.echo(f"  external_ref    {data['external_ref']}")
    click.echo(f"  correlation_id  {envelope['correlation_id']}")


@click.command("publish-raw")
@click.option("--routing-key", required=True, help="E.g. ext.mes.order.submitted.")
@click.option("--body", required=True, help="The message body, as text.")
@click.option("--content-type", default="application/json", show_default=True,
              help="Empty for none.")
@click.option("--message-id", help="Default: a new UUID.")
def publish_raw(routing_key: str, body: str, content_type: str, message_id: str | None) -> None:
    """Publish arbitrary bytes to the events exchange.

    To watch bad input being dead-lettered, with its reason.
    """
    import aio_pika

    from shared.messaging.permissions import broker_user
    from spine_cli.amqp import amqp, events_exchange, publish, traceparent
    from spine_cli.settings import load_settings

    settings = load_settings()
    message_id = message_id or str(uuid.uuid4())
    message = aio_pika.Message(
        body.encode(),
        content_type=content_type or None,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=str(uuid.uuid4()),
        # Sent as the login the broker validates; a raw body's producer is still checked.
        user_id=broker_user(settings.amqp_url),
        timestamp=datetime.now(UTC),
        headers={"traceparent": traceparent()},
    )

    async def send() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await events_exchange(channel, settings.namespace)
            await publish(exchange, message, routing_key,
                          unroutable=f"no queue took {routing_key}, not even "
                          f"{settings.namespace}.unrouted — run `./spine topology declare`")

    asyncio.run(send())
    click.echo(f"published {len(message.body)} bytes to {routing_key}, message_id {message_id}")


_ID_FIELDS = ("order_id", "dispatch_id", "external_ref", "customer_id", "product_id", "source")


def describe_event(routing_key: str, body: bytes) -> str:
    """One line per event: time, type, the ids that matter, aggregate version, status."""
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    try:
        envelope = json.loads(body)
        data = envelope["data"]
        if not isinstance(data, dict):
            raise TypeError("data is not an object")
    except (ValueError, KeyError, TypeError):
        preview = " ".join(body.decode("utf-8", errors="replace").split())[:80]
        return f"{stamp}  {routing_key:<32} (not an envelope) {preview}"
    parts = [f"{key}={data[key]}" for key in _ID_FIELDS if data.get(key)]
    if "version" in data:
        parts.append(f"v{data['version']}")
    if data.get("status"):
        parts.append(f"status={data['status']}")
    if data.get("reasons"):
        parts.append(f"reasons={data['reasons']}")
    corr = str(envelope.get("correlation_id", ""))[:8]
    actor = envelope.get("actor") or {}
    who = f"{actor.get('id', '?')}/{actor.get('role', '?')}" if isinstance(actor, dict) else "?"
    return f"{stamp}  {envelope.get('type', routing_key):<32} {' '.join(parts)}  [corr {corr} by {who}]"


@click.command("watch")
@click.option("--pattern", "patterns", multiple=True,
              help="Binding pattern, repeatable (default '#': everything).")
@click.option("--seconds", type=POSITIVE_FLOAT, metavar="N", help="Stop after N seconds.")
def watch(patterns: tuple[str, ...], seconds: float | None) -> None:
    """Print events as they pass, one line each.

    Until Ctrl-C, or until --seconds have passed.
    """
    from spine_cli.amqp import amqp, events_exchange
    from spine_cli.settings import load_settings

    settings = load_settings()
    bindings = list(patterns) or ["#"]

    async def run() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=False)
            exchange = await events_exchange(channel, settings.namespace)
            # Exclusive, auto-delete and classic: it vanishes with this process and never holds
            # up the real consumers.
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for pattern in bindings:
                await queue.bind(exchange, routing_key=pattern)
            until = f" for {seconds:g} s" if seconds else " (Ctrl-C stops)"
            click.echo(f"watching {exchange.name} for {', '.join(bindings)}{until}", err=True)
            with suppress(TimeoutError):  # --seconds ran out
                async with asyncio.timeout(seconds), queue.iterator(no_ack=True) as messages:
                    async for message in messages:
                        click.echo(describe_event(message.routing_key or "", message.body))
                        sys.stdout.flush()

    with suppress(KeyboardInterrupt):  # Ctrl-C is how a watch normally ends
        asyncio.run(run())
