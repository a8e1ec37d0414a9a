"""`./spine` against the real PostgreSQL and RabbitMQ: each test on a fresh prefix or namespace.

The commands run as a person runs them, through the `./spine` script in a process of their
own, with SPINE_* pointing at the test servers and at names no other test uses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from alembic.script import ScriptDirectory

from shared import registry
from shared.contracts.envelope import Envelope
from shared.contracts.ext import OrderSubmitted
from shared.db.migrate import alembic_config
from shared.db.roles import DatabaseRoles, drop_database_and_roles
from shared.messaging.topology import ERROR_HEADER, QUEUE_HEADER, ROUTING_KEY_HEADER, known_queues
from shared.stack import free_port
from tests.conftest import RabbitJanitor, Servers

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [str(ROOT / "samples/erp/customers.csv"), str(ROOT / "samples/erp/products.json")]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Spine:
    """Runs `./spine` with a namespace and database prefix of the test's own."""

    servers: Servers
    name: str

    async def __call__(self, *args: str, **env: str) -> Ran:
        environment = {"PATH": "/usr/bin:/bin", "SPINE_PG_URL": self.servers.pg_url,
                       "SPINE_AMQP_URL": self.servers.amqp_url, "SPINE_NAMESPACE": self.name,
                       "SPINE_DB_PREFIX": self.name, **env}
        done = await asyncio.to_thread(
            subprocess.run, [str(ROOT / "spine"), *args], env=environment, capture_output=True,
            text=True, timeout=120, cwd="/",
        )
        return Ran(done.returncode, done.stdout, done.stderr)


@pytest.fixture
async def spine(servers: Servers, namespace: str, rabbit_janitor: RabbitJanitor) -> AsyncIterator[Spine]:
    """`./spine` on this test's namespace; every queue it may declare is deleted afterwards."""
    for name in known_queues(namespace):
        rabbit_janitor.queue(name)
        rabbit_janitor.queue(f"{name}.dlq")
    yield Spine(servers, namespace)


@pytest.fixture
async def prefix_cleanup(servers: Servers, namespace: str) -> AsyncIterator[None]:
    """Drops this test's databases whatever the commands under test did."""
    yield
    for service in registry.SERVICES:
        await drop_database_and_roles(servers.pg_url, DatabaseRoles.of(service, namespace))


async def databases(servers: Servers, prefix: str) -> set[str]:
    conn = await asyncpg.connect(f"{servers.pg_url}/postgres")
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", f"{prefix}\\_%")
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


async def roles(servers: Servers, prefix: str) -> set[str]:
    conn = await asyncpg.connect(f"{servers.pg_url}/postgres")
    try:
        rows = await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname LIKE $1", f"{prefix}\\_%")
    finally:
        await conn.close()
    return {row["rolname"] for row in rows}


def one_error_line(ran: Ran) -> str:
    lines = ran.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spine: error: "), ran.err
    return lines[0]


# --------------------------------------------------------------------------- db


def head_of(service: str) -> str:
    """The newest revision of a service's migrations, as Alembic names it."""
    config = alembic_config(service, "postgresql+asyncpg://unused/none")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def test_db_setup_creates_and_migrates_four_databases_and_db_drop_removes_them(
    spine: Spine, servers: Servers, namespace: str, prefix_cleanup: None
) -> None:
    first = await spine("db", "setup")
    assert first.code == 0, first.err
    names = [s.database(namespace) for s in registry.SERVICES]
    assert [line.split()[1] for line in first.out.splitlines()] == names
    heads = {s.name: head_of(s.name) for s in registry.SERVICES}
    assert [line.split()[0] for line in first.out.splitlines()] == list(heads)
    for line, name in zip(first.out.splitlines(), names, strict=True):
        assert line.endswith(f"created; migrated (empty) -> {heads[line.split()[0]]}; "
                             f"runs as {name}_runtime"), line
    assert await databases(servers, namespace) == set(names)
    assert await roles(servers, namespace) == {f"{n}_{r}" for n in names for r in ("owner", "runtime")}

    again = await spine("db", "setup", "--service", "erp_adapter")
    assert again.code == 0, again.err
    assert again.out.split() == ["erp_adapter", f"{namespace}_erp", "exists;", "already", "at",
                                 "head", f"{heads['erp_adapter']};", "runs", "as",
                                 f"{namespace}_erp_runtime"]

    dropped = await spine("db", "drop", "--prefix", namespace, "--yes")
    assert dropped.code == 0, dropped.err
    assert [line.split() for line in dropped.out.splitlines()] == [[n, "dropped"] for n in names]
    assert await databases(servers, namespace) == set()
    assert await roles(servers, namespace) == set()
    gone = await spine("db", "drop", "--prefix", namespace, "--yes")
    assert gone.out.count("did not exist") == 4


