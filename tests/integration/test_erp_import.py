"""erp_adapter against a real PostgreSQL and RabbitMQ: imports, their events, roles, the command.

Each test gets its own database (`<unique>_erp`) and namespace (`<unique>.events`), observes
what the service publishes through a queue of its own bound with `erp.#`, and removes all of
it at the end.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from services.erp_adapter.config import Settings
from services.erp_adapter.main import build
from shared.auth import JwtVerifier
from shared.db.migrate import downgrade, upgrade
from shared.db.roles import owner_url
from shared.messaging.topology import Topology, consumer_queues
from spine_cli import erp as erp_command
from spine_cli import settings as cli_settings
from spine_cli.main import main as spine
from tests.conftest import Servers, service_database

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "erp"


@dataclass
class Erp:
    """One isolated erp_adapter: settings, a raw database connection and an event observer."""

    settings: Settings
    db: asyncpg.Connection
    observed: aio_pika.abc.AbstractQueue
    tmp_path: Path

    def token(self, *roles: str) -> dict[str, str]:
        secret = self.settings.jwt_secret.get_secret_value()
        return {"Authorization": f"Bearer {JwtVerifier(secret).issue('u-test', list(roles))}"}

    async def count(self, table: str, where: str = "TRUE") -> int:
        return int(await self.db.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))

    async def events(
        self, expected: int, timeout: float = 15.0
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Exactly the next `expected` published events (fails on fewer within `timeout`)."""
        received: list[aio_pika.abc.AbstractIncomingMessage] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(received) < expected:
            message = await self.observed.get(no_ack=True, fail=False)
            if message is None:
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"received {len(received)} of {expected} events")
                await asyncio.sleep(0.05)
                continue
            received.append(message)
        return received

    async def assert_no_more_events(self, wait: float = 1.5) -> None:
        """The outbox is drained, and nothing more arrives at the observer for `wait` s."""
        # The relay marks rows sent only after the broker confirmed them, so a message can
        # arrive a moment before its row says so.
        deadline = asyncio.get_running_loop().time() + 10
        while await self.count("outbox", "sent_at IS NULL"):
            assert asyncio.get_running_loop().time() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.05)
        await asyncio.sleep(wait)
        extra = await self.observed.get(no_ack=True, fail=False)
        assert extra is None, f"unexpected event {extra.routing_key if extra else ''}"

    @asynccontextmanager
    async def service(self) -> AsyncIterator[httpx.AsyncClient]:
        """The erp_adapter app running (relay included), with an HTTP client on it."""
        runtime, app = build(self.settings)
        async with runtime.lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://erp") as client:
                yield client


@pytest.fixture
async def erp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servers: Servers
) -> AsyncIterator[Erp]:
    async with isolated_erp(monkeypatch, tmp_path, servers) as found:
        yield found


@asynccontextmanager
async def isolated_erp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, servers: Servers
) -> AsyncIterator[Erp]:
    """An erp_adapter of its own: database, namespace and observer (other modules use it too)."""
    unique = f"erptest_{uuid.uuid4().hex[:8]}"
    for key, value in {
        "SPINE_PG_URL": servers.pg_url,
        "SPINE_AMQP_URL": servers.amqp_url,
        "SPINE_DB_PREFIX": unique,
        "SPINE_NAMESPACE": unique,
        "SPINE_JWT_SECRET": secrets.token_hex(32),
    }.items():
        monkeypatch.setenv(key, value)
    async with service_database(servers.pg_url, "erp_adapter", unique) as password:
        monkeypatch.setenv("SPINE_DB_PASSWORD", password)
        settings = Settings()  # type: ignore[call-arg]
        connection = await aio_pika.connect(settings.amqp_url)
        try:
            db = await asyncpg.connect(f"{settings.pg_url}/{settings.database_name}")
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                f"{unique}.events", aio_pika.ExchangeType.TOPIC, durable=True,
                arguments=Topology(unique).events_arguments,  # as the service's relay declares it
            )
            observed = await channel.declare_queue(f"{unique}.test.erp-observer", exclusive=True)
            await observed.bind(exchange, "erp.#")
            try:
                yield Erp(settings, db, observed, tmp_path)
            finally:
                await db.close()
                await observed.delete(if_unused=False, if_empty=False)
                # The service declared its consumer queues and their dead-letter queues.
                topology = Topology(unique)
                for queue in consumer_queues(topology, "erp_adapter"):
                    for name in (queue.name, topology.dead_letter_queue(queue.name).name):
                        await channel.queue_delete(name)
                for name in (f"{unique}.events", f"{unique}.dlx"):
                    await channel.exchange_delete(name)
        finally:
            await connection.close()


