"""The operator CLI: `python -m shared.cli` (or `./spine`) — databases, topology, tokens, dead letters.

Expected failures (a server that does not answer, a missing secret, an unroutable message) end
with one readable line on stderr and a non-zero exit code; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

# Heavy libraries (alembic, FastAPI via shared.auth, FastStream via the topology) take seconds to
# import on a small machine, so each command imports what it uses; `--help` stays instant.
if TYPE_CHECKING:
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractIncomingMessage,
        AbstractQueue,
    )

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICES_DIR = REPO_ROOT / "services"
ENV_FILE = REPO_ROOT / ".env"

# Folder under services/ -> suffix of its database name. The erp_adapter's settings name their
# service "erp", so its database is `spine_erp` (ServiceSettings.database_name).
SERVICE_DATABASES = {
    "order": "order",
    "dispatch": "dispatch",
    "notification": "notification",
    "erp_adapter": "erp",
}

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
NAMESPACE_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]*$")

SAMPLE_SHIP_TO = "Werk Nord Receiving;Industriestrasse 12;Augsburg;86150;DE"


class CliError(Exception):
    """An expected failure: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The subset of the services' SPINE_* settings the CLI needs; no secret is required up front."""

    amqp_url: str
    pg_url: str
    db_prefix: str
    namespace: str
    jwt_secret: str | None
    jwt_issuer: str | None
    jwt_audience: str | None

    @classmethod
    def load(cls) -> Settings:
        """Environment first, then the repo's `.env` (the precedence the services' settings use)."""
        dotenv = read_env_file(ENV_FILE)

        def get(name: str, default: str | None = None) -> str | None:
            key = f"SPINE_{name}"
            value = os.environ.get(key, dotenv.get(key))
            return value if value not in (None, "") else default

        settings = cls(
            amqp_url=get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/") or "",
            pg_url=get("PG_URL", "postgresql://postgres@127.0.0.1:5432") or "",
            db_prefix=get("DB_PREFIX", "spine") or "",
            namespace=get("NAMESPACE", "spine") or "",
            jwt_secret=get("JWT_SECRET"),
            jwt_issuer=get("JWT_ISSUER"),
            jwt_audience=get("JWT_AUDIENCE"),
        )
        if not NAME_PATTERN.match(settings.db_prefix):
            raise CliError(f"SPINE_DB_PREFIX={settings.db_prefix!r} must match {NAME_PATTERN.pattern}")
        if not NAMESPACE_PATTERN.match(settings.namespace):
            raise CliError(
                f"SPINE_NAMESPACE={settings.namespace!r} must match {NAMESPACE_PATTERN.pattern}"
            )
        return settings


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file; comments, blank lines and `export ` are tolerated."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def redact(url: str) -> str:
    """`url` with its password replaced, so it can be printed in an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def database_name(prefix: str, service: str) -> str:
    return f"{prefix}_{SERVICE_DATABASES[service]}"


# --------------------------------------------------------------------------- db


def cmd_db_setup(args: argparse.Namespace, settings: Settings) -> int:
    """Create each service's database if missing and migrate it to the newest revision."""
    from alembic.script import ScriptDirectory

    from shared.db.migrate import alembic_config, ensure_database, upgrade

    prefix = args.prefix or settings.db_prefix
    services = [args.service] if args.service else list(SERVICE_DATABASES)
    base = settings.pg_url.rstrip("/")
    failures = 0
    for service in services:
        name = database_name(prefix, service)
        label = f"{service:<13} {name:<22}"
        env_py = SERVICES_DIR / service / "migrations" / "env.py"
        if not env_py.is_file():
            print(f"{label} skipped: {env_py.relative_to(REPO_ROOT)} does not exist yet",
                  file=sys.stderr)
            continue
        created = _pg(settings, ensure_database(base, name))
        before = _pg(settings, _current_revision(f"{base}/{name}"))
        url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
        try:
            upgrade(service, url)
        except Exception as exc:  # a broken migration: report it, carry on with the others
            if args.debug:
                raise
            failures += 1
            print(f"{label} FAILED: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            continue
        after = _pg(settings, _current_revision(f"{base}/{name}"))
        heads = ScriptDirectory.from_config(alembic_config(service, url)).get_heads()
        what = "created" if created else "exists"
        if before == after:
            outcome = f"already at head {after or '(no revisions)'}"
        else:
            outcome = f"migrated {before or '(empty)'} -> {after}"
        if after and heads and after not in heads:
            outcome += f" (head is {', '.join(heads)})"
        print(f"{label} {what}; {outcome}")
    return 1 if failures else 0


async def _current_revision(dsn: str) -> str | None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version ORDER BY 1")
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return ", ".join(r["version_num"] for r in rows) or None


def _pg(settings: Settings, coro: Any) -> Any:
    """Run one PostgreSQL coroutine, turning "cannot connect" into a readable error."""
    import asyncpg

    try:
        return asyncio.run(coro)
    except (OSError, asyncpg.CannotConnectNowError, TimeoutError) as exc:
        raise CliError(
            f"PostgreSQL at {redact(settings.pg_url)} does not answer ({exc}). Start it with "
            "`make services-up`, or point SPINE_PG_URL at a server that runs."
        ) from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise CliError(f"PostgreSQL at {redact(settings.pg_url)} refused the login: {exc}") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise CliError(f"PostgreSQL refused: {exc} (does the SPINE_PG_URL role own it?)") from exc


def cmd_db_drop(args: argparse.Namespace, settings: Settings) -> int:
    """Drop the four databases of one prefix (tests and clean-ups)."""
    from shared.db.migrate import drop_database

    if not NAME_PATTERN.match(args.prefix):
        raise CliError(f"--prefix {args.prefix!r} must match {NAME_PATTERN.pattern}", code=2)
    names = [database_name(args.prefix, service) for service in SERVICE_DATABASES]
    if not args.yes:
        raise CliError(f"refusing to drop {', '.join(names)} without --yes", code=2)
    base = settings.pg_url.rstrip("/")

    async def drop_all() -> list[tuple[str, bool]]:
        import asyncpg

        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            existing = {r["datname"] for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)}
        finally:
            await conn.close()
        for name in names:
            if name in existing:
                await drop_database(base, name)
        return [(name, name in existing) for name in names]

    for name, existed in _pg(settings, drop_all()):
        print(f"{name:<24} {'dropped' if existed else 'did not exist'}")
    return 0