async def test_db_setup_sets_one_services_runtime_password_as_a_scram_verifier_only(
    spine: Spine, servers: Servers, namespace: str, prefix_cleanup: None
) -> None:
    everyone = await spine("db", "setup", SPINE_DB_PASSWORD="not-for-all-four")
    assert everyone.code == 2
    assert "name the service with --service" in one_error_line(everyone)
    assert await databases(servers, namespace) == set()

    password = "a-generated-password-1"
    ran = await spine("db", "setup", "--service", "order", SPINE_DB_PASSWORD=password)
    assert ran.code == 0, ran.err
    assert password not in ran.out + ran.err
    conn = await asyncpg.connect(f"{servers.pg_url}/postgres")
    try:
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                                     f"{namespace}_order_runtime")
    finally:
        await conn.close()
    # The server was sent (and keeps) a verifier from which the password cannot be read back.
    assert stored.startswith("SCRAM-SHA-256$4096:") and password not in stored


async def test_db_setup_against_a_server_that_does_not_answer_is_one_line_and_exit_1(
    spine: Spine,
) -> None:
    ran = await spine("db", "setup", SPINE_PG_URL=f"postgresql://postgres@127.0.0.1:{free_port()}")
    assert ran.code == 1
    assert "does not answer" in one_error_line(ran)


# --------------------------------------------------------------------------- topology & dlq


async def test_topology_declare_makes_every_known_queue_and_its_dead_letter_queue(
    spine: Spine, servers: Servers, namespace: str
) -> None:
    ran = await spine("topology", "declare")
    assert ran.code == 0, ran.err
    assert ran.out.startswith(
        f"declared {namespace}.events (topic, alternate exchange {namespace}.unrouted), "
        f"{namespace}.dlx (direct), {namespace}.unrouted (fanout) and "
        f"{2 * len(known_queues(namespace)) + 1} queues")  # each with its DLQ, and the unrouted one
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        for name in [*known_queues(namespace), f"{namespace}.unrouted"]:
            for queue in (name, f"{name}.dlq") if name != f"{namespace}.unrouted" else (name,):
                channel = await connection.channel()
                await channel.declare_queue(queue, passive=True)  # raises if it is missing
                await channel.close()
    finally:
        await connection.close()


async def test_dlq_list_on_a_fresh_namespace_counts_no_dead_letter_in_any_known_queue(
    spine: Spine, namespace: str
) -> None:
    assert (await spine("topology", "declare")).code == 0
    ran = await spine("dlq", "list")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[-2:] == ["0 dead letter(s) in 10 known dead-letter queue(s)",
                          f"{namespace}.unrouted: 0 event(s) no queue was bound for"]
    assert all(line.endswith(": 0 dead letter(s)") for line in lines[:-2]) and len(lines) == 12


async def test_dlq_list_of_a_queue_that_does_not_exist_says_so_and_exits_1(spine: Spine) -> None:
    ran = await spine("dlq", "list", "--queue", "order.order-submitted")
    assert ran.code == 1
    assert "does not exist" in one_error_line(ran)


