"""Each service's runtime role can do what the service needs, and nothing else (shared/db/roles.py).

Two services' databases are set up as `spine db setup` does it, under a prefix of this module's
own; then the test logs in as the roles themselves, against the real PostgreSQL.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from services.order.config import Settings as OrderSettings
from shared import registry
from shared.db.roles import DatabaseRoles, setup_database
from tests.conftest import Servers, service_database

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    servers: Servers
    prefix: str
    passwords: dict[str, str]

    def roles(self, service: str) -> DatabaseRoles:
        return DatabaseRoles.of(registry.get(service), self.prefix)

    async def connect(self, service: str, *, as_: str | None = None) -> asyncpg.Connection:
        """Log in to `service`'s database as the runtime role of `as_` (default: its own)."""
        me = self.roles(as_ or service)
        url = make_url(self.servers.pg_url)
        return await asyncpg.connect(
            host=url.host, port=url.port, database=self.roles(service).database,
            user=me.runtime, password=self.passwords[as_ or service])

    async def admin(self, service: str) -> asyncpg.Connection:
        return await asyncpg.connect(f"{self.servers.pg_url}/{self.roles(service).database}")


@pytest.fixture(scope="module")
async def setup(servers: Servers) -> AsyncIterator[Setup]:
    prefix = f"rolestest_{uuid.uuid4().hex[:8]}"
    passwords: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for service in ("order", "dispatch"):
            passwords[service] = await stack.enter_async_context(
                service_database(servers.pg_url, service, prefix))
        yield Setup(servers, prefix, passwords)


@pytest.fixture
async def order(setup: Setup) -> AsyncIterator[asyncpg.Connection]:
    """The order service's database, logged in as its runtime role."""
    conn = await setup.connect("order")
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def stranger(setup: Setup, servers: Servers) -> AsyncIterator[str]:
    """A role that may log in and was granted nothing: what PUBLIC may do, it may."""
    name = f"{setup.prefix}_stranger"
    admin = await asyncpg.connect(f"{servers.pg_url}/postgres")
    try:
        await admin.execute(f'CREATE ROLE "{name}" LOGIN')
        yield name
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


AUDIT_ROW = """
INSERT INTO audit_log (actor_id, actor_role, action, entity_type, entity_id)
VALUES ('u-1', 'sales', 'test', 'order', 'o-1') RETURNING id
"""


@pytest.mark.parametrize("service", ["order", "dispatch"])
async def test_public_has_no_connect_on_a_service_database(
    setup: Setup, servers: Servers, service: str, stranger: str
) -> None:
    admin = await setup.admin(service)
    try:
        assert await admin.fetchval("SELECT has_database_privilege('public', $1, 'CONNECT')",
                                    setup.roles(service).database) is False
    finally:
        await admin.close()
    url = make_url(servers.pg_url)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await asyncpg.connect(host=url.host, port=url.port, user=stranger,
                              database=setup.roles(service).database)


async def test_a_runtime_role_cannot_connect_to_another_services_database(setup: Setup) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await setup.connect("dispatch", as_="order")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
        await setup.connect("order", as_="dispatch")