def upload(name: str, content: bytes, **form: str) -> dict[str, Any]:
    return {"files": {"file": (name, content)}, "data": form}


def body(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    return json.loads(message.body)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------


async def test_importing_the_same_export_twice_publishes_upserts_only_the_first_time(
    erp: Erp,
) -> None:
    customers = (SAMPLES / "customers.csv").read_bytes()
    async with erp.service() as client:
        first = await client.post("/imports", headers=erp.token("integration"),
                                  **upload("customers.csv", customers))
        assert first.status_code == 200, first.text
        report = first.json()
        assert report["summary"] == (
            "customers.csv: 5 rows — 5 new, 0 updated, 0 unchanged, 0 rejected"
        )

        messages = await erp.events(5)
        envelopes = [body(m) for m in messages]
        assert {e["data"]["customer_id"] for e in envelopes} == {f"C-10{i}" for i in range(5)}
        for message, envelope in zip(messages, envelopes, strict=True):
            assert message.routing_key == envelope["type"] == "erp.customer.upserted"
            assert envelope["producer"] == "erp_adapter"
            assert envelope["data"]["version"] == 1
            # The run id is the correlation id of everything the import caused.
            assert envelope["correlation_id"] == report["id"] == message.correlation_id
            assert message.message_id == envelope["event_id"]
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.content_type == "application/json"
        inactive = [e["data"] for e in envelopes if not e["data"]["active"]]
        assert [c["customer_id"] for c in inactive] == ["C-104"]

        second = await client.post("/imports", headers=erp.token("integration"),
                                   **upload("customers.csv", customers))
        assert second.status_code == 200, second.text
        assert (second.json()["created"], second.json()["unchanged"]) == (0, 5)
        await erp.assert_no_more_events()
        assert await erp.count("outbox") == 5

        runs = (await client.get("/imports", headers=erp.token("ops"))).json()
        assert [(r["created"], r["unchanged"]) for r in runs] == [(0, 5), (5, 0)]
        assert all(r["finished_at"] for r in runs)


async def test_changing_one_row_publishes_exactly_one_upsert_with_version_2(erp: Erp) -> None:
    products = json.loads((SAMPLES / "products.json").read_text())
    async with erp.service() as client:
        headers = erp.token("integration")
        first = await client.post("/imports", headers=headers,
                                  **upload("products.json", json.dumps(products).encode()))
        assert first.json()["created"] == 6
        await erp.events(6)

        products["products"][2]["name"] = "Stainless steel wire 2.5 mm"
        second = await client.post("/imports", headers=headers,
                                   **upload("products.json", json.dumps(products).encode()))
        assert second.status_code == 200, second.text
        assert second.json()["summary"] == (
            "products.json: 6 rows — 0 new, 1 updated, 5 unchanged, 0 rejected"
        )
        [message] = await erp.events(1)
        assert message.routing_key == "erp.product.upserted"
        assert body(message)["data"] == {
            "product_id": "P-202", "name": "Stainless steel wire 2.5 mm", "uom": "M",
            "active": True, "version": 2,
        }
        await erp.assert_no_more_events()

        stored = await erp.db.fetchrow("SELECT name, version FROM erp_product WHERE id = 'P-202'")
        assert dict(stored) == {"name": "Stainless steel wire 2.5 mm", "version": 2}
        log = (await client.get("/integration-log", headers=erp.token("ops"),
                                params={"kind": "product", "outcome": "updated"})).json()
        assert [(e["record_key"], e["detail"]) for e in log] == [
            ("P-202",
             "version 2: name: 'Stainless steel wire 2 mm' → 'Stainless steel wire 2.5 mm'")
        ]
        audit = await erp.db.fetchrow(
            "SELECT actor_id, actor_role, details FROM audit_log "
            "WHERE action = 'erp.product.updated' AND entity_id = 'P-202'"
        )
        assert (audit["actor_id"], audit["actor_role"]) == ("u-test", "integration")
        assert json.loads(audit["details"])["changes"] == {
            "name": ["Stainless steel wire 2 mm", "Stainless steel wire 2.5 mm"]
        }


async def test_a_file_with_bad_rows_imports_the_good_ones_and_reports_the_bad_ones(
    erp: Erp,
) -> None:
    csv = (
        b"customer_id,name,active\n"
        b"C-1,Acme,true\n"
        b",Nameless,true\n"
        b"C-3,Carbon Ltd,maybe\n"
        b"C-1,Acme again,true\n"
        b"C-5,Delta AG,no\n"
    )
    async with erp.service() as client:
        response = await client.post("/imports", headers=erp.token("integration"),
                                     **upload("mixed.csv", csv))
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["summary"] == "mixed.csv: 5 rows — 2 new, 0 updated, 0 unchanged, 3 rejected"
        assert [e["message"] for e in report["errors"]] == [
            "row 3: customer_id is empty",
            "row 4: active 'maybe' is not true/false",
            "row 5: customer_id 'C-1' already appears in row 2",
        ]
        published = sorted(body(m)["data"]["customer_id"] for m in await erp.events(2))
        assert published == ["C-1", "C-5"]
        await erp.assert_no_more_events()

        stored = await client.get(f"/imports/{report['id']}", headers=erp.token("integration"))
        assert stored.json()["rejected"] == 3
        assert [e["row"] for e in stored.json()["errors"]] == [3, 4, 5]
        rejected = (await client.get("/integration-log", headers=erp.token("ops"),
                                     params={"outcome": "rejected"})).json()
        assert sorted(e["detail"] for e in rejected) == [e["message"] for e in report["errors"]]
        assert {e["correlation_id"] for e in rejected} == {report["id"]}


async def test_only_the_integration_role_may_upload_and_a_refused_upload_writes_nothing(
    erp: Erp,
) -> None:
    customers = (SAMPLES / "customers.csv").read_bytes()
    async with erp.service() as client:
        for headers, status in (({}, 401), (erp.token("sales"), 403), (erp.token("ops"), 403)):
            response = await client.post("/imports", headers=headers,
                                         **upload("customers.csv", customers))
            assert response.status_code == status, response.text
        assert (await client.get("/imports", headers=erp.token("sales"))).status_code == 403
        assert (await client.get("/integration-log", headers=erp.token("sales"))).status_code == 403
        for table in ("import_run", "erp_customer", "integration_log", "outbox", "audit_log"):
            assert await erp.count(table) == 0, table
        await erp.assert_no_more_events(wait=0.5)


async def test_a_file_that_cannot_be_imported_is_refused_with_its_reason_and_logged(
    erp: Erp,
) -> None:
    async with erp.service() as client:
        headers = erp.token("integration")
        cases = [
            (upload("empty.csv", b""), 422, "empty.csv is empty"),
            (upload("book.xlsx", b"PK\x03\x04\x14\x00\x06\x00"), 415, "Excel"),
            (upload("c.csv", b"customer_id,name\nC-1,x\n", kind="products"), 422,
             "not products; it looks like customers"),
        ]
        for request, status, reason in cases:
            response = await client.post("/imports", headers=headers, **request)
            assert response.status_code == status, response.text
            assert reason in response.json()["detail"]
        assert await erp.count("import_run") == 0
        outcomes = await erp.db.fetch("SELECT outcome FROM integration_log ORDER BY id")
        assert [r["outcome"] for r in outcomes] == ["unreadable", "unsupported", "unreadable"]


async def test_a_dry_run_counts_against_the_stored_data_and_writes_nothing(erp: Erp) -> None:
    customers = (SAMPLES / "customers.csv").read_bytes()
    async with erp.service() as client:
        headers = erp.token("integration")
        await client.post("/imports", headers=headers, **upload("customers.csv", customers))
        await erp.events(5)
        changed = customers.replace(b"Alpine Tooling AG", b"Alpine Tooling SA")
        dry = await client.post("/imports", headers=headers,
                                **upload("customers.csv", changed, dry_run="true"))
        assert dry.json()["id"] is None
        assert dry.json()["summary"] == (
            "customers.csv: 5 rows — 0 new, 1 updated, 4 unchanged, 0 rejected "
            "(dry run: nothing written)"
        )
        await erp.assert_no_more_events(wait=0.5)
        assert await erp.count("import_run") == 1
        assert await erp.count("erp_customer", "version = 2") == 0


async def test_the_command_imports_before_the_service_runs_and_the_service_publishes_later(
    erp: Erp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The command needs no JWT secret: it only writes to the database.
    monkeypatch.delenv("SPINE_JWT_SECRET")
    monkeypatch.setattr(cli_settings, "ENV_FILE", erp.tmp_path / "no.env")
    samples = [str(SAMPLES / "customers.csv"), str(SAMPLES / "products.json")]
    assert await asyncio.to_thread(spine, ["erp", "import", *samples]) == erp_command.EXIT_OK
    out = capsys.readouterr().out
    assert "customers.csv: 5 rows — 5 new, 0 updated, 0 unchanged, 0 rejected" in out
    assert "products.json: 6 rows — 6 new, 0 updated, 0 unchanged, 0 rejected" in out
    assert "11 event(s) wait in the outbox" in out
    assert await erp.observed.get(no_ack=True, fail=False) is None

    bad = erp.tmp_path / "more-products.csv"
    bad.write_text("product_id,name,uom\nP-900,Spring,EA\nP-901,,EA\n")
    code = await asyncio.to_thread(spine, ["erp", "import", str(bad), "--kind", "products"])
    assert code == erp_command.EXIT_REJECTED_ROWS
    out = capsys.readouterr().out
    assert "more-products.csv: 2 rows — 1 new, 0 updated, 0 unchanged, 1 rejected" in out
    assert "  row 3: name is empty" in out

    code = await asyncio.to_thread(spine, ["erp", "import", str(erp.tmp_path / "missing.csv")])
    assert code == erp_command.EXIT_UNUSABLE_INPUT
    assert "missing.csv: cannot read" in capsys.readouterr().err

    async with erp.service():
        types = [m.routing_key for m in await erp.events(12)]
        assert (types.count("erp.customer.upserted"), types.count("erp.product.upserted")) == (5, 7)
        await erp.assert_no_more_events()


async def test_a_deeply_nested_export_is_refused_with_its_reason_by_the_api_and_the_command(
    erp: Erp, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    async with erp.service() as client:
        response = await client.post("/imports", headers=erp.token("integration"),
                                     **upload("deep.json", deep))
    assert response.status_code == 422, response.text
    assert "nested more than 32 levels deep" in response.json()["detail"]

    monkeypatch.delenv("SPINE_JWT_SECRET")
    monkeypatch.setattr(cli_settings, "ENV_FILE", erp.tmp_path / "no.env")
    path = erp.tmp_path / "deep.json"
    path.write_bytes(deep)
    code = await asyncio.to_thread(spine, ["erp", "import", str(path)])
    assert code == erp_command.EXIT_UNUSABLE_INPUT
    assert "deep.json: not imported: deep.json is nested more than 32" in capsys.readouterr().err
    assert await erp.count("erp_customer") == 0


async def migrate(erp: Erp, step: Callable[..., None]) -> None:
    """`upgrade` or `downgrade` all the way, as the owner role (the runtime role may not)."""
    roles = erp.settings.database_roles
    await asyncio.to_thread(step, "erp_adapter", owner_url(erp.settings.pg_url, roles),
                            role=roles.owner)


async def test_the_command_refuses_a_database_that_is_not_migrated(
    erp: Erp, capsys: pytest.CaptureFixture[str]
) -> None:
    await migrate(erp, downgrade)
    code = await asyncio.to_thread(spine, ["erp", "import", str(SAMPLES / "customers.csv")])
    assert code == erp_command.EXIT_NO_DATABASE
    assert "is not migrated" in capsys.readouterr().err


async def test_the_migration_downgrades_to_nothing_and_upgrades_again(erp: Erp) -> None:
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> $1"
    assert await erp.db.fetchval(tables, "alembic_version") == 11
    await migrate(erp, downgrade)
    assert await erp.db.fetchval(tables, "alembic_version") == 0
    await migrate(erp, upgrade)
    assert await erp.db.fetchval(tables, "alembic_version") == 11