async def test_dlq_replay_puts_a_dead_letter_back_into_the_queue_it_died_in(
    spine: Spine, servers: Servers, namespace: str
) -> None:
    assert (await spine("topology", "declare")).code == 0
    queue = f"{namespace}.order.order-submitted"
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(b"{broken", message_id="m-42", headers={
                ERROR_HEADER: "JSONDecodeError: body is not JSON", QUEUE_HEADER: queue,
                ROUTING_KEY_HEADER: "ext.mes.order.submitted"}),
            routing_key=f"{queue}.dlq",
        )
        listed = await spine("dlq", "list", "--queue", "order.order-submitted")
        assert listed.code == 0, listed.err
        assert "m-42  ext.mes.order.submitted" in listed.out
        assert "reason: JSONDecodeError: body is not JSON" in listed.out

        ran = await spine("dlq", "replay", "--queue", "order.order-submitted", "--all", "--yes")
        assert ran.code == 0, ran.err
        assert ran.out.splitlines() == [f"replayed m-42 -> {queue}", f"replayed 1 of 1 from {queue}.dlq"]

        back = await (await channel.declare_queue(queue, passive=True)).get(no_ack=True)
        assert (back.body, back.message_id) == (b"{broken", "m-42")
        assert ERROR_HEADER not in back.headers
        assert back.headers[ROUTING_KEY_HEADER] == "ext.mes.order.submitted"
        dlq = await channel.declare_queue(f"{queue}.dlq", passive=True)
        assert dlq.declaration_result.message_count == 0
    finally:
        await connection.close()


# --------------------------------------------------------------------------- publishing


async def test_submit_order_publishes_the_same_valid_envelope_as_often_as_asked(
    spine: Spine, servers: Servers, namespace: str
) -> None:
    assert (await spine("topology", "declare")).code == 0
    ran = await spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", "P-200:4",
                      "--line", "P-203:1.5:KG", "--ref", "EXT-T1", "--times", "2")
    assert ran.code == 0, ran.err
    assert ran.out.splitlines()[0] == "published ext.mes.order.submitted x2 (the same event each time)"
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{namespace}.order.order-submitted", passive=True)
        messages = [await queue.get(no_ack=True) for _ in range(2)]
        assert await queue.get(no_ack=True, fail=False) is None
    finally:
        await connection.close()
    assert messages[0].message_id == messages[1].message_id
    envelope = Envelope[OrderSubmitted].model_validate(json.loads(messages[0].body))
    assert (envelope.type, envelope.producer, envelope.data.external_ref) == (
        "ext.mes.order.submitted", "mes", "EXT-T1")
    assert [(line.product_id, str(line.quantity), line.uom) for line in envelope.data.lines] == [
        ("P-200", "4", "EA"), ("P-203", "1.5", "KG")]
    assert messages[0].headers["traceparent"]


async def test_publishing_before_the_topology_is_declared_says_what_to_run(
    spine: Spine, namespace: str
) -> None:
    ran = await spine("publish-raw", "--routing-key", "ext.mes.order.submitted", "--body", "x")
    assert ran.code == 1
    assert f"exchange {namespace}.events does not exist" in one_error_line(ran)


async def test_publishing_what_no_queue_is_bound_for_keeps_it_in_the_unrouted_queue(
    spine: Spine, servers: Servers, namespace: str
) -> None:
    assert (await spine("topology", "declare")).code == 0
    ran = await spine("publish-raw", "--routing-key", "nobody.listens", "--body", "x",
                      "--message-id", "m-lonely")
    assert ran.code == 0, ran.err
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        kept = await (await connection.channel()).declare_queue(f"{namespace}.unrouted",
                                                                passive=True)
        message = await kept.get(no_ack=True, timeout=5)
    finally:
        await connection.close()
    assert (message.message_id, message.routing_key, message.body) == (
        "m-lonely", "nobody.listens", b"x")