async def test_the_runtime_role_appends_to_the_audit_log_and_may_not_change_or_remove_it(
    order: asyncpg.Connection,
) -> None:
    row = await order.fetchval(AUDIT_ROW)
    assert await order.fetchval("SELECT action FROM audit_log WHERE id = $1", row) == "test"
    # Refused by the rights, before the append-only trigger is even reached.
    for statement in (
        "UPDATE audit_log SET action = 'forged' WHERE id = $1",
        "DELETE FROM audit_log WHERE id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await order.execute(statement, row)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        await order.execute("TRUNCATE audit_log")
    assert await order.fetchval("SELECT action FROM audit_log WHERE id = $1", row) == "test"


@pytest.mark.parametrize("statement", [
    "CREATE TABLE sneaky (id int)",
    "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SCHEMA sneaky",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
    "ALTER TABLE customer_order ADD COLUMN sneaky int",
    "DROP TABLE inbox",
    "DROP TRIGGER audit_log_append_only ON audit_log",
    "CREATE TEMPORARY TABLE sneaky (id int)",
    "CREATE INDEX sneaky ON audit_log (action)",
    "ALTER TABLE audit_log RENAME TO history",
    "UPDATE alembic_version SET version_num = '0001'",
])
async def test_the_runtime_role_cannot_alter_its_schema(
    order: asyncpg.Connection, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await order.execute(statement)


async def test_the_runtime_role_cannot_become_the_owner(setup: Setup, order: asyncpg.Connection) -> None:
    roles = setup.roles("order")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await order.execute(f'SET ROLE "{roles.owner}"')
    admin = await setup.admin("order")
    try:
        owners = await admin.fetch(
            "SELECT DISTINCT pg_get_userbyid(relowner) AS owner FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'")
        schema_owner = await admin.fetchval(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'")
        database_owner = await admin.fetchval(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", roles.database)
        login = await admin.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                                     roles.owner)
    finally:
        await admin.close()
    assert [r["owner"] for r in owners] == [roles.owner]
    assert schema_owner == database_owner == roles.owner
    assert login is False, "nobody logs in as the owner: migrations SET ROLE to it"


async def test_the_runtime_role_reads_and_writes_what_the_order_service_needs(
    order: asyncpg.Connection,
) -> None:
    async with order.transaction():
        await order.execute(
            "INSERT INTO inbox (consumer, message_id) VALUES ('test', $1)", str(uuid.uuid4()))
        outbox = await order.fetchval(
            "INSERT INTO outbox (event_id, routing_key, correlation_id, body) "
            "VALUES ($1, 'order.test', $1, '{}') RETURNING id", uuid.uuid4())
        await order.execute("UPDATE outbox SET sent_at = now() WHERE id = $1", outbox)
        await order.fetchval(AUDIT_ROW)
        await order.execute(
            "INSERT INTO customer (id, name, active, version) "
            "VALUES ('C-1', 'one', true, 1)")
        await order.execute("UPDATE customer SET name = 'uno' WHERE id = 'C-1'")
        assert await order.fetchval("SELECT count(*) FROM customer_order") == 0
        # `SELECT … FOR UPDATE` (the repositories lock what they change) needs UPDATE.
        await order.fetch("SELECT * FROM customer WHERE id = 'C-1' FOR UPDATE")
        assert await order.fetchval("SELECT version_num FROM alembic_version")


async def test_the_service_settings_log_in_as_the_runtime_role(setup: Setup) -> None:
    settings = OrderSettings(_env_file=None, pg_url=setup.servers.pg_url,
                             db_prefix=setup.prefix, jwt_secret="x" * 40,
                             db_password=setup.passwords["order"])
    url = make_url(settings.database_url)
    # The administrator's login in SPINE_PG_URL is never what a service uses.
    assert url.username == setup.roles("order").runtime
    assert url.password == setup.passwords["order"]
    conn = await asyncpg.connect(settings.database_url.replace("+asyncpg", ""))
    try:
        assert await conn.fetchval("SELECT current_user") == setup.roles("order").runtime
    finally:
        await conn.close()


async def test_setup_again_takes_back_a_right_granted_by_hand(setup: Setup) -> None:
    roles = setup.roles("order")
    admin = await setup.admin("order")
    try:
        await admin.execute(f'GRANT UPDATE, DELETE ON audit_log TO "{roles.runtime}"')
        await setup_database(setup.servers.pg_url, registry.ORDER, setup.prefix,
                             setup.passwords["order"])
        rights = await admin.fetchval(
            "SELECT string_agg(privilege_type, ',' ORDER BY privilege_type) "
            "FROM information_schema.role_table_grants "
            "WHERE table_name = 'audit_log' AND grantee = $1", roles.runtime)
    finally:
        await admin.close()
    assert rights == "INSERT,SELECT"