# --------------------------------------------------------------------------- AMQP plumbing


@asynccontextmanager
async def amqp(settings: Settings) -> AsyncIterator[AbstractConnection]:
    """A plain (not robust) connection: a CLI should fail fast and say why."""
    import aio_pika
    from aio_pika.exceptions import AuthenticationError, ProbableAuthenticationError

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


# --------------------------------------------------------------------------- topology


def cmd_topology_declare(args: argparse.Namespace, settings: Settings) -> int:
    """Declare the exchanges and every consumer queue (with its DLQ) before services start."""
    from aio_pika.exceptions import AMQPChannelError

    from shared.messaging.topology import Topology, declare_all

    topology = Topology(settings.namespace)

    async def declare() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel()
            try:
                queues = await declare_all(channel, topology)
            except AMQPChannelError as exc:
                raise CliError(f"cannot declare the topology: {exc}") from exc
        print(f"declared {topology.events.name} (topic), {topology.dead_letters.name} (direct) "
              f"and {len(queues)} queues: {', '.join(queues)}")

    asyncio.run(declare())
    return 0


# --------------------------------------------------------------------------- token


def role_name(value: str) -> str:
    from shared.tokens import ROLES

    if value not in ROLES:
        raise argparse.ArgumentTypeError(
            f"unknown role {value!r}; known roles: {', '.join(ROLES)}"
        )
    return value


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """Print a development JWT for the given roles."""
    from shared.config import PLACEHOLDER_SECRETS
    from shared.tokens import JwtVerifier

    secret = settings.jwt_secret
    if not secret:
        raise CliError("SPINE_JWT_SECRET is not set (environment or .env); run `make env`")
    if len(secret) < 32 or secret.strip().lower() in PLACEHOLDER_SECRETS:
        raise CliError("SPINE_JWT_SECRET is shorter than 32 characters or a placeholder, so the "
                       "services would refuse it; set a real one (`make env` writes one to .env)")
    roles = list(dict.fromkeys(args.role))
    sub = args.sub or f"dev-{roles[0]}"
    verifier = JwtVerifier(secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    print(verifier.issue(sub, roles, ttl_s=int(args.ttl_hours * 3600)))
    if sys.stdout.isatty():
        print(f"# sub={sub} roles={','.join(roles)}, valid {args.ttl_hours:g} h", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- dead letters


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


def cmd_dlq_list(args: argparse.Namespace, settings: Settings) -> int:
    """Show dead letters without removing them (they return to the queue when we disconnect)."""
    from shared.messaging.topology import known_queues

    names = (
        [dlq_name(settings.namespace, args.queue)]
        if args.queue
        else [f"{q}.dlq" for q in known_queues(settings.namespace)]
    )

    async def list_all() -> int:
        total = 0
        async with amqp(settings) as conn:
            for name in names:
                queue = await existing_queue(conn, name)
                if queue is None:
                    if args.queue:
                        raise CliError(f"queue {name} does not exist")
                    continue
                count = queue.declaration_result.message_count or 0
                total += count
                print(f"{name}: {count} dead letter(s)")
                # Fetched without ack on this one channel; closing it returns every message.
                for _ in range(min(count, args.limit)):
                    message = await queue.get(no_ack=False, fail=False)
                    if message is None:
                        break
                    letter = DeadLetter.of(message, name)
                    print(f"  {letter.message_id}  {letter.routing_key}  at {letter.dead_lettered_at}")
                    if letter.original_queue != name.removesuffix(".dlq"):
                        print(f"    from:   {letter.original_queue}")
                    print(f"    reason: {letter.reason}")
                    print(f"    body:   {letter.preview}")
                if count > args.limit:
                    print(f"  … and {count - args.limit} more (--limit)")
                await queue.channel.close()
        if not args.queue:
            print(f"{total} dead letter(s) in {len(names)} known dead-letter queue(s)")
        return 0

    return asyncio.run(list_all())


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


def cmd_dlq_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Move dead letters back to the queue they died in: confirmed publish first, then ack."""
    import aio_pika

    from shared.messaging.topology import ROUTING_KEY_HEADER

    name = dlq_name(settings.namespace, args.queue)

    async def replay() -> int:
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
                print(f"{name} is empty; nothing to replay")
                return 0
            if args.all and not args.yes:
                confirm(f"replay all {count} dead letter(s) from {name}?")
            replayed, problems, seen = 0, [], 0
            for _ in range(count):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                seen += 1
                if args.message_id and message.message_id != args.message_id:
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
                    # No user_id: the broker checks it against *our* login and would refuse it.
                )
                try:
                    await publish(channel.default_exchange, copy, letter.original_queue,
                                  unroutable=f"queue {letter.original_queue} does not exist")
                except CliError as exc:
                    problems.append(f"{letter.message_id}: {exc}")
                    continue  # not acked: it stays in the DLQ
                await message.ack()
                replayed += 1
                print(f"replayed {letter.message_id} -> {letter.original_queue}")
                if args.message_id:
                    break
            if args.message_id and not replayed and not problems:
                raise CliError(f"no message {args.message_id} among the {seen} in {name}")
            wanted = 1 if args.message_id else seen
            print(f"replayed {replayed} of {wanted} from {name}")
            for problem in problems:
                print(f"  not replayed: {problem}", file=sys.stderr)
            return 1 if problems else 0

    return asyncio.run(replay())


def confirm(question: str) -> None:
    """Ask on a terminal; refuse when there is nobody to ask."""
    if not sys.stdin.isatty():
        raise CliError(f"{question} — not confirmed; add --yes", code=2)
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise CliError("cancelled", code=1)


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class LineArg:
    product_id: str
    quantity: str
    uom: str


def order_line(value: str) -> LineArg:
    """`PRODUCT:QTY[:UOM]`, e.g. `P-200:5` or `P-200:2.5:KG`."""
    parts = value.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise argparse.ArgumentTypeError(f"{value!r}: expected PRODUCT:QTY[:UOM], e.g. P-200:5")
    try:
        Decimal(parts[1])
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: quantity {parts[1]!r} is not a number") from exc
    return LineArg(parts[0], parts[1], parts[2] if len(parts) == 3 else "EA")


def ship_to(value: str) -> dict[str, str]:
    """`Name;Street;City;Postcode;CC`."""
    parts = [p.strip() for p in value.split(";")]
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected 'Name;Street;City;Postcode;CC' (5 parts, got {len(parts)})"
        )
    name, street, city, postal_code, country = parts
    return {"name": name, "street": street, "city": city, "postal_code": postal_code,
            "country": country.upper()}


def system_name(value: str) -> str:
    from shared.contracts.ext import SYSTEM_NAME

    if not SYSTEM_NAME.match(value):
        raise argparse.ArgumentTypeError(f"{value!r}: a system name is {SYSTEM_NAME.pattern}")
    return value


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be greater than 0")
    return number


def contract_problems(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
    return str(exc)


def cmd_submit_order(args: argparse.Namespace, settings: Settings) -> int:
    """Publish `ext.<system>.order.submitted` as an outside sales system would."""
    import aio_pika
    from pydantic import ValidationError

    from shared.contracts.envelope import Actor, new_envelope
    from shared.contracts.ext import OrderSubmitted

    routing_key = f"ext.{args.system}.order.submitted"
    data: dict[str, Any] = {
        "external_ref": args.ref or f"EXT-{secrets.token_hex(3).upper()}",
        "customer_id": args.customer,
        "requested_ship_date": (args.ship_date or date.today() + timedelta(days=14)).isoformat(),
        "priority": "rush" if args.rush else "normal",
        "ship_to": args.ship_to or ship_to(SAMPLE_SHIP_TO),
        "lines": [
            {"line_no": n, "product_id": line.product_id, "quantity": line.quantity,
             "uom": line.uom}
            for n, line in enumerate(args.line, start=1)
        ],
        "confirmed": args.confirmed,
    }
    try:
        OrderSubmitted.model_validate(data)
    except ValidationError as exc:
        if not args.unchecked:
            raise CliError(f"the order breaks the contract: {contract_problems(exc)} "
                           "(add --unchecked to send it anyway)", code=2) from exc
    envelope = new_envelope(
        type=routing_key,
        producer=args.system,
        data=data,
        actor=Actor(id=args.system, role="integration"),
    )
    message = aio_pika.Message(
        json.dumps(envelope, separators=(",", ":")).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=envelope["event_id"],
        correlation_id=envelope["correlation_id"],
        app_id=args.system,
        timestamp=datetime.now(UTC),
        headers={"traceparent": traceparent()},
    )

    async def send() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await events_exchange(channel, settings.namespace)
            for _ in range(args.times):
                await publish(
                    exchange, message, routing_key,
                    unroutable=f"no queue is bound for {routing_key} — is the order service "
                    "running?",
                )

    asyncio.run(send())
    times = f" x{args.times} (the same event each time)" if args.times > 1 else ""
    print(f"published {routing_key}{times}")
    print(f"  event_id        {envelope['event_id']}")
    print(f"  external_ref    {data['external_ref']}")
    print(f"  correlation_id  {envelope['correlation_id']}")
    return 0


def cmd_publish_raw(args: argparse.Namespace, settings: Settings) -> int:
    """Publish arbitrary bytes to the events exchange (to watch bad input being dead-lettered)."""
    import aio_pika

    message_id = args.message_id or str(uuid.uuid4())
    message = aio_pika.Message(
        args.body.encode(),
        content_type=args.content_type or None,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=str(uuid.uuid4()),
        timestamp=datetime.now(UTC),
        headers={"traceparent": traceparent()},
    )

    async def send() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await events_exchange(channel, settings.namespace)
            await publish(exchange, message, args.routing_key,
                          unroutable=f"no queue is bound for {args.routing_key}")

    asyncio.run(send())
    print(f"published {len(message.body)} bytes to {args.routing_key}, message_id {message_id}")
    return 0


# --------------------------------------------------------------------------- watch

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


def cmd_watch(args: argparse.Namespace, settings: Settings) -> int:
    """Print every event on the bus that matches the patterns, until Ctrl-C or --seconds."""
    patterns = args.pattern or ["#"]

    async def watch() -> None:
        async with amqp(settings) as conn:
            channel = await conn.channel(publisher_confirms=False)
            exchange = await events_exchange(channel, settings.namespace)
            # Exclusive, auto-delete and classic: it vanishes with this process and never holds
            # up the real consumers.
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for pattern in patterns:
                await queue.bind(exchange, routing_key=pattern)
            until = f" for {args.seconds:g} s" if args.seconds else " (Ctrl-C stops)"
            print(f"watching {exchange.name} for {', '.join(patterns)}{until}", file=sys.stderr)
            with suppress(TimeoutError):  # --seconds ran out
                async with asyncio.timeout(args.seconds), queue.iterator(no_ack=True) as messages:
                    async for message in messages:
                        print(describe_event(message.routing_key or "", message.body), flush=True)

    with suppress(KeyboardInterrupt):  # Ctrl-C is how a watch normally ends
        asyncio.run(watch())
    return 0


# --------------------------------------------------------------------------- argument parsing


# --------------------------------------------------------------------------- dispatch (HTTP)


def _api(settings: Settings, role: str, sub: str | None) -> Any:
    """An HTTP client of the dispatch API, acting as a development user with `role`."""
    import httpx

    from shared.tokens import JwtVerifier

    if not settings.jwt_secret:
        raise CliError("SPINE_JWT_SECRET is not set (environment or .env); run `make env`")
    token = JwtVerifier(settings.jwt_secret, issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience).issue(sub or f"dev-{role}", [role])
    base = os.environ.get("SPINE_DISPATCH_URL", "http://127.0.0.1:8002")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _answer(response: Any) -> Any:
    """The JSON body of a 2xx answer; otherwise a one-line error with the service's reason."""
    if response.is_success:
        return response.json()
    try:
        body = response.json()
        detail = body.get("detail", body)
        problems = body.get("problems")
    except ValueError:
        detail, problems = response.text, None
    extra = f" ({'; '.join(problems)})" if problems and "; ".join(problems) != detail else ""
    raise CliError(f"HTTP {response.status_code}: {detail}{extra}")


def _request(call: Callable[[], Any]) -> Any:
    import httpx

    try:
        return _answer(call())
    except httpx.HTTPError as exc:
        raise CliError(f"the dispatch service did not answer ({exc}); is `make run` running? "
                       "(set SPINE_DISPATCH_URL to reach another one)") from exc


def cmd_dispatch_list(args: argparse.Namespace, settings: Settings) -> int:
    """List dispatches, newest first."""
    params = {k: v for k, v in (("order_id", args.order), ("status", args.status)) if v}
    with _api(settings, "ops", None) as client:
        rows = _request(lambda: client.get("/dispatches", params=params))
    for row in rows:
        print(f"{row['id']}  {row['status']:<9} v{row['version']:<3} order {row['order_id']}"
              f"  ({row.get('source') or '-'} {row.get('external_ref') or ''})")
    if not rows:
        print("no dispatches match", file=sys.stderr)
    return 0


def cmd_dispatch_move(args: argparse.Namespace, settings: Settings) -> int:
    """Move a dispatch to a new status as a user with the given role (reads the version first)."""
    evidence: dict[str, Any] = {}
    if args.line:
        evidence["lines"] = args.line
    if args.carrier or args.tracking:
        evidence.update(carrier=args.carrier or "", tracking_number=args.tracking or "")
    if args.hold_code or args.owner or args.due:
        evidence.update(reason_code=args.hold_code or "", owner=args.owner or "",
                        due_at=args.due or "")
    with _api(settings, args.as_role, args.sub) as client:
        current = client.get(f"/dispatches/{args.dispatch_id}")
        _answer(current)
        version = current.headers.get("etag", "")
        moved = _request(lambda: client.post(
            f"/dispatches/{args.dispatch_id}/transitions",
            json={"to": args.status, "reason": args.reason or "", "evidence": evidence},
            headers={"If-Match": version},
        ))
    print(f"{moved['id']} is now {moved['status']} (version {moved['version']})")
    return 0


def cmd_dispatch_history(args: argparse.Namespace, settings: Settings) -> int:
    """Print a dispatch's audit history, oldest first."""
    with _api(settings, "ops", None) as client:
        rows = _request(lambda: client.get(f"/dispatches/{args.dispatch_id}/history"))
    for row in rows:
        print(f"{row['occurred_at']}  {row['actor_id']} ({row['actor_role']})  "
              f"{row['from_state'] or '-'} -> {row['to_state'] or '-'}"
              f"{'  reason: ' + row['reason'] if row['reason'] else ''}"
              f"  correlation {row['correlation_id']}")
    return 0


def packed_line(value: str) -> dict[str, Any]:
    line_no, sep, quantity = value.partition("=")
    if not sep or not line_no.isdigit() or not quantity:
        raise argparse.ArgumentTypeError(f"{value!r} is not LINE_NO=QUANTITY, e.g. 1=4")
    return {"line_no": int(line_no), "quantity": quantity}


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree; each sub-command's handler is stored as `func`."""
    parser = argparse.ArgumentParser(
        prog="spine",
        description="Spine operator CLI. Reads SPINE_* from the environment, then from .env.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, func: Callable[[argparse.Namespace, Settings], int], help: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    db = commands.add_parser("db", help="create, migrate or drop the services' databases",
                             description="Create, migrate or drop the services' databases.")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    setup = command(db_commands, "setup", cmd_db_setup,
                    "create each service's database if missing and migrate it to head")
    setup.add_argument("--service", choices=list(SERVICE_DATABASES), help="only this service")
    setup.add_argument("--prefix", help="database name prefix (default: SPINE_DB_PREFIX or spine)")
    drop = command(db_commands, "drop", cmd_db_drop, "drop the four databases of a prefix")
    drop.add_argument("--prefix", required=True, help="e.g. spine_test_1a2b")
    drop.add_argument("--yes", action="store_true", help="really drop them")

    topology = commands.add_parser("topology", help="broker topology",
                                   description="Broker topology.")
    topology_commands = topology.add_subparsers(dest="topology_command", required=True,
                                                metavar="COMMAND")
    command(topology_commands, "declare", cmd_topology_declare,
            "declare the events (topic) and dead-letter (direct) exchanges")

    token = command(commands, "token", cmd_token, "print a development JWT (HS256)")
    token.add_argument("--role", action="append", required=True, type=role_name,
                       help="a role to grant; repeat for several")
    token.add_argument("--sub", help="subject (default: dev-<first role>)")
    token.add_argument("--ttl-hours", type=positive_float, default=8.0,
                       help="lifetime in hours (default 8)")

    dlq = commands.add_parser("dlq", help="list or replay dead letters",
                              description="List or replay dead letters.")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    dlq_list = command(dlq_commands, "list", cmd_dlq_list,
                       "show dead letters of every known queue (nothing is removed)")
    dlq_list.add_argument("--queue", help="one queue, e.g. order.order-submitted")
    dlq_list.add_argument("--limit", type=positive_int, default=20,
                          help="messages shown per queue (default 20)")
    replay = command(dlq_commands, "replay", cmd_dlq_replay,
                     "move dead letters back to the queue they died in")
    replay.add_argument("--queue", required=True, help="e.g. order.order-submitted")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--message-id", help="replay this one message")
    which.add_argument("--all", action="store_true", help="replay every message in the DLQ")
    replay.add_argument("--yes", action="store_true", help="do not ask before --all")

    submit = command(commands, "submit-order", cmd_submit_order,
                     "publish ext.<system>.order.submitted as an outside sales system")
    submit.add_argument("--system", required=True, type=system_name, help="e.g. mes")
    submit.add_argument("--customer", required=True, help="customer id, e.g. C-100")
    submit.add_argument("--line", action="append", required=True, type=order_line,
                        metavar="PRODUCT:QTY[:UOM]", help="an order line; repeat for several")
    submit.add_argument("--ref", help="external_ref (default: EXT-<6 hex>)")
    submit.add_argument("--ship-date", type=date.fromisoformat, metavar="YYYY-MM-DD",
                        help="requested ship date (default: in 14 days)")
    submit.add_argument("--rush", action="store_true", help="priority rush")
    submit.add_argument("--confirmed", action=argparse.BooleanOptionalAction, default=True,
                        help="already confirmed in the sales system (default: yes)")
    submit.add_argument("--times", type=positive_int, default=1,
                        help="publish the same event N times (idempotency demo)")
    submit.add_argument("--ship-to", type=ship_to, metavar="'Name;Street;City;Postcode;CC'",
                        help=f"default: {SAMPLE_SHIP_TO!r}")
    submit.add_argument("--unchecked", action="store_true",
                        help="send even if the contract rejects it (dead-letter demo)")

    raw = command(commands, "publish-raw", cmd_publish_raw,
                  "publish arbitrary bytes to the events exchange")
    raw.add_argument("--routing-key", required=True)
    raw.add_argument("--body", required=True, help="the message body, as text")
    raw.add_argument("--content-type", default="application/json",
                     help="default application/json (empty for none)")
    raw.add_argument("--message-id", help="default: a new UUID")

    watch = command(commands, "watch", cmd_watch, "print events as they pass, one line each")
    watch.add_argument("--pattern", action="append",
                       help="binding pattern, repeatable (default '#': everything)")
    watch.add_argument("--seconds", type=positive_float, help="stop after N seconds")
    dispatch = commands.add_parser(
        "dispatch", help="list, move and inspect dispatches through the dispatch API",
        description="List, move and inspect dispatches through the dispatch API "
                    "(SPINE_DISPATCH_URL, default http://127.0.0.1:8002), acting as a "
                    "development user of a role.")
    dispatch_commands = dispatch.add_subparsers(dest="dispatch_command", required=True,
                                                metavar="COMMAND")
    dispatch_list = command(dispatch_commands, "list", cmd_dispatch_list, "list dispatches")
    dispatch_list.add_argument("--order", help="only the dispatch of this order id")
    dispatch_list.add_argument("--status", help="only dispatches in this status")
    move = command(dispatch_commands, "move", cmd_dispatch_move,
                   "move a dispatch to a new status (reads its version, sends If-Match)")
    move.add_argument("dispatch_id")
    move.add_argument("status", help="released, picking, packed, shipped, on_hold, cancelled, ...")
    move.add_argument("--as", dest="as_role", required=True, type=role_name,
                      help="act as a user with this role, e.g. planner")
    move.add_argument("--sub", help="user id (default: dev-<role>)")
    move.add_argument("--reason", help="why (required for on_hold and cancelled)")
    move.add_argument("--line", action="append", type=packed_line, metavar="LINE_NO=QTY",
                      help="packed quantity of a line (for packed); repeat for every line")
    move.add_argument("--carrier", help="for shipped")
    move.add_argument("--tracking", help="tracking number, for shipped")
    move.add_argument("--hold-code", help="reason code, for on_hold")
    move.add_argument("--owner", help="who owns the follow-up, for on_hold")
    move.add_argument("--due", help="ISO 8601 due date-time, for on_hold")
    history = command(dispatch_commands, "history", cmd_dispatch_history,
                      "every change of a dispatch, from its audit log")
    history.add_argument("dispatch_id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m shared.cli`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, Settings.load()))
    except CliError as exc:
        if args.debug:
            raise
        print(f"spine: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `spine dlq list | head`: the reader left; say nothing more (and not at exit either).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