async def test_publishing_where_even_the_unrouted_queue_is_missing_is_refused(
    spine: Spine, servers: Servers, namespace: str
) -> None:
    assert (await spine("topology", "declare")).code == 0
    connection = await aio_pika.connect(servers.amqp_url)
    try:
        await (await connection.channel()).queue_delete(f"{namespace}.unrouted")
    finally:
        await connection.close()
    ran = await spine("publish-raw", "--routing-key", "nobody.listens", "--body", "x")
    assert ran.code == 1
    assert f"no queue took nobody.listens, not even {namespace}.unrouted" in one_error_line(ran)


async def test_a_broker_that_does_not_answer_is_one_line_and_exit_1(spine: Spine) -> None:
    ran = await spine("topology", "declare", SPINE_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert ran.code == 1
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:" in one_error_line(ran)


async def test_a_dispatch_service_that_does_not_answer_is_one_line_and_exit_1(spine: Spine) -> None:
    ran = await spine("dispatch", "list", SPINE_JWT_SECRET=uuid.uuid4().hex,
                      SPINE_DISPATCH_URL=f"http://127.0.0.1:{free_port()}")
    assert ran.code == 1
    assert "the dispatch service did not answer" in one_error_line(ran)


# --------------------------------------------------------------------------- erp import


async def test_erp_import_of_the_samples_fills_a_fresh_erp_database_and_waits_for_the_service(
    spine: Spine, servers: Servers, namespace: str, prefix_cleanup: None
) -> None:
    missing = await spine("erp", "import", *SAMPLES)
    assert missing.code == 3
    assert f"database {namespace}_erp does not exist" in one_error_line(missing)

    assert (await spine("db", "setup", "--service", "erp_adapter")).code == 0
    ran = await spine("erp", "import", *SAMPLES)
    assert ran.code == 0, ran.err
    assert ran.out.splitlines() == [
        "customers.csv: 5 rows — 5 new, 0 updated, 0 unchanged, 0 rejected",
        "products.json: 6 rows — 6 new, 0 updated, 0 unchanged, 0 rejected",
        "11 event(s) wait in the outbox; the erp_adapter service publishes them when it runs",
    ]
    conn = await asyncpg.connect(f"{servers.pg_url}/{namespace}_erp")
    try:
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 11
        producers = await conn.fetch("SELECT DISTINCT body::jsonb->>'producer' AS p FROM outbox")
    finally:
        await conn.close()
    assert [row["p"] for row in producers] == ["erp_adapter"]
    again = await spine("erp", "import", SAMPLES[0], "--dry-run")
    assert again.code == 0
    assert "0 new, 0 updated, 5 unchanged" in again.out


# --------------------------------------------------------------------------- notification people


async def test_notification_people_import_loads_the_directory_and_reports_bad_rows(
    spine: Spine, servers: Servers, namespace: str, prefix_cleanup: None, tmp_path: Path,
) -> None:
    missing = await spine("notification", "people", "import", str(ROOT / "samples/people.csv"))
    assert missing.code == 3, missing.err
    assert (await spine("db", "setup", "--service", "notification")).code == 0
    ran = await spine("notification", "people", "import", str(ROOT / "samples/people.csv"))
    assert (ran.code, ran.out.strip()) == (
        0, "people.csv: 6 rows — 6 new, 0 updated, 0 unchanged, 0 rejected"), ran.err
    bad = tmp_path / "more.csv"
    bad.write_text("id,name,roles,email\nu-nora,Nora Lind,warehouse,nora@new.example\n"
                   "u-x,X,boss,\n")
    again = await spine("notification", "people", "import", str(bad))
    assert again.code == 1
    assert again.out.splitlines() == [
        "more.csv: 2 rows — 0 new, 1 updated, 0 unchanged, 1 rejected",
        "  row 3: unknown role(s) ['boss']; roles are "
        "['sales', 'planner', 'warehouse', 'shipping', 'supervisor', 'integration', 'ops']"]
    conn = await asyncpg.connect(f"{servers.pg_url}/{namespace}_notification")
    try:
        assert await conn.fetchval("SELECT email FROM person WHERE id = 'u-nora'") == \
            "nora@new.example"
    finally:
        await conn.close()
